"""The dev stack's Salt (deploy/dev/salt/up): salt-master, minions n1 and n2, salt-api, started once and reused
across test processes and runs (like the Slurm cluster); deploy/dev/salt/down stops it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.locks import held

REPO = Path(__file__).resolve().parents[3]


class SaltStack(msgspec.Struct, frozen=True):
    """How to reach the dev Salt through salt-api, as the gateway does (HTTP; the gateway never imports Salt)."""

    api_url: str
    eauth: str
    username: str
    password: str
    minions: list[str]
    root: Path
    """The stack's own directory (REMOTEGPU_SALT_ROOT, /var/tmp/remotegpu-salt): venv, configs, keys, logs."""

    def __repr__(self) -> str:  # never the secret (pytest prints fixtures' values when a test fails)
        return f"SaltStack(api_url={self.api_url!r}, username={self.username!r}, password='***', root={self.root!r})"

    def node_root(self, minion: str) -> Path:
        """The scratch root the dev pillar gives ``minion`` (remotegpu:root) when a run's pillar names none."""
        return self.root / "nodes" / minion / "root"

    @property
    def salt_bin(self) -> Path:
        """The salt venv's bin directory (salt, salt-call, salt-key)."""
        return self.root / "venv" / "bin"

    @property
    def master_config_dir(self) -> Path:
        return self.root / "etc" / "master"

    def client(self, timeout: float = 120) -> httpx.Client:
        """An httpx client logged in to salt-api (its token in X-Auth-Token); the caller closes it."""
        client = httpx.Client(base_url=self.api_url, timeout=timeout, headers={"Accept": "application/json"})
        body = {"username": self.username, "password": self.password, "eauth": self.eauth}
        response = client.post("/login", json=body)
        response.raise_for_status()
        client.headers["X-Auth-Token"] = response.json()["return"][0]["token"]
        return client

    def call(
        self,
        fun: str,
        *,
        tgt: str | list[str] = "n1",
        arg: list[Any] | None = None,
        kwarg: dict[str, Any] | None = None,
        client: str = "local",
        timeout: float = 120,
    ) -> Any:
        """One salt-api low chunk; its first return (``{minion: result}`` for the local client)."""
        low: dict[str, Any] = {"client": client, "fun": fun}
        if client.startswith("local"):
            low["tgt"] = tgt
            if isinstance(tgt, list):
                low["tgt_type"] = "list"
        if arg:
            low["arg"] = arg
        if kwarg:
            low["kwarg"] = kwarg
        http = self.client(timeout)
        try:
            response = http.post("/", json=[low])
        finally:
            http.close()
        response.raise_for_status()
        return response.json()["return"][0]


@pytest.fixture(scope="session")
def salt_stack() -> SaltStack:
    if os.geteuid() != 0:
        pytest.fail("the Salt integration tests run as root (deploy/dev/salt/up starts minions that run as root)")
    # one test process starts what is missing; the others find it running
    with held("salt-up"):
        out = subprocess.run([str(REPO / "deploy/dev/salt/up")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        pytest.fail(f"deploy/dev/salt/up failed:\n{out.stderr[-3000:]}")
    env = {}
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    return SaltStack(
        api_url=env["REMOTEGPU_SALT_API_URL"],
        eauth=env["REMOTEGPU_SALT_API_EAUTH"],
        username=env["REMOTEGPU_SALT_API_USERNAME"],
        password=env["REMOTEGPU_SALT_API_PASSWORD"],
        minions=["n1", "n2"],
        root=Path(os.environ.get("REMOTEGPU_SALT_ROOT", "/var/tmp/remotegpu-salt")),
    )


SECRETS_LOCK = "salt-secrets-pillar"
"""Held by a test while the master's remotegpu_secrets.sls exists (every minion's pillar then has a munge key)."""


@contextlib.contextmanager
def secrets_pillar_away(salt_stack: SaltStack) -> Iterator[None]:
    """The master's secrets pillar (a dev gateway's provision runs leave it) set aside for the block."""
    secrets = salt_stack.root / "pillar/remotegpu_secrets.sls"
    aside = secrets.with_name(".remotegpu_secrets.aside")
    moved = secrets.exists()
    if moved:
        secrets.replace(aside)
    try:
        yield
    finally:
        if moved:
            aside.replace(secrets)
