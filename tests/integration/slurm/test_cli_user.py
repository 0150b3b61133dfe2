"""The CLI as a cluster user meets it: run as a non-root POSIX user against a real ``remotegpu serve``.

Every failure a user can cause or meet is one line on stderr and a non-zero exit, never a traceback; the commands
a user looks for (workspaces, members, quotas, tokens, jobs by any id) work end to end.
"""

from __future__ import annotations

import http.server
import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_runner import UserCli
from tests.integration.slurm.conftest import Gateway, PosixUserFactory, free_port, home_of


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Failed (exit 1) with one line on stderr containing every needle, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def user(posix_user: PosixUserFactory) -> tuple[str, str]:
    name = posix_user()
    return name, home_of(name)


def _write_as(user: str, path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    owner = pwd.getpwnam(user)
    for p in (path.parent, path):
        os.chown(p, owner.pw_uid, owner.pw_gid)
    path.chmod(mode)


class _Stub(http.server.BaseHTTPRequestHandler):
    """What a broken proxy in front of the gateway answers: an HTML 502, or nothing for a long time."""

    def do_GET(self) -> None:
        if "slow" in self.headers.get("Authorization", ""):
            time.sleep(5)
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet: the stand-in server's requests are not the test's output."""


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_error_paths_are_one_line(gateway: Gateway, user: tuple[str, str], stub_url: str) -> None:
    name, home = user
    cli = UserCli(name, home)
    token = gateway.token(name)

    def env(url: str, secret: str = token) -> dict[str, str]:
        return {"REMOTEGPU_URL": url, "REMOTEGPU_TOKEN": secret}

    one_line_error(cli("workspace", "list"), "not logged in", "remotegpu login")
    one_line_error(
        cli("workspace", "list", extra_env=env(f"http://127.0.0.1:{free_port()}")), "cannot connect", "127.0.0.1"
    )
    one_line_error(cli("workspace", "list", extra_env=env("127.0.0.1:8000")), "http://HOST:PORT")
    one_line_error(cli("workspace", "list", extra_env=env("ftp://127.0.0.1:8000")), "http://HOST:PORT")
    one_line_error(cli("workspace", "list", extra_env=env(gateway.url, "rgpu_not-a-real-token")), "remotegpu login")
    one_line_error(cli("workspace", "list", extra_env=env(stub_url)), "HTTP 502")
    one_line_error(
        cli("workspace", "list", extra_env={**env(stub_url, "slow"), "REMOTEGPU_TIMEOUT": "1"}),
        "did not answer in time",
    )
    # a URL copied with the API's prefix is what the user meant
    assert cli("workspace", "list", extra_env=env(gateway.url + "/api/v1/")).returncode == 0

    credentials = Path(home, ".config", "remotegpu", "credentials.toml")
    _write_as(name, credentials, 'url = "http://127.0.0.1:1"\ntoken = [unterminated\n')
    one_line_error(cli("workspace", "list"), "corrupt", str(credentials))
    _write_as(name, credentials, f'url = "{gateway.url}"\ntoken = "{token}"\n', mode=0o000)
    one_line_error(cli("workspace", "list"), "cannot read", str(credentials))
    # the environment's URL and token are enough: a broken file is not even read
    assert cli("workspace", "list", extra_env=env(gateway.url)).returncode == 0

    # login: a wrong password and a bad URL
    credentials.unlink()
    bad = cli("login", "--url", gateway.url, "--username", name, extra_env={"REMOTEGPU_PASSWORD": "wrong-password"})
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    one_line_error(cli("login", "--url", "localhost", "--username", name, extra_env={"REMOTEGPU_PASSWORD": "x"}), "URL")

    # an unknown state: refused before asking, and by the gateway itself
    unknown = cli("jobs", "--state", "DONE", "--workspace", "x", extra_env=env(gateway.url))
    assert unknown.returncode != 0 and "DONE" in unknown.stderr and "Traceback" not in unknown.stderr


def test_user_commands_end_to_end(
    gateway: Gateway, posix_user: PosixUserFactory, user: tuple[str, str], slurm_account: str
) -> None:
    name, home = user
    cli = UserCli(name, home)
    gateway.token(name, admin=True)  # to name the test's Slurm account (removed afterwards)
    other = posix_user()
    gateway.token(other)

    login = cli(
        "login",
        "--url",
        gateway.url + "/api/v1",
        "--username",
        name,
        extra_env={"REMOTEGPU_PASSWORD": f"{name}-password"},
    )
    assert login.returncode == 0, login.stderr
    saved = Path(home, ".config", "remotegpu", "credentials.toml")
    assert saved.stat().st_uid == pwd.getpwnam(name).pw_uid and (saved.stat().st_mode & 0o777) == 0o600
    assert f'url = "{gateway.url}"' in saved.read_text()  # normalized: no /api/v1

    made = cli("workspace", "create", "clilab", "--name", "CLI lab", "--slurm-account", slurm_account)
    assert made.returncode == 0, made.stderr
    listed = cli("workspace", "list")
    assert re.search(rf"clilab\s+owner\s+active\s+{slurm_account}\s+CLI lab", listed.stdout), listed.stdout
    assert '"slug": "clilab"' in cli("workspace", "show", "clilab", "--json").stdout

    ws = {"REMOTEGPU_WORKSPACE": "clilab"}
    assert cli("member", "add", other, extra_env=ws).returncode == 0
    members = cli("member", "list", extra_env=ws).stdout
    assert re.search(rf"{other}\s+member", members) and re.search(rf"{name}\s+owner", members), members
    one_line_error(cli("member", "add", "no-such-user", extra_env=ws), "no-such-user")
    assert cli("member", "remove", other, extra_env=ws).returncode == 0
    assert other not in cli("member", "list", extra_env=ws).stdout

    set1 = cli("quota", "set", "--gpus", "2", "--cpus", "8", extra_env=ws)
    assert set1.returncode == 0, set1.stderr
    set2 = cli("quota", "set", "--memory", "16G", extra_env=ws)  # partial: the GPUs and CPUs stay
    assert set2.returncode == 0, set2.stderr
    shown = cli("quota", "show", extra_env=ws).stdout
    assert re.search(r"gpus:\s+2\n", shown) and re.search(r"cpus:\s+8\n", shown) and "16G" in shown, shown
    negative = cli("quota", "set", "--gpus=-3", extra_env=ws)  # click's usage error: exit 2
    assert negative.returncode == 2 and "--gpus" in negative.stderr and "Traceback" not in negative.stderr
    bad_size = cli("quota", "set", "--memory", "lots", extra_env=ws)
    assert bad_size.returncode != 0 and "--memory" in bad_size.stderr and "Traceback" not in bad_size.stderr

    tokens = cli("token", "list")
    assert tokens.returncode == 0 and re.search(r"\bcli\b.*\*\s*$", tokens.stdout, re.M), tokens.stdout

    # a job held at submission, found by its Slurm id and by a prefix of its id, released, cancelled
    script = Path(home, "hold.sh")
    _write_as(name, script, "#!/bin/bash\n#SBATCH -J held-one\n#SBATCH -t 2\nsleep 30\n", mode=0o644)
    submitted = cli("submit", "--hold", "hold.sh", extra_env=ws)
    assert submitted.returncode == 0, submitted.stderr
    found = re.search(r"Submitted job ([0-9a-f]{32}) \(Slurm job (\d+)\)", submitted.stdout)
    assert found, submitted.stdout
    job_id, slurm_id = found[1], found[2]
    gateway.command("worker", "--once")
    jobs = cli("jobs", extra_env=ws).stdout
    header, *rows = jobs.splitlines()
    assert header.split() == [
        "ID", "SLURM", "PARTITION", "NAME", "USER", "STATE", "ELAPSED", "NODES", "GPUS", "NODELIST(REASON)"
    ]  # fmt: skip
    row = next(r for r in rows if r.startswith(job_id[:8]))
    assert slurm_id in row and "held-one" in row and "PENDING" in row and "0:00" in row, row
    assert re.search(r"\((JobHeldUser|JobHeldAdmin)\)", row), row

    by_slurm = cli("job", slurm_id, extra_env=ws)
    assert by_slurm.returncode == 0 and f"Job:         {job_id}" in by_slurm.stdout, by_slurm.stdout
    assert f'"id": "{job_id}"' in cli("job", job_id[:6], "--json", extra_env=ws).stdout
    one_line_error(cli("job", "99999999", extra_env=ws), "no job 99999999")
    one_line_error(cli("job", "not-an-id", extra_env=ws), "not a job id")

    released = cli("release", job_id[:8], extra_env=ws)
    assert released.returncode == 0 and f"released {job_id[:8]}" in released.stdout, released.stderr
    cancelled = cli("cancel", slurm_id, extra_env=ws)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cli("jobs", "--state", "pending", "--json", extra_env=ws).returncode == 0

    # logout revokes the token on the gateway and removes the file
    token = re.search(r'token = "([^"]+)"', saved.read_text())
    assert token
    out = cli("logout")
    assert out.returncode == 0 and not saved.exists(), out.stderr
    me = httpx.get(gateway.url + "/api/v1/me", headers={"Authorization": f"Bearer {token[1]}"})
    assert me.status_code == 401
    one_line_error(cli("jobs"), "not logged in")
    revoked = {"REMOTEGPU_URL": gateway.url, "REMOTEGPU_TOKEN": token[1]}
    one_line_error(cli("jobs", extra_env=revoked), "expired or revoked", "remotegpu login")


def test_state_filter_is_checked_by_the_gateway(gateway: Gateway, user: tuple[str, str], slurm_account: str) -> None:
    name, _ = user
    headers = {"Authorization": f"Bearer {gateway.token(name, admin=True)}"}
    made = httpx.post(
        gateway.url + "/api/v1/workspaces",
        headers=headers,
        json={"slug": "states", "name": "States", "slurm_account": slurm_account},
    )
    assert made.status_code == 201, made.text
    jobs = gateway.url + "/api/v1/workspaces/states/jobs"
    bad = httpx.get(jobs, params={"state": "DONE"}, headers=headers)
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "state", bad.text
    assert httpx.get(jobs, params={"state": "completed"}, headers=headers).status_code == 200
    assert httpx.get(jobs, params={"id_prefix": "zz"}, headers=headers).status_code == 400
    assert httpx.get(jobs, params={"slurm_job_id": 1}, headers=headers).json()["items"] == []


def test_cluster_command(gateway: Gateway, user: tuple[str, str]) -> None:
    """Against GET /api/v1/cluster (the poller's snapshot): partitions with free/total GPUs, GPU types."""
    name, home = user
    cli = UserCli(name, home)
    env = {"REMOTEGPU_URL": gateway.url, "REMOTEGPU_TOKEN": gateway.token(name)}
    gateway.command("worker", "--once")
    shown = cli("cluster", extra_env=env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^PARTITION\s+STATE\s+TIMELIMIT", shown.stdout, re.M), shown.stdout
    assert re.search(r"n1,n2\s+a100 \d/4", shown.stdout), shown.stdout
    assert re.search(r"^a100\s+\d\s+\d\s+4\s*$", shown.stdout, re.M), shown.stdout
    assert '"gpu_types"' in cli("cluster", "--json", extra_env=env).stdout
