"""The hub as deploy/jupyterhub/jupyterhub_config.py sets it up: it starts, answers, runs the idle culler with the
scopes it needs, logs users in with their gateway passwords, and stops (or restarts) leaving nothing behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.hub.conftest import Hub, LoginFailed, login, process_running, wait_gone
from tests.integration.slurm.conftest import Gateway, PosixUserFactory

pytestmark = pytest.mark.integration


def culler(hub: Hub) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = hub.api.get("/services").json()
    assert "idle-culler" in services, services
    return services["idle-culler"]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def wait_for_log(hub: Hub, pattern: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while pattern not in hub.logs.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{pattern!r} not in the hub's log:\n{hub.log_tail()}"
        time.sleep(0.2)


def test_hub_starts_from_the_deploy_config_and_stops_leaving_nothing(hub: Hub) -> None:
    assert httpx.get(f"{hub.url}/hub/health", timeout=10).status_code == 200
    info = hub.api.get("/info").json()
    assert info["spawner"]["class"] == "spawners.gateway.GatewaySpawner"
    assert info["authenticator"]["class"] == "spawners.auth.GatewayAuthenticator"

    service = culler(hub)
    assert service["pid"] > 0 and process_running(service["pid"])
    assert "jupyterhub_idle_culler" in command_line(service["pid"])
    assert service["command"][-2:] == ["--timeout=3600", "--cull-every=300"]
    # its first round lists the users with their servers: its role grants what that takes
    wait_for_log(hub, "200 GET /hub/api/users?state=[secret] (idle-culler@127.0.0.1)")
    assert "403" not in "\n".join(line for line in hub.log_tail(100_000).splitlines() if "idle-culler@" in line)

    proxy = hub.proxy_pid
    assert proxy is not None and "configurable-http-proxy" in command_line(proxy)
    pids = {"hub": hub.pid, "proxy": proxy, "culler": service["pid"]}
    hub.stop()
    left = {name: pid for name, pid in pids.items() if not wait_gone(pid, 10)}
    assert not left, f"still running after the hub stopped: {left}"
    assert not (hub.state / "proxy.pid").exists() and not (hub.state / "jupyterhub.pid").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{hub.url}/hub/health", timeout=5)


def test_restart_keeps_the_hubs_state_and_starts_a_new_proxy(hub: Hub) -> None:
    assert hub.api.post("/users/keepme").status_code == 201
    before = {"hub": hub.pid, "proxy": hub.proxy_pid, "culler": culler(hub)["pid"]}

    hub.restart()

    assert all(not process_running(pid) for pid in before.values() if pid), before
    assert hub.proxy_pid not in (None, before["proxy"])
    assert process_running(culler(hub)["pid"])
    assert hub.api.get("/users/keepme").status_code == 200  # the same database


def test_the_idle_timeout_sets_the_cullers_rounds_and_0_runs_no_culler(hub: Hub) -> None:
    hub.env["REMOTEGPU_HUB_IDLE_TIMEOUT_SECONDS"] = "120"
    hub.restart()
    assert culler(hub)["command"][-2:] == ["--timeout=120", "--cull-every=60"]

    hub.env["REMOTEGPU_HUB_IDLE_TIMEOUT_SECONDS"] = "0"
    hub.restart()
    assert "idle-culler" not in hub.api.get("/services").json()


def test_a_gateway_user_logs_in_with_their_gateway_password(
    hub: Hub, gateway: Gateway, posix_user: PosixUserFactory
) -> None:
    name = posix_user()
    gateway.token(name)  # the user, with the password f"{name}-password"

    with hub.client() as client, pytest.raises(LoginFailed) as refused:
        login(client, name, "not-the-password")
    assert refused.value.response.status_code == 403

    with hub.client() as client:
        login(client, name, f"{name}-password")
        assert "jupyterhub-hub-login" in client.cookies
        home = client.get("/hub/home")
        assert home.status_code == 200 and name in home.text

    user = hub.api.get(f"/users/{name}").json()
    token = user["auth_state"]["token"]  # the gateway token, kept (encrypted) for the spawner
    me = httpx.get(f"{gateway.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert me.status_code == 200 and me.json()["user"]["name"] == name

    # a token revoked in the gateway (`remotegpu token revoke`, or here the API) ends the hub login: the refresh
    # before a spawn fails, the hub refuses the spawn and drops the login cookie
    with hub.client() as client:
        login(client, name, f"{name}-password")
        token = hub.api.get(f"/users/{name}").json()["auth_state"]["token"]
        revoked = httpx.delete(f"{gateway.url}/api/v1/auth/tokens/", headers={"Authorization": f"Bearer {token}"})
        assert revoked.status_code == 204, revoked.text
        spawn = client.post(f"/hub/spawn/{name}/x", data={"_xsrf": client.cookies["_xsrf"]})
        assert spawn.status_code == 403 and "login again" in spawn.text, hub.log_tail()
        home = client.get("/hub/home", follow_redirects=False)
        assert home.status_code == 302 and "/hub/login" in home.headers["location"], home.headers

    # a user disabled in the gateway cannot log in, and one logged in before is logged out at the next refresh
    with hub.client() as client:
        login(client, name, f"{name}-password")
        admin = {"Authorization": f"Bearer {gateway.token('root', admin=True)}"}
        disabled = httpx.patch(f"{gateway.url}/api/v1/users/{name}", json={"disabled": True}, headers=admin)
        assert disabled.status_code == 200, disabled.text
        spawn = client.post(f"/hub/spawn/{name}/x", data={"_xsrf": client.cookies["_xsrf"]})
        assert spawn.status_code == 403, spawn.text[-500:]
    with hub.client() as client, pytest.raises(LoginFailed) as refused:
        login(client, name, f"{name}-password")
    assert refused.value.response.status_code == 403
