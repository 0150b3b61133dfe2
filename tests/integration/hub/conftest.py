"""A real JupyterHub, with the configurable-http-proxy it starts, from ``deploy/jupyterhub/jupyterhub_config.py``,
in front of a real gateway (the ``gateway`` fixture: ``remotegpu serve`` on the local Slurm cluster).

``hub`` yields a ``Hub`` on free ports with its own state directory and an admin service token; ``login`` does a
person's form login. The hub is stopped by PID at the end, and its proxy must have gone with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.integration.slurm.conftest import Gateway, free_port, gateway, posix_user, slurm_account, slurm_cluster

__all__ = [
    "Hub",
    "HubPorts",
    "LoginFailed",
    "gateway",
    "login",
    "make_workspace",
    "posix_user",
    "slurm_account",
    "slurm_cluster",
]

REPO = Path(__file__).resolve().parents[3]
HUB_CONFIG = REPO / "deploy" / "jupyterhub" / "jupyterhub_config.py"
START_SECONDS = 90
STOP_SECONDS = 30


def proxy_command() -> str:
    """configurable-http-proxy: ``REMOTEGPU_HUB_PROXY_COMMAND``, else the one deploy/dev installs in var/node."""
    command = os.environ.get("REMOTEGPU_HUB_PROXY_COMMAND") or str(
        REPO / "var" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    )
    if not os.access(command, os.X_OK):
        pytest.fail(f"no configurable-http-proxy at {command}: deploy/dev/test installs it (ensure_chp)")
    return command


def process_running(pid: int) -> bool:
    """The process exists and is not a zombie (PID 1 here may reap late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class HubPorts(msgspec.Struct, frozen=True):
    public: int
    api: int
    proxy_api: int


class Hub:
    """A ``jupyterhub`` process (our child) and its state directory; ``restart()`` keeps the state and ports."""

    def __init__(self, *, url: str, env: dict[str, str], state: Path, logs: Path, service_token: str) -> None:
        self.url = url
        self.env = env
        self.state = state
        self.logs = logs
        self.service_token = service_token
        self.api = httpx.Client(
            base_url=f"{url}/hub/api", headers={"Authorization": f"token {service_token}"}, timeout=30
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "the hub is not running"
        return self._process.pid

    @property
    def proxy_pid(self) -> int | None:
        """The proxy the hub started (its pid file), while there is one."""
        try:
            return int((self.state / "proxy.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def client(self) -> httpx.Client:
        """A fresh cookie jar on the hub's public URL (for ``login``)."""
        return httpx.Client(base_url=self.url, timeout=30)

    def log_tail(self, chars: int = 4000) -> str:
        return self.logs.read_text(errors="replace")[-chars:] if self.logs.exists() else "(no log)"

    def start(self) -> None:
        assert self._process is None, "the hub runs already"
        with self.logs.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
                cwd=self.state,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                pytest.fail(f"the hub exited ({code}) while starting; its log ends:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(f"{self.url}/hub/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"the hub did not answer /hub/health within {START_SECONDS} s; its log ends:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the hub by PID and wait; the proxy it started must be gone too. Running servers stay."""
        if self._process is None:
            return
        process, self._process = self._process, None
        proxy = self.proxy_pid
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise AssertionError(
                f"the hub (pid {process.pid}) did not stop within {STOP_SECONDS} s of SIGTERM:\n{self.log_tail()}"
            ) from None
        if proxy is not None and not wait_gone(proxy, 10):
            os.kill(proxy, signal.SIGKILL)
            raise AssertionError(f"the hub's proxy (pid {proxy}) outlived the hub:\n{self.log_tail()}")

    def restart(self) -> None:
        """Stop the hub (its proxy goes with it) and start it again on the same state, ports and token."""
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.api.close()


@pytest.fixture
def hub_ports() -> HubPorts:
    return HubPorts(public=free_port(), api=free_port(), proxy_api=free_port())


@pytest.fixture
def gateway_env(hub_ports: HubPorts) -> dict[str, str]:
    """The gateway links environments to their servers on this hub."""
    return {"REMOTEGPU_JUPYTERHUB_URL": f"http://127.0.0.1:{hub_ports.public}"}


@pytest.fixture
def hub_env() -> dict[str, str]:
    """Extra environment for the hub (``REMOTEGPU_HUB_IDLE_TIMEOUT_SECONDS``, ...); override it in a module."""
    return {}


@pytest.fixture
def hub(gateway: Gateway, hub_ports: HubPorts, hub_env: dict[str, str], tmp_path: Path) -> Iterator[Hub]:
    state = tmp_path / "hub"
    state.mkdir(mode=0o700)
    service_token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMOTEGPU_", "JUPYTERHUB_", "CONFIGPROXY_"))}
    env.update(
        REMOTEGPU_URL=gateway.url,
        REMOTEGPU_HUB_IP="127.0.0.1",
        REMOTEGPU_HUB_PORT=str(hub_ports.public),
        REMOTEGPU_HUB_API_PORT=str(hub_ports.api),
        REMOTEGPU_HUB_PROXY_API_PORT=str(hub_ports.proxy_api),
        REMOTEGPU_HUB_STATE_DIR=str(state),
        REMOTEGPU_HUB_PROXY_COMMAND=proxy_command(),
        REMOTEGPU_HUB_SERVICE_TOKEN=service_token,
        JUPYTERHUB_CRYPT_KEY=secrets.token_hex(32),
    )
    env.update(hub_env)
    running = Hub(
        url=f"http://127.0.0.1:{hub_ports.public}",
        env=env,
        state=state,
        logs=tmp_path / "hub.log",
        service_token=service_token,
    )
    running.start()
    try:
        yield running
    finally:
        running.close()


def make_workspace(gateway: Gateway, owner: str, slurm_account: str, slug: str = "hub") -> dict[str, str]:
    """The workspace ``slug`` on ``slurm_account``, owned by ``owner``, made by the platform admin ``root``; the
    admin's headers, for what else the test does as them."""
    admin = {"Authorization": f"Bearer {gateway.token('root', admin=True)}"}
    made = httpx.post(
        gateway.url + "/api/v1/workspaces",
        json={"slug": slug, "name": slug.title(), "slurm_account": slurm_account, "owner": owner},
        headers=admin,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return admin


class LoginFailed(AssertionError):
    """The hub did not log the user in; ``response`` is its answer to the form."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"login refused: {response.status_code} {response.text[-500:]}")
        self.response = response


def login(client: httpx.Client, user: str, password: str) -> httpx.Client:
    """The login form as a browser sends it (its ``_xsrf`` and cookie); ``client`` then holds the hub's cookies."""
    form = client.get("/hub/login")
    assert form.status_code == 200, form.text
    found = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
    assert found, "the login form has no _xsrf field"
    answer = client.post(
        "/hub/login", data={"username": user, "password": password, "_xsrf": found.group(1)}, follow_redirects=False
    )
    if answer.status_code != 302 or "/hub/login" in answer.headers.get("location", "/hub/login"):
        raise LoginFailed(answer)
    return client
