"""The local Slurm cluster (deploy/dev/slurm/up, reused across runs) and throw-away POSIX users."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
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
from tests.conftest import UserFactory, asgi_client

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


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    if os.geteuid() != 0:
        pytest.fail("the Slurm integration tests run as root (they start daemons and create POSIX users)")
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
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        created.append(name)
        return name

    yield make
    for name in created:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def home_of(user: str) -> str:
    return pwd.getpwnam(user).pw_dir


@pytest.fixture
def slurm_account(slurm_cluster: Cluster) -> Iterator[str]:
    """A fresh Slurm account for one test, removed afterwards (with its associations)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(
        ["sacctmgr", "-i", "remove", "account", name],
        env={"PATH": os.environ["PATH"], "SLURM_CONF": slurm_cluster.conf},
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


class Gateway(msgspec.Struct, frozen=True):
    """A real ``remotegpu serve`` process on the cluster, and the environment its commands share."""

    url: str
    env: dict[str, str]
    logs: Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway(slurm_cluster: Cluster, make_database_url: Callable[[str], str], tmp_path: Path) -> Iterator[Gateway]:
    """``remotegpu serve`` on a fresh SQLite database, pointed at the cluster; stopped by PID afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(
        REMOTEGPU_DATABASE_URL=make_database_url("sqlite"),
        REMOTEGPU_SLURM_CONF=slurm_cluster.conf,
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [*REMOTEGPU, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(150):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"remotegpu serve did not start: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        yield Gateway(url=url, env=env, logs=tmp_path)
    finally:
        server.terminate()
        server.wait(10)


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
