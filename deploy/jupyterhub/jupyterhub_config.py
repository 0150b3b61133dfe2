"""JupyterHub in front of the RemoteGPU gateway: ``jupyterhub -f deploy/jupyterhub/jupyterhub_config.py``.

Logins are gateway logins (``spawners.auth.GatewayAuthenticator``), each server is a gateway environment
(``spawners.gateway.GatewaySpawner``: a Slurm job started by the gateway as the user, with the user's own token).
Everything site-specific comes from the environment:

variable                           default                    meaning
REMOTEGPU_URL                      http://127.0.0.1:8000      the gateway's base URL, as the hub reaches it
REMOTEGPU_HUB_IP                   127.0.0.1                  where the proxy's public side and the hub's API listen
REMOTEGPU_HUB_PORT                 8001                       the proxy's public port: the hub's URL for people
REMOTEGPU_HUB_API_PORT             8081                       the hub's own server (REST API, servers' callbacks)
REMOTEGPU_HUB_PROXY_API_PORT       8002                       the proxy's REST API (on 127.0.0.1)
REMOTEGPU_HUB_CONNECT_URL          http://<hub ip>:<api port> how the cluster's nodes reach the hub's API
REMOTEGPU_HUB_BASE_URL             /                          the hub's URL prefix
REMOTEGPU_HUB_STATE_DIR            the working directory      SQLite database, cookie secret, pid files, proxy token
REMOTEGPU_HUB_PROXY_COMMAND        configurable-http-proxy    the proxy (deploy/dev installs one in var/node)
REMOTEGPU_HUB_IDLE_TIMEOUT_SECONDS 3600                       servers idle longer are stopped (idle culler); 0: never
REMOTEGPU_HUB_NAMED_SERVER_LIMIT   10                         named servers (environments) per user; 0: no limit
REMOTEGPU_HUB_POLL_SECONDS         30                         how often the hub reads each server's environment state
REMOTEGPU_HUB_ADMIN_FROM_GATEWAY   true                       the gateway's platform admins are hub admins
REMOTEGPU_HUB_SERVICE_TOKEN        none                       token of the admin service remotegpu-admin (tests, bench)
JUPYTERHUB_CRYPT_KEY               required                   32 random bytes, hex: encrypts the gateway tokens

Restarts: the hub leaves the servers running when it stops (``cleanup_servers = False``) and finds them in its
database when it starts again; the Slurm jobs never notice. The proxy is the hub's child and stops with it
(``cleanup_proxy``): a proxy left running would not outlive the next start anyway, since a starting hub ends the
proxy named in its pid file and starts its own, then puts every running server's route back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_int(name: str, default: int) -> int:
    value = _env(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {value!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name, "true" if default else "false").strip().lower()
    if value not in {"true", "false", "1", "0", "yes", "no"}:
        raise SystemExit(f"{name} must be true or false, not {value!r}")
    return value in {"true", "1", "yes"}


def _secret_file(path: Path) -> str:
    """The secret kept in ``path``, made (readable by the owner only) the first time."""
    if not path.exists():
        old_umask = os.umask(0o077)
        try:
            with contextlib.suppress(FileExistsError), path.open("x") as f:  # another start may make it first
                f.write(secrets.token_hex(32) + "\n")
        finally:
            os.umask(old_umask)
    return path.read_text().strip()


def idle_culler(timeout_seconds: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The jupyterhub-idle-culler service and its role: servers idle longer than the timeout are stopped."""
    if timeout_seconds <= 0:
        return [], []
    every = max(1, min(300, timeout_seconds // 2))
    service = {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={timeout_seconds}",
            f"--cull-every={every}",
        ],
    }
    role = {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
    return [service], [role]


# A launcher's ``cmd &`` leaves SIGINT ignored, and the hub's managed services (the culler) inherit that: the
# hub stops them with SIGINT, and would wait 30 s before its SIGTERM. Let it through again (the hub installs
# its own handler once it runs).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

c = get_config()  # type: ignore[name-defined]  # noqa: F821  (JupyterHub's config loader defines it)

gateway_url = _env("REMOTEGPU_URL", "http://127.0.0.1:8000").rstrip("/")
hub_ip = _env("REMOTEGPU_HUB_IP", "127.0.0.1")
public_port = _env_int("REMOTEGPU_HUB_PORT", 8001)
api_port = _env_int("REMOTEGPU_HUB_API_PORT", 8081)
proxy_api_port = _env_int("REMOTEGPU_HUB_PROXY_API_PORT", 8002)
connect_url = _env("REMOTEGPU_HUB_CONNECT_URL", f"http://{hub_ip}:{api_port}")
state_dir = Path(_env("REMOTEGPU_HUB_STATE_DIR", Path.cwd())).resolve()
state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
idle_timeout = _env_int("REMOTEGPU_HUB_IDLE_TIMEOUT_SECONDS", 3600)
service_token = os.environ.get("REMOTEGPU_HUB_SERVICE_TOKEN", "")

# --- network ---
c.JupyterHub.ip = hub_ip
c.JupyterHub.port = public_port
c.JupyterHub.base_url = _env("REMOTEGPU_HUB_BASE_URL", "/")
c.JupyterHub.hub_ip = hub_ip
c.JupyterHub.hub_port = api_port
c.JupyterHub.hub_connect_url = connect_url  # the single-user servers on the nodes call the hub back here
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [_env("REMOTEGPU_HUB_PROXY_COMMAND", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.auth_token = _secret_file(state_dir / "proxy-token")

# --- state ---
c.JupyterHub.db_url = f"sqlite:///{state_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state_dir / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state_dir / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(state_dir / "proxy.pid")

# --- restarts leave the sessions alone ---
c.JupyterHub.cleanup_servers = False  # a hub stop must not stop (scancel) anyone's environment
c.JupyterHub.cleanup_proxy = True  # the proxy is the hub's own: it goes with it (see the docstring)

# --- logins: the gateway's users and passwords ---
c.JupyterHub.authenticator_class = "spawners.auth.GatewayAuthenticator"
c.GatewayAuthenticator.gateway_url = gateway_url
c.GatewayAuthenticator.admin_from_gateway = _env_bool("REMOTEGPU_HUB_ADMIN_FROM_GATEWAY", True)
c.Authenticator.enable_auth_state = True  # the user's gateway token, encrypted with JUPYTERHUB_CRYPT_KEY
c.Authenticator.allow_all = True  # the gateway decides who may log in

# --- servers: gateway environments, one per named server ---
c.JupyterHub.spawner_class = "spawners.gateway.GatewaySpawner"
c.GatewaySpawner.gateway_url = gateway_url
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = _env_int("REMOTEGPU_HUB_NAMED_SERVER_LIMIT", 10)
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300  # a Slurm queue, then JupyterLab's start on the node
c.Spawner.http_timeout = 120
c.Spawner.poll_interval = _env_int("REMOTEGPU_HUB_POLL_SECONDS", 30)  # the gateway's state: no Slurm call per poll

# --- services ---
services, roles = idle_culler(idle_timeout)
if service_token:
    services.append({"name": "remotegpu-admin", "api_token": service_token})
    roles.append({"name": "admin", "services": ["remotegpu-admin"]})
for service in services:
    if "command" in service:
        service["cwd"] = str(state_dir)  # where the culler looks for its own config file
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
