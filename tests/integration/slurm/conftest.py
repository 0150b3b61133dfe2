"""The local Slurm cluster (deploy/dev/slurm/up, reused across runs) and throw-away POSIX users."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from gateway.jobs.poller import Poller
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient
from slurm.rest import RestSlurmClient
from tests.cli_runner import user_venv
from tests.conftest import UserFactory, asgi_client
from tests.locks import held

REPO = Path(__file__).resolve().parents[3]


class Cluster(msgspec.Struct, frozen=True):
    env: dict[str, str]

    @property
    def conf(self) -> str:
        return self.env["SLURM_CONF"]

    @property
    def rest_url(self) -> str:
        return self.env["REMOTEGPU_SLURMRESTD_URL"]

    @property
    def jwt_key(self) -> Path:
        """The HS256 key slurmctld, slurmdbd and slurmrestd check tokens with."""
        return Path(self.conf).parents[1] / "state" / "jwt_hs256.key"

    def run(self, *argv: str, user: str | None = None) -> str:
        """Run a Slurm command (as ``user`` when given) and return its stdout."""
        command = ["runuser", "-u", user, "--", *argv] if user else list(argv)
        env = {"PATH": os.environ["PATH"], "SLURM_CONF": self.conf}
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60).stdout

    def add_member(self, user: str, account: str) -> None:
        """The account and the user's association with it, added until slurmdbd keeps them (it drops some of
        concurrent adds: slurm.client.until_kept), then known to slurmctld (``wait_association``)."""
        for attempt in range(8):
            self.run("sacctmgr", "-i", "add", "account", account)
            self.run("sacctmgr", "-i", "add", "user", user, f"account={account}")
            listed = self.run(
                "sacctmgr", "-n", "-P", "list", "assoc", f"user={user}", f"account={account}", "format=user"
            )
            if listed.strip():
                break
            time.sleep(0.1 * 2**attempt)
        self.wait_association(user, account)

    def _assoc_mgr(self, user: str, account: str) -> str:
        """slurmctld's view of the association ('' while it has none: scontrol then exits 1)."""
        try:
            return self.run("scontrol", "show", "assoc_mgr", f"users={user}", f"accounts={account}", "flags=assoc")
        except subprocess.CalledProcessError:
            return ""

    def wait_association(self, user: str, account: str, timeout: float = 20) -> None:
        """Until slurmctld's association manager has the association: a job submitted before that is held with
        reason InvalidAccount for a moment (seen beside other workers' association changes)."""
        deadline = time.monotonic() + timeout
        wanted = f"Account={account} UserName={user}("
        while wanted not in self._assoc_mgr(user, account):
            if time.monotonic() > deadline:
                raise AssertionError(f"slurmctld does not know {user}'s association with {account}")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    if os.geteuid() != 0:
        pytest.fail("the Slurm integration tests run as root (they start daemons and create POSIX users)")
    # one worker starts what is missing; the others find it running. Not while a serial test has a daemon
    # stopped (it holds "cluster" exclusively): this fixture is set up before the test's own turn is taken, and
    # a worker's first cluster test would otherwise start the stopped slurmctld again under it
    with held("cluster", shared=True), held("cluster-up"):
        out = subprocess.run([str(REPO / "deploy/dev/slurm/up")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        pytest.fail(f"deploy/dev/slurm/up failed:\n{out.stderr[-3000:]}")
    env = {}
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    return Cluster(env=env)


PosixUserFactory = Callable[[], str]


@pytest.fixture(scope="session")
def posix_user(slurm_cluster: Cluster) -> Iterator[PosixUserFactory]:
    """Create POSIX users (with home directories) for the session; removed at its end."""
    created: list[str] = []

    def make() -> str:
        name = f"rgt{uuid.uuid4().hex[:8]}"
        with held("passwd"):  # useradd refuses while another holds /etc/passwd's lock
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        created.append(name)
        return name

    yield make
    for name in created:
        with held("passwd"):
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def home_of(user: str) -> str:
    return pwd.getpwnam(user).pw_dir


@pytest.fixture
def slurm_account(slurm_cluster: Cluster) -> Iterator[str]:
    """A fresh Slurm account for one test, removed afterwards (with its associations)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": slurm_cluster.conf}
    # whatever the test left running under it (an environment's session, a fuzzer's jobs) ends with it
    live = ["squeue", "-h", "-A", name, "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED", "-o", "%i"]
    if subprocess.run(live, env=env, capture_output=True, text=True, check=False).stdout.strip():
        subprocess.run(["scancel", "--account", name], env=env, capture_output=True, check=False)
        for _ in range(60):  # gone before the account goes (slurmdbd 22.05 trips over accounts of live jobs)
            if not subprocess.run(live, env=env, capture_output=True, text=True, check=False).stdout.strip():
                break
            time.sleep(0.5)
    subprocess.run(
        ["sacctmgr", "-i", "remove", "account", name],
        env=env,
        capture_output=True,
        check=False,
    )


@pytest.fixture
def cli_client(slurm_cluster: Cluster) -> CliSlurmClient:
    return CliSlurmClient(slurm_conf=slurm_cluster.conf, timeout=30)


@pytest.fixture
async def rest_client(slurm_cluster: Cluster, cli_client: CliSlurmClient) -> AsyncIterator[RestSlurmClient]:
    """slurmrestd, with tokens from ``scontrol token``; account limits through the CLI (slurmrestd 22.05 cannot)."""
    client = RestSlurmClient(slurm_cluster.rest_url, slurm_conf=slurm_cluster.conf, timeout=30, limits=cli_client)
    yield client
    await client.close()


REMOTEGPU = [sys.executable, "-m", "gateway.cli"]


class Gateway:
    """A real ``remotegpu serve`` process (our child, stopped by PID) on the cluster, and the environment its
    commands share. ``restart()`` keeps the port, the database and the settings."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        with (self.logs / "serve.log").open("ab") as log:
            self._server = subprocess.Popen(
                [*REMOTEGPU, "serve", "--port", str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        for _ in range(150):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"remotegpu serve did not start: {(self.logs / 'serve.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.terminate()
            server.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(
        self, *args: str, cwd: str | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``remotegpu ARGS`` against this gateway's database and settings."""
        return subprocess.run(
            [*REMOTEGPU, *args],
            env={**self.env, **(extra_env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def token(self, user: str, *, admin: bool = False) -> str:
        """Create ``user`` (a POSIX user of the same name) and return a bearer token for them."""
        flags = ["--admin"] if admin else []
        made = self.command("admin", "create-user", user, *flags, extra_env={"REMOTEGPU_PASSWORD": f"{user}-password"})
        assert made.returncode == 0, made.stderr
        return self.command("token", "create", user).stdout.strip()

    @contextlib.contextmanager
    def worker(self, interval: float = 0.5) -> Iterator[subprocess.Popen[bytes]]:
        """``remotegpu worker`` running (polling every ``interval`` s) for the length of the block."""
        with (self.logs / "worker.log").open("ab") as log:
            process = subprocess.Popen(
                [*REMOTEGPU, "worker"],
                env={**self.env, "REMOTEGPU_POLL_INTERVAL_SECONDS": str(interval)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(10)


def port_range_start() -> int:
    """A block of 100 public ports for a gateway's environments, apart from other gateways': each pytest-xdist
    worker has its own 30 blocks (32000-34999 for gw0, 35000-37999 for gw1, ...)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return 32000 + (worker % 10) * 3000 + random.randrange(0, 30) * 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway(
    slurm_cluster: Cluster, make_database_url: Callable[[str], str], tmp_path: Path, gateway_env: dict[str, str]
) -> Iterator[Gateway]:
    """``remotegpu serve`` on a fresh SQLite database, pointed at the cluster; stopped by PID afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    ports = port_range_start()  # its environments' public ports: apart from other gateways'
    env.update(
        REMOTEGPU_DATABASE_URL=make_database_url("sqlite"),
        REMOTEGPU_SLURM_CONF=slurm_cluster.conf,
        REMOTEGPU_PORT_RANGE_START=str(ports),
        REMOTEGPU_PORT_RANGE_END=str(ports + 99),
        REMOTEGPU_SESSION_SUPERVISOR=str(user_venv() / "bin" / "remotegpu-session"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        REMOTEGPU_SECRET_KEYS=base64.b64encode(os.urandom(32)).decode(),  # storage sources' keys
        REMOTEGPU_NODE_BOOTSTRAP_SECRET=base64.b64encode(os.urandom(32)).decode(),  # nodes' one-time tokens
        REMOTEGPU_STORAGE_TIMEOUT_SECONDS="3",
    )
    env.update(gateway_env)
    gateway = Gateway(env, tmp_path).start()
    try:
        yield gateway
    finally:
        gateway.stop()


# --- the jobs API in-process, for the tests that drive it --------------------------------------------------

WS = "/api/v1/workspaces"


@pytest.fixture
def slurm_client(request: pytest.FixtureRequest) -> SlurmClient:
    """The CLI backend, or the one a test asks for with ``parametrize("slurm_client", [...], indirect=True)``."""
    backend: SlurmClient = request.getfixturevalue(f"{getattr(request, 'param', 'cli')}_client")
    return backend


BOTH_BACKENDS = pytest.mark.parametrize("slurm_client", ["cli", "rest"], indirect=True)


@pytest.fixture
async def api(
    settings: Settings, clean_database: Database, slurm_client: SlurmClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(settings, database=clean_database, slurm=slurm_client)) as client:
        yield client


async def make_team(
    api: httpx.AsyncClient, make_user: UserFactory, posix_user: PosixUserFactory, slurm_account: str
) -> dict[str, dict[str, str]]:
    """A workspace (Slurm account ``slurm_account``) with an owner and two members, each a real POSIX user."""
    root = await make_user("root", admin=True)
    people = {role: posix_user() for role in ("owner", "alice", "bob")}
    headers = {role: await make_user(name) for role, name in people.items()}
    r = await api.post(
        WS, json={"slug": "lab", "name": "Lab", "slurm_account": slurm_account, "owner": people["owner"]}, headers=root
    )
    assert r.status_code == 201, r.text
    for role in ("alice", "bob"):
        r = await api.post(f"{WS}/lab/members", json={"username": people[role]}, headers=headers["owner"])
        assert r.status_code == 201, r.text
    return {**headers, "names": people}


async def poll_until(
    poller: Poller, api: httpx.AsyncClient, job_id: str, headers: dict[str, str], states: set[str], within: float = 60
) -> dict[str, Any]:
    """Poll (one cycle at a time) until the job reaches one of ``states``; its last view."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        await poller.poll_once()
        job: dict[str, Any] = (await api.get(f"{WS}/lab/jobs/{job_id}", headers=headers)).json()
        if job["state"] in states:
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.5)
