"""The ``remotegpu`` command as an operator uses it: real processes, a real server on 127.0.0.1.

Every command runs as a non-root POSIX user (``runuser -u``) from a venv every user can execute.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_runner import operator_user, run_cli_as, user_env, user_venv

operator = pytest.fixture(scope="module")(operator_user)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_env(
    request: pytest.FixtureRequest, make_database_url: Callable[[str], str], operator: tuple[str, str]
) -> dict[str, str]:
    """The operator's REMOTEGPU_* settings: a fresh database (SQLite in the operator's home, which it can write)."""
    _, home = operator
    if request.param == "sqlite":
        db = Path(home, f"{os.urandom(6).hex()}.db")
        url = f"sqlite:///{db}"
        request.addfinalizer(lambda: db.unlink(missing_ok=True))
    else:
        url = make_database_url("postgresql")
    user, home = operator
    return {"REMOTEGPU_DATABASE_URL": url, "_user": user, "_home": home}  # _user, _home: whom ``run`` runs as


def run(env: dict[str, str], *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """``remotegpu ARGS`` as the operator (a non-root user) with these settings."""
    env = dict(env)
    if password is not None:
        env["REMOTEGPU_PASSWORD"] = password
    user, home = env.pop("_user"), env.pop("_home")
    return run_cli_as(user, *args, home=home, env=env, timeout=60)


@pytest.fixture
def server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``remotegpu serve`` on a free port (it migrates the empty database itself); stopped by PID."""
    port = _free_port()
    log = tmp_path / "serve.log"
    user, home = cli_env["_user"], cli_env["_home"]
    env = {k: v for k, v in cli_env.items() if not k.startswith("_")}
    command = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in user_env(home, env).items())]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*command, str(user_venv() / "bin/remotegpu"), "serve", "--port", str(port)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
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


def test_every_command_has_help(operator: tuple[str, str]) -> None:
    user, home = operator
    top = run_cli_as(user, "--help", home=home)
    assert top.returncode == 0, top.stderr
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert {"hold", "release", "workspace", "member", "quota", "logout", "token", "cluster"} <= set(commands)
    for group in ("db", "admin", "token", "workspace", "member", "quota"):
        listed = run_cli_as(user, group, "--help", home=home).stdout
        commands += [f"{group} {line.split()[0]}" for line in listed.split("Commands:")[1].splitlines() if line.strip()]
    for command in commands:
        r = run_cli_as(user, *command.split(), "--help", home=home)
        assert r.returncode == 0 and "Usage:" in r.stdout and len(r.stdout.splitlines()) > 3, (command, r.stderr)
