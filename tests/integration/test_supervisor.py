"""``remotegpu-session`` for real: run as a non-root POSIX user from the venv every user can run, against a small
HTTP server of the test standing in for the gateway's callback, with OpenSSH's own ``sshd``, ``ssh`` and ``scp``
and the real TensorBoard. The gateway's endpoint itself is tested with the gateway."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.environments.supervisor import descendants, process_table
from tests.cli_runner import operator_user, user_venv

TOKEN = "0123456789abcdef0123456789abcdef." + "ab" * 32
TRICKY = "a \"quoted\" \\back 'single' #hash $dollar\ttab"
PREFIX = "/api/v1/workspaces/w1/environments/e1/tensorboard"

session_user = pytest.fixture(scope="module")(operator_user)


class FakeGateway:
    """The gateway's ``POST /api/v1/sessions/callback``: records each call, answers from a script of replies."""

    def __init__(self, replies: list[tuple[int, dict[str, Any]]]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, dict[str, str], Any]] = []
        self.answered = threading.Event()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                gateway.calls.append((self.path, dict(self.headers.items()), json.loads(body or b"null")))
                status, answer = gateway.replies.pop(0) if len(gateway.replies) > 1 else gateway.replies[0]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if status < 300:
                    gateway.answered.set()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads ``calls``."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Session:
    """One ``remotegpu-session`` process as ``user``, its output in a file."""

    def __init__(self, user: str, home: str, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        entry = pwd.getpwnam(user)
        self.output = tmp / f"session-{time.monotonic_ns()}.log"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [str(user_venv() / "bin/remotegpu-session"), *args],
                user=entry.pw_uid,
                group=entry.pw_gid,
                extra_groups=[],
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "USER": user, "LANG": "C.UTF-8", **env},
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def pid_of(self, service: str) -> int:
        found = re.findall(rf"started {service} \(pid (\d+)\)", self.log())
        assert found, self.log()
        return int(found[-1])

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"remotegpu-session still runs after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    started: list[Session] = []
    yield started
    for session in started:
        session.stop()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs of the test (root's files: ssh runs as root, the identity is what counts)."""
    made = {}
    for name in ("mine", "other"):
        path = tmp_path / f"id_{name}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        made[name] = path
    return made


def public(key: Path) -> str:
    return key.with_suffix(".pub").read_text().strip()


def wait_for(event: threading.Event, session: Session, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not event.wait(0.2):
        if session.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no callback answered (rc {session.process.poll()}):\n{session.log()}")


def wait_running(session: Session, timeout: float = 90) -> None:
    """Until the supervisor has applied the callback's answer (its "running:" line)."""
    deadline = time.monotonic() + timeout
    while "running: " not in session.log():
        if session.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"session not running (rc {session.process.poll()}):\n{session.log()}")
        time.sleep(0.1)


def ssh_options(key: Path, known_hosts: Path | None = None) -> list[str]:
    """ssh/scp options: only this identity, no prompts, root's own ssh config and known hosts out of the way."""
    if known_hosts:
        hosts = ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        hosts = ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    options = ["-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", *hosts]
    return [*options, "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]


def ssh(
    user: str, key: Path, port: int, command: str, known_hosts: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", *ssh_options(key, known_hosts), "-p", str(port), f"{user}@127.0.0.1", command],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def host_key(port: int) -> str:
    """The ed25519 host key sshd presents on ``port`` (type and blob)."""
    out = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"], capture_output=True, text=True, timeout=30
    ).stdout
    lines = [line.split(None, 1)[1] for line in out.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1, out
    return lines[0].strip()


def alive(pid: int, started: int | None = None) -> bool:
    stat = process_table().get(pid)
    return stat is not None and (started is None or stat[1] == started)


def no_token_in_environ(pid: int) -> None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not any(item.startswith(b"REMOTEGPU_SESSION_TOKEN=") for item in environ)
    assert TOKEN.encode() not in b"\0".join(environ)


def job_env(user: str, home: str) -> dict[str, str]:
    code, out = Path(home, "code"), Path(home, "output")
    for path in (code, out):
        path.mkdir(exist_ok=True)
    Path(code, "train.py").write_text("print('hi')\n")
    entry = pwd.getpwnam(user)
    for path in (code, out, code / "train.py"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {
        "REMOTEGPU_SESSION_TOKEN": TOKEN,
        "SLURM_JOB_ID": "4242",
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_NAME": TRICKY,
        "GEMINI_CODE": str(code),
        "GEMINI_DATA_OUT": str(out),
        "CUDA_VISIBLE_DEVICES": "0,1",
        "MY_SETTING": "from the environment's spec",
        "UNLISTED": "not passed",
    }


def test_ssh_and_tensorboard_in_the_job_then_sigterm_ends_everything(
    session_user: tuple[str, str], tmp_path: Path, keys: dict[str, Path], sessions: list[Session]
) -> None:
    user, home = session_user
    gateway = FakeGateway([(503, {"detail": "not yet"}), (200, {"authorized_keys": [public(keys["mine"])]})])
    try:
        state = f"{home}/.remotegpu/environments/e1"
        args = ["--gateway", gateway.url, "--services", "ssh,tensorboard,jupyterlab", "--state-dir", state]
        args += ["--tensorboard-prefix", PREFIX, "--pass-env", "MY_SETTING", "--grace", "5"]
        session = Session(user, home, tmp_path, args, job_env(user, home))
        sessions.append(session)
        wait_for(gateway.answered, session)
        wait_running(session)
    finally:
        gateway.close()

    # the callback: once per try (the 503 was retried), the token as a bearer, where each service listens
    assert len(gateway.calls) == 2
    path, headers, body = gateway.calls[-1]
    assert path == "/api/v1/sessions/callback"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert body["node"] == "n1" and body["host"] == "127.0.0.1"
    assert set(body["services"]) == {"ssh", "tensorboard"}
    ssh_port, tb_port = body["services"]["ssh"], body["services"]["tensorboard"]
    assert TOKEN not in session.log()
    state_dir = Path(state)
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert (state_dir / "authorized_keys").stat().st_mode & 0o777 == 0o600

    # a login with the registered key lands in the job: its variables, its files, as the user
    got = ssh(
        user, keys["mine"], ssh_port, 'echo "$SLURM_JOB_ID"; id -un; ls "$GEMINI_CODE"; printf %s "$SLURM_JOB_NAME"'
    )
    assert got.returncode == 0, got.stderr + session.log()
    assert got.stdout.split("\n")[:3] == ["4242", user, "train.py"]
    assert got.stdout.split("\n", 3)[3] == TRICKY
    env = ssh(user, keys["mine"], ssh_port, "env").stdout
    assert "CUDA_VISIBLE_DEVICES=0,1" in env and "MY_SETTING=from the environment's spec" in env
    assert "UNLISTED" not in env and "REMOTEGPU_SESSION_TOKEN" not in env and TOKEN not in env

    # a key not in the list is refused; so is a password
    refused = ssh(user, keys["other"], ssh_port, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    # scp both ways (SFTP, the default, and the old protocol)
    sent = tmp_path / "weights.bin"
    sent.write_bytes(os.urandom(256 * 1024))
    base = ["scp", *ssh_options(keys["mine"]), "-P", str(ssh_port)]
    up = subprocess.run(
        [*base, str(sent), f"{user}@127.0.0.1:{home}/code/"], capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    assert Path(home, "code/weights.bin").read_bytes() == sent.read_bytes()
    back = tmp_path / "back.bin"
    down = subprocess.run(
        [*base, "-O", f"{user}@127.0.0.1:{home}/code/weights.bin", str(back)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == sent.read_bytes()

    # TensorBoard on the job's output, under the gateway's prefix only
    logdir = httpx.get(f"http://127.0.0.1:{tb_port}{PREFIX}/data/logdir", timeout=30)
    assert logdir.status_code == 200 and logdir.json()["logdir"] == f"{home}/output"
    assert httpx.get(f"http://127.0.0.1:{tb_port}{PREFIX}/", timeout=30).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{tb_port}/data/logdir", timeout=30).status_code == 404

    # the services run as the user, without the token
    sshd_pid, tb_pid = session.pid_of("ssh"), session.pid_of("tensorboard")
    for pid in (sshd_pid, tb_pid):
        assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam(user).pw_uid
        no_token_in_environ(pid)

    # an open login at the stop: it ends too (sshd's per-connection processes are not in its process group)
    held = subprocess.Popen(
        ["ssh", *ssh_options(keys["mine"]), "-p", str(ssh_port), f"{user}@127.0.0.1", "sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        table = process_table()
        below = {pid: table[pid][1] for pid in descendants({p: pp for p, (pp, _) in table.items()}, sshd_pid)}
        if len(below) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(below) >= 2, "the held login's sshd processes never appeared"
    started = {pid: table[pid][1] for pid in (sshd_pid, tb_pid)} | below

    session.process.send_signal(signal.SIGTERM)
    assert session.wait(30) == 0, session.log()
    assert "SIGTERM received" in session.log()
    left = [pid for pid, start in started.items() if alive(pid, start)]
    assert not left, f"still running after SIGTERM: {left}\n{session.log()}"
    assert held.wait(timeout=30) != 0  # its connection was closed under it


def test_host_key_kept_across_starts_and_keys_are_the_latest_answer(
    session_user: tuple[str, str], tmp_path: Path, keys: dict[str, Path], sessions: list[Session]
) -> None:
    user, home = session_user
    state = f"{home}/.remotegpu/environments/e2"
    env = job_env(user, home)
    known_hosts = tmp_path / "known_hosts"

    first_gateway = FakeGateway([(200, {"authorized_keys": [public(keys["mine"])]})])
    try:
        first = Session(
            user, home, tmp_path, ["--gateway", first_gateway.url, "--services", "ssh", "--state-dir", state], env
        )
        sessions.append(first)
        wait_for(first_gateway.answered, first)
        wait_running(first)
    finally:
        first_gateway.close()
    first_port = first_gateway.calls[-1][2]["services"]["ssh"]
    key_before = host_key(first_port)
    known_hosts.write_text(f"* {key_before}\n")
    assert ssh(user, keys["mine"], first_port, "true", known_hosts).returncode == 0
    first.stop()
    assert first.process.returncode == 0

    # the next start: the same host key (the strict known_hosts of the first passes), only the new answer's keys,
    # and TensorBoard under the prefix the gateway's answer gives (none on the command line)
    second_gateway = FakeGateway(
        [(200, {"authorized_keys": [public(keys["other"])], "tensorboard_path_prefix": PREFIX})]
    )
    try:
        args = ["--gateway", second_gateway.url, "--services", "tensorboard,ssh", "--state-dir", state]
        second = Session(user, home, tmp_path, args, env)
        sessions.append(second)
        wait_for(second_gateway.answered, second)
        wait_running(second)
    finally:
        second_gateway.close()
    ports = second_gateway.calls[-1][2]["services"]
    assert host_key(ports["ssh"]) == key_before
    got = ssh(user, keys["other"], ports["ssh"], "echo $SLURM_JOB_ID", known_hosts)
    assert got.returncode == 0 and got.stdout == "4242\n", got.stderr
    assert ssh(user, keys["mine"], ports["ssh"], "true", known_hosts).returncode == 255
    answer = httpx.get(f"http://127.0.0.1:{ports['tensorboard']}{PREFIX}/data/logdir", timeout=30)
    assert answer.status_code == 200, second.log()


def test_a_refused_callback_ends_the_session(
    session_user: tuple[str, str], tmp_path: Path, sessions: list[Session]
) -> None:
    user, home = session_user
    gateway = FakeGateway([(401, {"status_code": 401, "detail": "callback token not valid"})])
    try:
        args = ["--gateway", gateway.url, "--services", "ssh", "--state-dir", f"{home}/.remotegpu/environments/e3"]
        session = Session(user, home, tmp_path, args, job_env(user, home))
        sessions.append(session)
        assert session.wait() == 3, session.log()
    finally:
        gateway.close()
    assert len(gateway.calls) == 1  # a 4xx is not retried
    assert "refused the callback: 401" in session.log() and "callback token not valid" in session.log()
    assert not alive(session.pid_of("ssh"))


def test_the_session_ends_with_its_last_service(
    session_user: tuple[str, str], tmp_path: Path, keys: dict[str, Path], sessions: list[Session]
) -> None:
    user, home = session_user
    gateway = FakeGateway([(200, {"authorized_keys": [public(keys["mine"])]})])
    try:
        args = ["--gateway", gateway.url, "--services", "ssh", "--state-dir", f"{home}/.remotegpu/environments/e4"]
        session = Session(user, home, tmp_path, args, job_env(user, home))
        sessions.append(session)
        wait_for(gateway.answered, session)
        wait_running(session)
    finally:
        gateway.close()
    os.kill(session.pid_of("ssh"), signal.SIGKILL)
    assert session.wait(30) == 1, session.log()  # it failed: the job fails
    assert "the last service has exited" in session.log()


def test_no_token_no_session(session_user: tuple[str, str], tmp_path: Path, sessions: list[Session]) -> None:
    user, home = session_user
    env = {k: v for k, v in job_env(user, home).items() if k != "REMOTEGPU_SESSION_TOKEN"}
    args = ["--gateway", "http://127.0.0.1:9", "--services", "ssh", "--state-dir", f"{home}/.remotegpu/x"]
    session = Session(user, home, tmp_path, args, env)
    sessions.append(session)
    assert session.wait() == 2
    assert "REMOTEGPU_SESSION_TOKEN is not set" in session.log()


def test_services_do_not_outlive_a_killed_supervisor(
    session_user: tuple[str, str], tmp_path: Path, keys: dict[str, Path], sessions: list[Session]
) -> None:
    """SIGKILL (Slurm's, after KillWait) gives the supervisor no time: its services get SIGTERM from the kernel."""
    user, home = session_user
    gateway = FakeGateway([(200, {"authorized_keys": [public(keys["mine"])]})])
    try:
        args = ["--gateway", gateway.url, "--services", "ssh", "--state-dir", f"{home}/.remotegpu/environments/e5"]
        session = Session(user, home, tmp_path, args, job_env(user, home))
        sessions.append(session)
        wait_for(gateway.answered, session)
        wait_running(session)
    finally:
        gateway.close()
    sshd = session.pid_of("ssh")
    started = process_table()[sshd][1]
    session.process.kill()
    session.wait(10)
    deadline = time.monotonic() + 10
    while alive(sshd, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(sshd, started)
