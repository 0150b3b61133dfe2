"""The ``remotegpu`` command as an operator uses it: real processes, a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REMOTEGPU = [sys.executable, "-m", "gateway.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_env(request: pytest.FixtureRequest, make_database_url: Callable[[str], str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env["REMOTEGPU_DATABASE_URL"] = make_database_url(str(request.param))
    return env


def run(env: dict[str, str], *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(env)
    if password is not None:
        env["REMOTEGPU_PASSWORD"] = password
    return subprocess.run(
        [*REMOTEGPU, *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False
    )


@pytest.fixture
def server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``remotegpu serve`` on a free port (it migrates the empty database itself); stopped by PID."""
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*REMOTEGPU, "serve", "--port", str(port)], env=cli_env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bootstrap_admin_then_use_the_api(server: tuple[str, Path], cli_env: dict[str, str]) -> None:
    base, log = server
    created = run(cli_env, "admin", "create-user", "alice", "--admin", password="s3cret-pass")
    assert created.returncode == 0, created.stderr
    assert "s3cret-pass" not in created.stdout + created.stderr

    token = run(cli_env, "token", "create", "alice", "--name", "ci")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("rgpu_")

    me = httpx.get(base + "/api/v1/me", headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "cli-t-1"})
    assert me.status_code == 200 and me.json()["user"]["is_admin"] is True

    login = httpx.post(base + "/api/v1/auth/tokens", json={"username": "alice", "password": "s3cret-pass"})
    assert login.status_code == 201
    ws = httpx.post(
        base + "/api/v1/workspaces",
        json={"slug": "cli-lab", "name": "CLI lab"},
        headers={"Authorization": f"Bearer {login.json()['token']}"},
    )
    assert ws.status_code == 201, ws.text

    # Logs are JSON lines carrying the request id; no secret ever reaches them.
    time.sleep(0.2)
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(r.get("request_id") == "cli-t-1" and r.get("path") == "/api/v1/me" for r in records), text
    assert "s3cret-pass" not in text and secret not in text


def test_db_commands(cli_env: dict[str, str]) -> None:
    assert "current: empty" in run(cli_env, "db", "current").stdout
    up = run(cli_env, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    current = run(cli_env, "db", "current").stdout
    head = current.split("head:")[1].strip()
    assert f"current: {head}" in current
    assert run(cli_env, "db", "downgrade", "base").returncode == 0
    assert "current: empty" in run(cli_env, "db", "current").stdout


def test_operator_errors_are_clear(cli_env: dict[str, str]) -> None:
    assert run(cli_env, "db", "upgrade").returncode == 0
    no_password = run(cli_env, "admin", "create-user", "bob")  # stdin is not a terminal
    assert no_password.returncode == 1 and "REMOTEGPU_PASSWORD" in no_password.stderr
    bad_name = run(cli_env, "admin", "create-user", "Bad Name", password="long-enough")
    assert bad_name.returncode == 1 and "name" in bad_name.stderr
    assert run(cli_env, "admin", "create-user", "bob", password="long-enough").returncode == 0
    again = run(cli_env, "admin", "create-user", "bob", password="long-enough")
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = run(cli_env, "token", "create", "nobody")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_bad_settings_are_reported_not_raised(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, REMOTEGPU_PORT="not-a-port")
    r = run(env, "db", "current")
    assert r.returncode == 1 and "port" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args", [[], ["serve"], ["db"], ["db", "upgrade"], ["admin", "create-user"], ["token", "create"]]
)
def test_every_command_has_help(args: list[str]) -> None:
    r = subprocess.run([*REMOTEGPU, *args, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and "Usage:" in r.stdout and len(r.stdout.splitlines()) > 3
