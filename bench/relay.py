"""Port-mapping relay throughput: 500 MB through a mapping vs straight to the service's port, in the same run.

1. raw: a TCP client copies SIZE bytes to a sink (upload) and from a source (download), each a process of its own,
   directly and through the relay (``gateway.environments.ports.Relay`` in a process of its own, on uvloop as
   ``remotegpu serve`` runs it); the relay's capacity and its CPU per GB.
2. scp (when OpenSSH's ``sshd`` and ``scp`` are installed): ``scp`` of a SIZE file to an unprivileged ``sshd`` on
   127.0.0.1, directly and through a mapping to it; the issue's goal is >= 0.9x. (The lead's benchmark does the same
   through a real environment on the cluster.)

    .venv/bin/python bench/relay.py [--size-mb 500] [--rounds 3] [--backend sqlite|postgresql] [--only raw,scp]
                                    [--data-path splice|buffer] [--loop uvloop|asyncio] [--check]

Ratios are relay / direct throughput, medians of the rounds (alternating direct and relayed). Note that on a
machine with few cores a raw loopback copy is bound by the CPU: the relay's work competes with the sender's and
the receiver's, so the raw ratio there says more about the cores than about the relay; its CPU per GB is the
figure to compare. ``--data-path buffer`` measures the relay's portable data path (recv_into/send through a
buffer of the process) instead of splice(2); ``--loop asyncio`` runs it on asyncio's own loop. The first line
gives the load average: the machine is shared, so compare runs at similar loads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import cpu_seconds, database  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.db import migrate  # noqa: E402
from gateway.environments.ports import SPLICE  # noqa: E402
from gateway.observability import configure_logging  # noqa: E402

CHUNK = 1 << 20
GOAL = 0.9


# --- the processes -----------------------------------------------------------------------------------------------


def service_main(port_file: Path) -> None:
    """The service behind the mapping: ``U`` then bytes to EOF -> their count back; ``D<size>`` -> size bytes."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port_file.write_text(str(listener.getsockname()[1]))
    buffer = bytearray(CHUNK)
    payload = memoryview(b"\0" * CHUNK)
    while True:
        conn, _ = listener.accept()
        with conn:
            mode = conn.recv(1)
            if mode == b"U":
                total = 0
                while n := conn.recv_into(buffer):
                    total += n
                conn.sendall(str(total).encode())
            elif mode == b"D":
                size = int(conn.recv(32).decode())
                sent = 0
                while sent < size:
                    sent += conn.send(payload[: min(CHUNK, size - sent)])
                conn.shutdown(socket.SHUT_WR)


def relay_main(url: str, data_path: str, loop: str) -> None:
    """The relay as ``remotegpu serve`` runs it (uvloop when installed, unless ``loop`` is asyncio), until SIGTERM."""
    if loop == "uvloop":
        with contextlib.suppress(ImportError):  # asyncio's own loop where uvloop is not installed
            import uvloop

            uvloop.install()
    from gateway.db.session import Database
    from gateway.environments.ports import Relay

    async def run() -> None:
        database = Database(url)
        settings = Settings(database_url=url, relay_host="127.0.0.1", log_level="WARNING")
        relay = Relay(database, settings, splice=data_path == "splice")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await relay.start()
        await stop.wait()
        await relay.stop()
        await database.dispose()

    asyncio.run(run())


@contextmanager
def process(argv: list[str], log: Path, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the block's duration, stopped by its PID."""
    with log.open("wb") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_port(port: int, child: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"{child.args!r} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s: {log.read_text()[-2000:]}")


# --- the database --------------------------------------------------------------------------------------------------


def make_mappings(url: str, targets: dict[str, int]) -> dict[str, int]:
    """An environment with one session and a mapping per service; public port by service."""
    from sqlalchemy.orm import Session

    from gateway.accounts.models import User
    from gateway.db.session import WRITE_OPTION, create_thread_engine
    from gateway.environments.models import Environment
    from gateway.environments.ports import map_service
    from gateway.jobs.models import ENVIRONMENT, TrainingJob
    from gateway.workspaces.models import Workspace

    engine = create_thread_engine(url).execution_options(**{WRITE_OPTION: True})
    with Session(engine) as session:
        user = User(name="bench", posix_name="bench")
        workspace = Workspace(slug="bench", name="Bench", slurm_account="bench", currency="EUR")
        session.add_all([user, workspace])
        session.flush()
        environment = Environment(workspace_id=workspace.id, user_id=user.id, name="bench", spec={})
        job = TrainingJob(
            workspace_id=workspace.id,
            user_id=user.id,
            name="bench",
            kind=ENVIRONMENT,
            spec={},
            script="",
            work_dir="/tmp",
            stdout_path="/tmp/out",
        )
        session.add_all([environment, job])
        session.flush()
        public = {}
        for service, port in targets.items():
            mapping = map_service(
                session,
                environment_id=environment.id,
                job_id=job.id,
                service=service,
                node=None,
                host="127.0.0.1",
                node_port=port,
                auto_release_hours=48,
                port_range=(20000, 29999),
            )
            public[service] = mapping.public_port
        session.commit()
    engine.dispose()
    return public


# --- the measurements ----------------------------------------------------------------------------------------------


def upload(port: int, size: int) -> float:
    """MB/s of sending ``size`` bytes to the sink (through ``port``) until it counted them all."""
    data = memoryview(b"\1" * CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        start = time.perf_counter()
        conn.sendall(b"U")
        sent = 0
        while sent < size:
            conn.sendall(data[: min(CHUNK, size - sent)])
            sent += min(CHUNK, size - sent)
        conn.shutdown(socket.SHUT_WR)
        answer = conn.recv(64)
        elapsed = time.perf_counter() - start
    if int(answer) != size:
        raise SystemExit(f"the sink counted {answer!r} bytes, not {size}")
    return size / elapsed / 1e6


def download(port: int, size: int) -> float:
    buffer = bytearray(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        start = time.perf_counter()
        conn.sendall(b"D" + str(size).encode())
        got = 0
        while n := conn.recv_into(buffer):
            got += n
        elapsed = time.perf_counter() - start
    if got != size:
        raise SystemExit(f"received {got} bytes, not {size}")
    return size / elapsed / 1e6


class Ssh:
    """An unprivileged sshd on 127.0.0.1 for scp, with keys of its own in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "ssh"
        self.dir.mkdir()
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        shutil.copy(self.dir / "client.pub", self.dir / "authorized_keys")
        self.port = free_port()
        (self.dir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"PidFile {self.dir / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        )
        if os.geteuid() == 0:  # sshd started by root wants its privilege separation directory (made by its service)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.argv = [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(self.dir / "sshd_config")]

    def scp(self, port: int, source: Path, target: Path) -> float:
        size = source.stat().st_size
        start = time.perf_counter()
        subprocess.run(
            [
                "scp",
                "-q",
                "-P",
                str(port),
                "-i",
                str(self.dir / "client"),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                str(source),
                f"{os.environ.get('USER') or 'root'}@127.0.0.1:{target}",
            ],
            check=True,
        )
        elapsed = time.perf_counter() - start
        if target.stat().st_size != size:
            raise SystemExit("scp copied a different size")
        target.unlink()
        return size / elapsed / 1e6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rounds(
    name: str, count: int, direct: Callable[[], float], relayed: Callable[[], float], relay_pid: int, size: int
) -> float:
    """Alternate direct and relayed runs; print medians, their ratio, and the relay's CPU per GB; the ratio."""
    direct_runs: list[float] = []
    relay_runs: list[float] = []
    cpu: list[float] = []
    for _ in range(count):
        direct_runs.append(direct())
        before = cpu_seconds(relay_pid) or 0.0
        relay_runs.append(relayed())
        cpu.append(((cpu_seconds(relay_pid) or 0.0) - before) / (size / 1e9))
    d, r = median(direct_runs), median(relay_runs)
    print(
        f"{name:<16} direct {d:8.0f} MB/s   relay {r:8.0f} MB/s   ratio {r / d:5.2f}   "
        f"relay CPU {median(cpu):.2f} s/GB   (rounds: {', '.join(f'{x:.0f}' for x in relay_runs)})",
        flush=True,
    )
    return r / d


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--only", default="raw,scp", help="comma-separated: raw, scp")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless the scp ratio is >= {GOAL}")
    parser.add_argument("--service", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--data-path",
        choices=("splice", "buffer"),
        default="splice" if SPLICE else "buffer",
        help="the relay's: splice(2) through a pipe (Linux), or a buffer of the process (elsewhere)",
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the relay's event loop")
    parser.add_argument("--relay", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    configure_logging("WARNING", "console")
    if args.service:
        service_main(args.service)
        return 0
    if args.relay:
        relay_main(args.relay, args.data_path, args.loop)
        return 0
    only = set(args.only.split(","))
    size = args.size_mb * 1_000_000
    have_ssh = bool(shutil.which("sshd") or Path("/usr/sbin/sshd").exists()) and bool(shutil.which("scp"))
    if "scp" in only and not have_ssh:
        print("scp: skipped (OpenSSH's sshd or scp is not installed)")
        only.discard("scp")
    me = [sys.executable, str(Path(__file__).resolve())]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-bench-")))
        url = stack.enter_context(database(args.backend, workdir))
        migrate.upgrade(url)
        port_file = workdir / "service.port"
        stack.enter_context(process([*me, "--service", str(port_file)], workdir / "service.log"))
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.02)
        targets = {"raw": int(port_file.read_text())}
        ssh = Ssh(workdir) if "scp" in only else None
        if ssh is not None:
            sshd = stack.enter_context(process(ssh.argv, workdir / "sshd.log"))
            wait_port(ssh.port, sshd, workdir / "sshd.log")
            targets["ssh"] = ssh.port
        public = make_mappings(url, targets)
        relay_argv = [*me, "--relay", url, "--data-path", args.data_path, "--loop", args.loop]
        relay = stack.enter_context(process(relay_argv, workdir / "relay.log"))
        for port in public.values():
            wait_port(port, relay, workdir / "relay.log")
        print(
            f"{args.size_mb} MB per copy, {args.rounds} rounds, {os.cpu_count()} CPUs, database {args.backend}, "
            f"relay: {args.data_path} on {args.loop}, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        raw_port = targets["raw"]
        pid_size = (relay.pid, size)
        if "raw" in only:
            relayed = public["raw"]
            rounds("raw upload", args.rounds, lambda: upload(raw_port, size), lambda: upload(relayed, size), *pid_size)
            rounds(
                "raw download",
                args.rounds,
                lambda: download(raw_port, size),
                lambda: download(relayed, size),
                *pid_size,
            )
        ratio = None
        if ssh is not None:
            shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir
            source = shm / f"relay-bench-{os.getpid()}.bin"
            target = shm / f"relay-bench-{os.getpid()}.copy"
            stack.callback(source.unlink, missing_ok=True)
            stack.callback(target.unlink, missing_ok=True)
            with source.open("wb") as out:
                block = os.urandom(CHUNK)
                for _ in range(size // CHUNK):
                    out.write(block)
                out.write(block[: size % CHUNK])
            direct_ssh, relayed_ssh = ssh.port, public["ssh"]
            ratio = rounds(
                "scp",
                args.rounds,
                lambda: ssh.scp(direct_ssh, source, target),
                lambda: ssh.scp(relayed_ssh, source, target),
                *pid_size,
            )
            print(f"scp goal >= {GOAL}: {'OK' if ratio >= GOAL else 'BELOW GOAL'}")
    if args.check and (ratio is None or ratio < GOAL):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
