"""Environments end to end: a real ``remotegpu serve`` and worker on the real cluster, a real supervisor in the
session's job, real OpenSSH through the gateway's port mapping, as the users themselves."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.db.session import Database
from gateway.environments import tokens
from gateway.jobs.poller import Poller
from slurm.cli import CliSlurmClient
from tests.integration.slurm.conftest import WS, Cluster, Gateway, PosixUserFactory
from tests.integration.slurm.test_poller import bring_back, controller_stopper, stop_controller

pytestmark = pytest.mark.integration
__all__ = ["controller_stopper"]  # a fixture of the poller's tests, used here too


class Team:
    """A workspace on a fresh Slurm account, its owner and a member, each with an SSH key of their own."""

    def __init__(self, gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str, keys: Path) -> None:
        self.gateway = gateway
        self.admin = {"Authorization": f"Bearer {gateway.token('rgadmin', admin=True)}"}
        self.names = {role: posix_user() for role in ("owner", "member")}
        self.headers = {role: {"Authorization": f"Bearer {gateway.token(name)}"} for role, name in self.names.items()}
        self.http = httpx.Client(base_url=gateway.url, timeout=120)
        r = self.http.post(
            WS,
            json={"slug": "lab", "name": "Lab", "slurm_account": slurm_account, "owner": self.names["owner"]},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        r = self.http.post(f"{WS}/lab/members", json={"username": self.names["member"]}, headers=self.headers["owner"])
        assert r.status_code == 201, r.text
        self.keys: dict[str, Path] = {}
        for role in self.names:
            key = keys / f"{role}_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            self.keys[role] = key
            r = self.http.post(
                "/api/v1/me/ssh-keys",
                json={"public_key": key.with_suffix(".pub").read_text()},
                headers=self.headers[role],
            )
            assert r.status_code == 201, r.text

    def env(self, role: str, path: str = "", method: str = "GET", **body: Any) -> httpx.Response:
        url = f"{WS}/lab/environments{path}"
        return self.http.request(method, url, json=body or None, headers=self.headers[role])

    def wait(self, role: str, env_id: str, states: set[str], within: float = 90, ssh: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            seen: dict[str, Any] = self.env(role, f"/{env_id}").json()
            if seen["state"] in states and (not ssh or seen["ssh"] is not None):
                return seen
            assert time.monotonic() < deadline, repr(seen)
            time.sleep(0.3)


@pytest.fixture
def team(gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str, tmp_path: Path) -> Iterator[Team]:
    team = Team(gateway, posix_user, slurm_account, tmp_path)
    yield team
    for role in team.names:  # nothing of theirs left on the cluster for the account's removal to trip over
        for env in team.env(role).json()["items"]:
            team.env(role, f"/{env['id']}", method="DELETE")
    team.http.close()


def ssh(view: dict[str, Any], key: Path, command: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """OpenSSH's client through the gateway's mapping, with only ``key`` (no agent, no password)."""
    access = view["ssh"]
    return subprocess.run(
        [
            "ssh",
            "-p",
            str(access["port"]),
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            f"{user or access['user']}@{access['host']}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def host_key(view: dict[str, Any]) -> str:
    out = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(view["ssh"]["port"]), view["ssh"]["host"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout.split(None, 1)[1].strip() if out.stdout else ""


def squeue_ids(cluster: Cluster) -> set[int]:
    out = cluster.run("squeue", "-h", "-o", "%i %T", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING")
    return {int(line.split()[0]) for line in out.splitlines() if line.strip()}


def test_ssh_into_an_environment_and_keep_code_across_stop_and_start(
    team: Team, gateway: Gateway, slurm_cluster: Cluster
) -> None:
    owner = team.names["owner"]
    with gateway.worker():
        r = team.env(
            "owner",
            method="POST",
            name="dev",
            gpus=1,
            gpu_type="a100",
            cpus=1,
            mem_mib=512,
            time_minutes=30,
            services=["ssh"],
        )
        assert r.status_code == 201, r.text
        env_id = r.json()["id"]
        view = team.wait("owner", env_id, {"running"}, ssh=True)
        assert view["ssh"]["command"] == f"ssh -p {view['ssh']['port']} {owner}@{view['ssh']['host']}"
        assert f"Port {view['ssh']['port']}" in view["ssh"]["config"]
        slurm_id = view["session"]["slurm_job_id"]

        done = ssh(
            view,
            team.keys["owner"],
            "echo $SLURM_JOB_ID; id -un; ls -d $GEMINI_CODE; "
            "echo kept > $GEMINI_CODE/notes.txt; echo ${CUDA_VISIBLE_DEVICES:-none}",
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.split()
        assert lines[0] == str(slurm_id) and lines[1] == owner and lines[2].endswith("/code")
        assert lines[3] != "none"  # the job's GPU
        # the member's key (or the member's name) gets nowhere
        refused = ssh(view, team.keys["member"], "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
        assert ssh(view, team.keys["member"], "true", user=team.names["member"]).returncode == 255
        # nor can the member see it
        assert team.env("member", f"/{env_id}").status_code == 404
        first_key = host_key(view)

        r = team.env("owner", f"/{env_id}/stop", method="POST")
        assert r.status_code == 202 and r.json()["state"] in {"stopping", "stopped"}, r.text
        stopped = team.wait("owner", env_id, {"stopped"})
        assert stopped["ssh"] is None and "stopped by" in stopped["reason"]
        assert slurm_id not in squeue_ids(slurm_cluster)  # its GPUs are free
        ports = team.env("owner", f"/{env_id}/ports").json()
        assert ports and all(p["released_at"] is not None for p in ports)

        r = team.env("owner", f"/{env_id}/start", method="POST")
        assert r.status_code == 202, r.text
        again = team.wait("owner", env_id, {"running"}, ssh=True)
        assert again["session"]["number"] == 2 and again["session"]["slurm_job_id"] != slurm_id
        done = ssh(again, team.keys["owner"], "cat $GEMINI_CODE/notes.txt")
        assert done.returncode == 0 and done.stdout.strip() == "kept", done.stderr
        assert host_key(again) == first_key  # the same environment: clients keep trusting it

        kinds = [e["kind"] for e in team.env("owner", f"/{env_id}/events").json()]
        assert kinds[:2] == ["created", "start"] and "ready" in kinds and "stop" in kinds
        assert "session_state" in kinds
        # the jobs API lists training jobs only
        assert team.http.get(f"{WS}/lab/jobs", headers=team.headers["owner"]).json()["items"] == []


def test_a_session_ended_by_its_time_limit_shows_stopped_with_the_reason(
    team: Team, gateway: Gateway, slurm_cluster: Cluster
) -> None:
    with gateway.worker():
        r = team.env("owner", method="POST", name="short", cpus=1, mem_mib=256, time_minutes=10)
        assert r.status_code == 201, r.text
        env_id = r.json()["id"]
        view = team.wait("owner", env_id, {"running"}, ssh=True)
        slurm_cluster.run("scontrol", "update", f"JobId={view['session']['slurm_job_id']}", "TimeLimit=0:01")
        ended = team.wait("owner", env_id, {"stopped", "failed"}, within=150)
        assert ended["state"] == "stopped" and "time limit" in ended["reason"], ended
        assert ended["ssh"] is None


def test_callback_tokens_are_single_use_and_bound_to_their_session(team: Team, gateway: Gateway) -> None:
    callback = f"{gateway.url}/api/v1/sessions/callback"
    body = {"node": "n1", "host": "127.0.0.1", "services": {"ssh": 22}}
    assert httpx.post(callback, json=body).status_code == 401  # no token
    assert httpx.post(callback, json=body, headers={"Authorization": "Bearer x"}).status_code == 401
    forged = tokens.make("not-the-key", "0" * 32)
    assert httpx.post(callback, json=body, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    with gateway.worker():
        r = team.env("owner", method="POST", name="cb", cpus=1, mem_mib=256, time_minutes=10)
        env_id = r.json()["id"]
        view = team.wait("owner", env_id, {"running"}, ssh=True)
        key = gateway_key(gateway)
        real = tokens.make(key, view["session"]["job_id"])
        # the supervisor spent it: a replay is refused, and so is the token of another session
        replay = httpx.post(callback, json=body, headers={"Authorization": f"Bearer {real}"})
        assert replay.status_code == 401 and replay.headers["content-type"].startswith("application/problem+json")
        other = tokens.make(key, "f" * 32)
        assert httpx.post(callback, json=body, headers={"Authorization": f"Bearer {other}"}).status_code == 401
        team.env("owner", f"/{env_id}/stop", method="POST")
        team.wait("owner", env_id, {"stopped"})
        # expired with its session
        assert httpx.post(callback, json=body, headers={"Authorization": f"Bearer {real}"}).status_code == 401


def gateway_key(gateway: Gateway) -> str:
    import sqlite3

    path = gateway.env["REMOTEGPU_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        (key,) = db.execute("SELECT secret FROM gateway_instance").fetchone()
    return str(key)


def test_bad_input_and_other_workspaces(team: Team) -> None:
    r = team.env("owner", method="POST", name="Bad Name")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "name", r.text
    r = team.env("owner", method="POST", name="x", datasets=["/a", "/b", "/c", "/d"])
    assert r.status_code == 400, r.text
    r = team.env("owner", method="POST", name="x", services=["ssh", "telnet"])
    assert r.status_code == 400, r.text
    r = team.env("owner", method="POST", name="x", services=[])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "services", r.text
    r = team.env("owner", method="POST", name="huge", gpus=8, gpu_type="a100")  # no node has 8: Slurm says no
    assert r.status_code == 400 and "Slurm refused" in r.json()["detail"], r.text
    assert team.env("owner", "?name=huge").json()["items"] == []  # not made: the name is free for a retry
    r = team.env("owner", method="POST", name="x", gpu_type="a100", start=False)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "gpu_type", r.text
    r = team.env("owner", method="POST", name="idle", start=False)
    assert r.status_code == 201 and r.json()["state"] == "stopped", r.text
    env_id = r.json()["id"]
    assert team.env("owner", method="POST", name="idle", start=False).status_code == 409  # name taken
    assert team.env("owner", f"/{env_id}/stop", method="POST").status_code == 409  # nothing to stop
    assert team.env("member", f"/{env_id}").status_code == 404  # someone else's
    assert team.http.get(f"{WS}/other/environments", headers=team.headers["owner"]).status_code == 404
    # admins and owners see all; the list filters by derived state
    listed = team.env("owner", "?state=stopped").json()
    assert [e["id"] for e in listed["items"]] == [env_id]
    assert team.env("owner", "?state=running").json()["items"] == []
    r = team.env("owner", f"/{env_id}", method="PATCH", description="notes", gpus=1, gpu_type="a100")
    assert r.status_code == 200 and r.json()["spec"]["gpus"] == 1 and r.json()["description"] == "notes", r.text


async def test_one_poll_follows_any_number_of_environments(
    team: Team, gateway: Gateway, slurm_cluster: Cluster
) -> None:
    """The poller's Slurm calls per cycle are the same with 1, 20 and 50 environments (pending or running)."""
    database = Database(gateway.env["REMOTEGPU_DATABASE_URL"])
    poller = Poller(database, CliSlurmClient(slurm_conf=slurm_cluster.conf, timeout=30))
    calls = {}
    try:
        made = 0
        for total in (1, 20, 50):
            while made < total:
                r = await asyncio.to_thread(
                    team.env,
                    "owner",
                    "",
                    "POST",
                    name=f"many-{made}",
                    cpus=1,
                    mem_mib=64,
                    time_minutes=5,
                    services=["ssh"],
                )
                assert r.status_code == 201, r.text
                made += 1
            await poller.poll_once()  # the new ones' first sight
            result = await poller.poll_once()
            assert result.reachable
            calls[total] = result.slurm_calls
        assert calls[1] == calls[20] == calls[50] == 1, calls  # one squeue, whatever their number
        states = {e["state"] for e in (await asyncio.to_thread(team.env, "owner", "?limit=100")).json()["items"]}
        assert states <= {"pending", "starting", "running"}, states
    finally:
        await database.dispose()


@pytest.mark.serial  # stops slurmctld: alone, whatever runs beside it
def test_a_controller_restart_leaves_running_environments_running_and_reachable(
    team: Team, gateway: Gateway, slurm_cluster: Cluster, controller_stopper: None
) -> None:
    with gateway.worker():
        r = team.env("owner", method="POST", name="steady", cpus=1, mem_mib=256, time_minutes=30)
        env_id = r.json()["id"]
        view = team.wait("owner", env_id, {"running"}, ssh=True)
        stop_controller(slurm_cluster)
        unknown = team.wait("owner", env_id, {"unknown"}, within=30)
        assert unknown["reason"] and "not answering" in unknown["reason"]
        done = ssh(view, team.keys["owner"], "echo alive")  # the session does not need the controller
        assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr
        bring_back()
        back = team.wait("owner", env_id, {"running"}, within=60, ssh=True)
        assert back["session"]["slurm_job_id"] == view["session"]["slurm_job_id"]
        assert back["ssh"]["port"] == view["ssh"]["port"]
        assert ssh(back, team.keys["owner"], "true").returncode == 0
        kinds = [e["kind"] for e in team.env("owner", f"/{env_id}/events").json()]
        assert "stop" not in kinds and "port_released" not in kinds, kinds  # 0 false stops


def test_the_concurrent_environments_quota(team: Team, gateway: Gateway) -> None:
    r = team.http.put(f"{WS}/lab/quota", json={"concurrent_environments": 1}, headers=team.admin)
    assert r.status_code == 200, r.text
    first = team.env("owner", method="POST", name="one", cpus=1, mem_mib=64, time_minutes=5)
    assert first.status_code == 201, first.text
    second = team.env("member", method="POST", name="two", cpus=1, mem_mib=64, time_minutes=5)
    assert second.status_code == 409 and second.json()["errors"][0]["field"] == "concurrent_environments"
    assert team.env("member").json()["items"] == []  # refused before it was made
    idle = team.env("member", method="POST", name="two", start=False)
    assert idle.status_code == 201
    assert team.env("member", f"/{idle.json()['id']}/start", method="POST").status_code == 409
    team.env("owner", f"/{first.json()['id']}/stop", method="POST")
    with gateway.worker():
        team.wait("owner", first.json()["id"], {"stopped"}, within=60)
    assert team.env("member", f"/{idle.json()['id']}/start", method="POST").status_code == 202

    # settings a quota set since refuses: a conflict on start (the request is fine, the stored settings are not)
    r = team.http.put(f"{WS}/lab/quota", json={"memory_bytes": 32 * 2**20}, headers=team.admin)
    assert r.status_code == 200, r.text
    again = team.env("owner", f"/{first.json()['id']}/start", method="POST")
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "mem_mib", again.text
    assert "the workspace quota allows 32" in again.json()["detail"], again.text
