"""An environment's TensorBoard through the gateway's URL: a real ``remotegpu serve`` and worker, the real
supervisor starting the real TensorBoard in the session's job on the cluster, opened as its owner (bearer token,
then the cookie ``?token=`` sets), refused to others."""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.environments.tensorboard import COOKIE, CookieClaims, cookie_key, make_cookie
from tests.integration.slurm.conftest import WS, Gateway, PosixUserFactory
from tests.integration.slurm.test_environments import Team, gateway_key
from tests.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def team(gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str, tmp_path: Path) -> Iterator[Team]:
    team = Team(gateway, posix_user, slurm_account, tmp_path)
    yield team
    for role in team.names:
        for env in team.env(role).json()["items"]:
            team.env(role, f"/{env['id']}", method="DELETE")
    team.http.close()


def write_scalars(logdir: Path, owner: str) -> None:
    """A run with a few ``loss`` scalars, as a training job would leave it (TensorBoard's own event writer)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2  # type: ignore[import-untyped]
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # type: ignore[import-untyped]

    writer = EventFileWriter(str(logdir))
    for step in range(5):
        value = summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1))
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])))
    writer.close()
    account = pwd.getpwnam(owner)
    for path in (logdir, *logdir.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    return body


def tensorboard_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, command line) of every TensorBoard server here (the local cluster's nodes run on this machine)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            uid = proc.stat().st_uid
        except OSError:  # ended while we looked
            continue
        line = b" ".join(argv).decode(errors="replace")
        if "tensorboard" in line and "--logdir" in line:
            found.append((int(proc.name), uid, line))
    return found


def tensorboard_pids(owner: str) -> list[int]:
    """The owner's TensorBoard processes."""
    uid = pwd.getpwnam(owner).pw_uid
    return [pid for pid, owner_uid, _ in tensorboard_processes() if owner_uid == uid]


def test_tensorboard_answers_its_owner_and_refuses_others(team: Team, gateway: Gateway) -> None:
    owner = team.names["owner"]
    with gateway.worker():
        r = team.env(
            "owner",
            method="POST",
            name="tb",
            cpus=1,
            mem_mib=1024,
            time_minutes=30,
            services=["ssh", "tensorboard"],
        )
        assert r.status_code == 201, r.text
        env_id = r.json()["id"]
        prefix = f"{WS}/lab/environments/{env_id}/tensorboard"
        view = eventually(lambda: (v := team.env("owner", f"/{env_id}").json())["tensorboard_url"] and v, 120)
        assert view["state"] == "running" and view["tensorboard_url"].endswith(prefix + "/"), view
        output = Path(pwd.getpwnam(owner).pw_dir, ".remotegpu", "environments", env_id, "output")
        write_scalars(output / "run1", owner)
        bearer = team.headers["owner"]

        # the owner, with the bearer token: TensorBoard's page, everything of it from the gateway
        page = team.http.get(prefix + "/", headers=bearer)
        assert page.status_code == 200, page.text[:500]
        assert page.headers["content-type"].startswith("text/html") and "<title>TensorBoard</title>" in page.text
        sources = re.findall(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["']([^"']+)""", page.text)
        assert sources, page.text[:500]
        outside = [s for s in sources if re.match(r"(?i)(https?:)?//", s)]
        assert outside == [], outside
        csp = page.headers["content-security-policy"]
        assert "http" not in csp and "default-src 'self'" in csp, csp
        assert "set-cookie" not in page.headers
        script = next(s for s in sources if s.startswith("index.js"))
        js = team.http.get(f"{prefix}/{script}", headers=bearer)
        assert js.status_code == 200 and "javascript" in js.headers["content-type"], js.headers
        assert len(js.content) > 100_000
        # without the trailing slash: TensorBoard's own redirect to the page, through the gateway
        bare = team.http.get(prefix, headers=bearer)
        assert bare.status_code in (301, 302, 308) and bare.headers["location"].endswith(prefix + "/"), bare.headers
        # a platform admin may open it too
        assert team.http.get(prefix + "/", headers=team.admin).status_code == 200

        # a browser: ?token= once, then the cookie alone
        browser = httpx.Client(base_url=gateway.url, timeout=60)
        token = bearer["Authorization"].removeprefix("Bearer ")
        r = browser.get(prefix + "/", params={"token": token})
        assert r.status_code == 303 and r.headers["location"] == prefix + "/", (r.status_code, r.headers)
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith(f"{COOKIE}=") and f"Path={prefix};" in set_cookie + ";", set_cookie
        assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower(), set_cookie
        assert token not in set_cookie and "Max-Age=43200" in set_cookie, set_cookie
        assert browser.cookies.get(COOKIE)
        page = browser.get(prefix + "/")
        assert page.status_code == 200 and "<title>TensorBoard</title>" in page.text, page.text[:300]
        environment = browser.get(f"{prefix}/data/environment")
        assert environment.status_code == 200 and environment.json()["data_location"] == str(output), environment.text
        assert eventually(lambda: browser.get(f"{prefix}/data/runs").json() == ["run1"])
        scalars = browser.post(
            f"{prefix}/data/plugin/scalars/scalars_multirun", data={"tag": "loss", "runs": "run1"}
        )  # TensorBoard's POST data route, a form body streamed through
        assert scalars.status_code == 200, scalars.text
        assert [step for _, step, _ in scalars.json()["run1"]] == [0, 1, 2, 3, 4]
        assert browser.head(f"{prefix}/data/runs").status_code == 200
        # the cookie is for this path only: the rest of the API does not take it
        assert browser.get(f"{WS}/lab/environments/{env_id}").status_code == 401

        # others: a member who is not the owner sees nothing (404), with a token or with ?token=
        member = team.headers["member"]
        assert problem(team.http.get(prefix + "/", headers=member), 404)
        assert problem(team.http.get(f"{prefix}/data/runs", headers=member), 404)
        member_token = member["Authorization"].removeprefix("Bearer ")
        stranger = httpx.Client(base_url=gateway.url, timeout=60)
        assert problem(stranger.get(prefix + "/", params={"token": member_token}), 404)
        assert not stranger.cookies
        # no credentials, a bad ?token=, forged and tampered cookies: 401
        assert problem(httpx.get(f"{gateway.url}{prefix}/"), 401)
        assert problem(httpx.get(f"{gateway.url}{prefix}/data/runs"), 401)
        assert problem(stranger.get(prefix + "/", params={"token": "rgpu_" + "x" * 40}), 401)
        real = browser.cookies[COOKIE]
        owner_id, token_id = int(real.split(".")[2]), int(real.split(".")[3])
        claims = CookieClaims(
            environment_id=env_id, user_id=owner_id, token_id=token_id, expires=int(time.time()) + 600
        )
        forged = make_cookie(cookie_key("not-the-key"), claims)
        assert problem(httpx.get(f"{gateway.url}{prefix}/", cookies={COOKIE: forged}), 401)
        tampered = re.sub(r"^v1\.([0-9a-f]{32})\.(\d+)\.", lambda m: f"v1.{m[1]}.{int(m[2]) + 1}.", real)
        assert tampered != real
        assert problem(httpx.get(f"{gateway.url}{prefix}/", cookies={COOKIE: tampered}), 401)
        key = cookie_key(gateway_key(gateway))
        signed = CookieClaims(environment_id=env_id, user_id=owner_id, token_id=token_id, expires=int(time.time()) - 1)
        assert problem(httpx.get(f"{gateway.url}{prefix}/", cookies={COOKIE: make_cookie(key, signed)}), 401)
        other_env = CookieClaims(
            environment_id="0" * 32, user_id=owner_id, token_id=token_id, expires=int(time.time()) + 600
        )
        assert problem(httpx.get(f"{gateway.url}{prefix}/", cookies={COOKIE: make_cookie(key, other_env)}), 401)

        # a cookie dies with its API token
        second = gateway.command("token", "create", owner).stdout.strip()
        tab = httpx.Client(base_url=gateway.url, timeout=60)
        assert tab.get(prefix + "/", params={"token": second}).status_code == 303
        assert tab.get(f"{prefix}/data/runs").status_code == 200
        revoked = team.http.delete("/api/v1/auth/tokens", headers={"Authorization": f"Bearer {second}"})
        assert revoked.status_code == 204, revoked.text
        assert problem(tab.get(f"{prefix}/data/runs"), 401)

        # TensorBoard gone while the session runs (sshd still does): 502, saying so
        deadline = time.monotonic() + 15
        while not (pids := tensorboard_pids(owner)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pids, f"no TensorBoard process of {owner}: {tensorboard_processes()}"
        for pid in pids:
            os.kill(pid, 15)
        gone = eventually(lambda: (r := browser.get(f"{prefix}/data/runs")).status_code == 502 and r, 30)
        assert "does not answer" in problem(gone, 502)["detail"], gone.text

        # stopped: a 409 that says why, for the cookie and the token alike (a state, not a failure upstream)
        assert team.env("owner", f"/{env_id}/stop", method="POST").status_code == 202
        team.wait("owner", env_id, {"stopped"})
        detail = problem(browser.get(prefix + "/"), 409)["detail"]
        assert "is stopped" in detail and "tb" in detail, detail
        assert "is stopped" in problem(team.http.get(f"{prefix}/data/runs", headers=bearer), 409)["detail"]
        for client in (browser, stranger, tab):
            client.close()


def test_an_environment_without_tensorboard_is_a_conflict(team: Team) -> None:
    r = team.env("owner", method="POST", name="plain", services=["ssh"], start=False)
    assert r.status_code == 201, r.text
    prefix = f"{WS}/lab/environments/{r.json()['id']}/tensorboard"
    body = problem(team.http.get(prefix + "/", headers=team.headers["owner"]), 409)
    assert "does not run TensorBoard" in body["detail"] and body["errors"][0]["field"] == "services", body
    # nor may a member learn that it exists
    assert problem(team.http.get(prefix + "/", headers=team.headers["member"]), 404)
    assert problem(team.http.get(f"{WS}/lab/environments/{'f' * 32}/tensorboard/", headers=team.admin), 404)


def test_workspace_owners_open_their_members_tensorboard(team: Team, gateway: Gateway) -> None:
    with gateway.worker():
        r = team.env(
            "member", method="POST", name="mine", cpus=1, mem_mib=1024, time_minutes=30, services=["tensorboard"]
        )
        assert r.status_code == 201, r.text
        env_id = r.json()["id"]
        prefix = f"{WS}/lab/environments/{env_id}/tensorboard"
        eventually(lambda: team.env("member", f"/{env_id}").json()["tensorboard_url"], 120)
        for role in ("member", "owner"):  # its owner, and the workspace's owner
            page = team.http.get(prefix + "/", headers=team.headers[role])
            assert page.status_code == 200 and "<title>TensorBoard</title>" in page.text, (role, page.text[:300])
        browser = httpx.Client(base_url=gateway.url, timeout=60)
        owner_token = team.headers["owner"]["Authorization"].removeprefix("Bearer ")
        assert browser.get(prefix + "/", params={"token": owner_token}).status_code == 303
        assert browser.get(f"{prefix}/data/runs").status_code == 200
        browser.close()
