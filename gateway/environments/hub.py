"""What a start from JupyterHub brings: the single-user server's variables, kept encrypted until its job has them.

The hub's spawner (spawners.gateway.GatewaySpawner) starts an environment with the variables JupyterHub gives a
single-user server (``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_SERVICE_URL``, ...). They are secrets of that one
session: stored with it encrypted (Fernet, with a key derived from this gateway instance's secret), handed to its
Slurm job like the callback token (slurm.client.Submission.secrets: never on a command line, never in the job's
recorded environment), again if the job is submitted again after a crash, and never shown by the API.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping

import msgspec
from cryptography.fernet import Fernet, InvalidToken

HUB_VARIABLE = re.compile(r"(JUPYTERHUB|JPY)_[A-Z0-9_]{1,64}")
"""The names a hub may pass: JupyterHub's own single-user variables, nothing that changes how the job runs."""
REQUIRED = ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_PREFIX")


def problems(env: Mapping[str, str]) -> str | None:
    """Why these variables are not a single-user server's launch (None when they are)."""
    bad = sorted(name for name in env if not HUB_VARIABLE.fullmatch(name))
    if bad:
        return f"only JUPYTERHUB_* and JPY_* variables, not {', '.join(bad[:5])}"
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        return f"missing {', '.join(missing)}"
    if any("\0" in value or len(value) > 8192 for value in env.values()):
        return "values must be NUL-free and at most 8192 characters"
    return None


def _fernet(instance_secret: str) -> Fernet:
    digest = hashlib.sha256(f"hub-env:{instance_secret}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(instance_secret: str, env: Mapping[str, str]) -> str:
    return _fernet(instance_secret).encrypt(msgspec.json.encode(dict(env))).decode()


def unseal(instance_secret: str, sealed: str) -> dict[str, str]:
    """The variables, or {} when they cannot be read (another instance's key): the session then runs without
    JupyterLab, which its log says, rather than the submission failing."""
    try:
        return msgspec.json.decode(_fernet(instance_secret).decrypt(sealed.encode()), type=dict[str, str])
    except (InvalidToken, msgspec.DecodeError, msgspec.ValidationError):
        return {}
