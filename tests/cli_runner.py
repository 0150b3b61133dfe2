"""Run the ``remotegpu`` CLI as a cluster user runs it: a non-root POSIX user, from a venv every user can execute.

The venv is ``REMOTEGPU_CLI_VENV`` if set, else the checkout's ``.venv``; it must be made from a Python that
non-root users can run (``deploy/dev/up`` builds it from /usr/bin/python3; one made from a pyenv Python under
/root is not). Tests fail, not skip, when there is none: a CLI nobody but root can start is the defect.
"""

from __future__ import annotations

import functools
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.locks import held

REPO = Path(__file__).resolve().parents[1]


@functools.cache
@functools.cache
def user_venv() -> Path:
    """The venv whose ``remotegpu`` a non-root user can run (probed once per test session)."""
    candidates = [Path(p) for p in (os.environ.get("REMOTEGPU_CLI_VENV"), str(REPO / ".venv")) if p]
    tried = []
    for venv in candidates:
        probe = subprocess.run(
            ["runuser", "-u", "nobody", "--", str(venv / "bin/python"), "-c", "import gateway.cli"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            return venv
        tried.append(f"{venv}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.fail(
        "no venv that non-root users can run (rebuild .venv with deploy/dev/up, or set REMOTEGPU_CLI_VENV to one "
        "made from /usr/bin/python3 with `pip install -e .`): " + "; ".join(tried)
    )


def user_env(home: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A login-like environment for the user: nothing of the test process's REMOTEGPU_* settings."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(Path(home, ".config")),
    }
    if "SLURM_CONF" in os.environ:
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return {**env, **(extra or {})}


def run_cli_as(
    user: str,
    *args: str,
    home: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``remotegpu ARGS`` as ``user`` (``runuser -u``), with ``env`` over a login-like environment."""
    command = ["runuser", "-u", user, "--", "env", "-i"]
    command += [f"{k}={v}" for k, v in user_env(home, env).items()]
    command += [str(user_venv() / "bin/remotegpu"), *args]
    return subprocess.run(
        command,
        cwd=cwd or home,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class UserCli:
    """The CLI of one POSIX user against one gateway: ``cli("jobs")``, ``cli("submit", ..., cwd=...)``."""

    def __init__(self, user: str, home: str, url: str | None = None) -> None:
        self.user, self.home, self.url = user, home, url

    def __call__(
        self, *args: str, cwd: str | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {"REMOTEGPU_URL": self.url} if self.url else {}
        return run_cli_as(self.user, *args, home=self.home, cwd=cwd, env={**env, **(extra_env or {})})


def operator_user() -> Iterator[tuple[str, str]]:
    """A throw-away non-root POSIX user with a home directory, (name, home); removed afterwards.

    For CLI tests outside the Slurm suite (whose ``posix_user`` fixture needs the cluster); use as a fixture.
    """
    if os.geteuid() != 0:
        pytest.fail("the CLI tests run as root (they create POSIX users to run the CLI as)")
    name = f"rgo{uuid.uuid4().hex[:8]}"
    with held("passwd"):  # useradd refuses while another holds /etc/passwd's lock
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        yield name, pwd.getpwnam(name).pw_dir
    finally:
        with held("passwd"):
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
