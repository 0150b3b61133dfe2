"""The local Slurm cluster (deploy/dev/slurm/up, reused across runs) and throw-away POSIX users."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from slurm.cli import CliSlurmClient

REPO = Path(__file__).resolve().parents[3]


class Cluster(msgspec.Struct, frozen=True):
    env: dict[str, str]

    @property
    def conf(self) -> str:
        return self.env["SLURM_CONF"]

    @property
    def rest_url(self) -> str:
        return self.env["REMOTEGPU_SLURMRESTD_URL"]

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
