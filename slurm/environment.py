"""The submitter's environment: what crosses from ``remotegpu submit`` to sbatch, and how it gets there.

sbatch's default is ``--export=ALL``: the job starts with the environment sbatch ran in. The gateway runs sbatch
for the user with a minimal environment of its own, so the CLI sends the user's (``os.environ``) and the gateway
gives it to sbatch as sbatch's own environment; ``--export`` is then applied by sbatch itself (CLI backend) or
exactly as sbatch applies it (REST backend, :func:`slurm.rest.submit_environment`).

What never crosses (:func:`crossing`), dropped without a word because a shell's environment is full of them:

* ``REMOTEGPU_*``: the CLI's own settings and secrets (``REMOTEGPU_TOKEN``, ``REMOTEGPU_PASSWORD``, ...);
* ``LD_PRELOAD``, ``LD_AUDIT``: libraries of the submitting machine loaded into the gateway host's sbatch;
* ``SBATCH_*`` and sbatch's ``SLURM_*`` input variables (``SLURM_CONF``, ``SLURM_DEBUG_FLAGS``,
  ``SLURM_EXIT_ERROR``, ``SLURM_STEP_KILLED_MSG_NODE_ID``): sbatch reads them as options, which would bypass
  the options the gateway checks (``SBATCH_EXPORT``, ``SBATCH_GET_USER_ENV``, ``SBATCH_WAIT``, ...); the
  gateway's ``SLURM_CONF`` names the cluster it drives. ``SLURM_UMASK`` crosses: sbatch takes it for the
  submitter's umask, which the CLI sends.
* names that are not shell variable names (exported bash functions, ``BASH_FUNC_name%%``) and the variables
  bash keeps read-only (``SHELLOPTS``, ``BASHOPTS``, ``UID``, ``EUID``, ``PPID``, ``BASH_VERSINFO``).

Values never reach a shell: the CLI backend feeds ``NAME=value`` entries, NUL-separated, on sbatch's stdin
ahead of the script to a fixed bash reader running as the user (:data:`READER`), which ``export``s each entry
as one word and then execs sbatch; the variables therefore never pass through the privileged helper
(``setpriv``/``runuser``/``sudo``), nor through anyone's ``ps`` (the command line).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

MAX_VARIABLES = 4096
MAX_BYTES = 1024 * 1024
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_DROPPED_PREFIXES = ("REMOTEGPU_", "SBATCH_")
DROPPED = frozenset(
    {
        "LD_PRELOAD",
        "LD_AUDIT",
        "SLURM_CONF",
        "SLURM_DEBUG_FLAGS",
        "SLURM_EXIT_ERROR",
        "SLURM_STEP_KILLED_MSG_NODE_ID",
        "SHELLOPTS",
        "BASHOPTS",
        "BASH_VERSINFO",
        "UID",
        "EUID",
        "PPID",
    }
)
_EXPORT_ITEM = r"[A-Za-z_][A-Za-z0-9_]{0,255}(=[^,\x00\n]*)?"
EXPORT = re.compile(rf"ALL|NONE|(ALL,)?{_EXPORT_ITEM}(,{_EXPORT_ITEM})*", re.IGNORECASE)
"""sbatch's ``--export`` values: ``ALL``, ``NONE``, or ``[ALL,]NAME[=value],...`` (values hold no comma)."""

READER = (
    "unset PATH LANG HOME USER LOGNAME SHELL SHLVL; "
    'while IFS= read -r -d \'\' kv && [ -n "$kv" ]; do export "$kv" || exit 1; done; '
    '"$0" "$@"; exit $?'
)
"""Run as ``bash -c READER SBATCH ARGS...`` in the submitter's directory (sbatch records it as
``SLURM_SUBMIT_DIR``): exports the entries on stdin up to an empty one, then runs ``SBATCH ARGS`` with the
rest of stdin (the script); bash reads a pipe a byte at a time, so nothing of the script is lost. Not with
``exec``: bash's exec lowers ``SHLVL``, which the job would see; and this bash's own ``SHLVL`` is unset first,
so a submitter without one (``env -i``) gives sbatch none, as their own sbatch would have."""


def submit_dir(environment: Mapping[str, str] | None) -> str:
    """Where sbatch runs: the submitter's ``PWD`` where this host has that directory and the gateway may enter it
    (a gateway that is not root enters it before sudo), else ``/``."""
    pwd = (environment or {}).get("PWD", "")
    return pwd if pwd.startswith("/") and Path(pwd).is_dir() and os.access(pwd, os.X_OK) else "/"


def crossing(name: str) -> bool:
    """Whether a variable of the submitter's environment is given to sbatch (see the module's docstring)."""
    return bool(NAME.fullmatch(name)) and name not in DROPPED and not name.startswith(_DROPPED_PREFIXES)


def submitted(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` that crosses (what ``remotegpu submit`` sends); values with NUL are dropped."""
    return {name: value for name, value in environ.items() if crossing(name) and "\x00" not in value}


class EnvironmentRefused(ValueError):
    """An environment or export the gateway refuses; ``field`` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check(environment: Mapping[str, str]) -> dict[str, str]:
    """What crosses of an API caller's environment: bad names are refused (400), the dropped list is dropped."""
    if len(environment) > MAX_VARIABLES:
        raise EnvironmentRefused("environment", f"at most {MAX_VARIABLES} variables")
    size = 0
    for name, value in environment.items():
        if not NAME.fullmatch(name):
            raise EnvironmentRefused(
                f"environment.{name}" if name.isprintable() else "environment", "not a valid variable name"
            )
        if "\x00" in value:
            raise EnvironmentRefused(f"environment.{name}", "must not contain NUL characters")
        size += len(name) + len(value.encode()) + 2
    if size > MAX_BYTES:
        raise EnvironmentRefused("environment", f"larger than {MAX_BYTES} bytes")
    return {name: value for name, value in environment.items() if crossing(name)}


def check_export(export: str | None) -> None:
    if export is not None and not EXPORT.fullmatch(export):
        raise EnvironmentRefused("export", "use sbatch's syntax: ALL, NONE or [ALL,]NAME[=value],...")
    if export is not None and export.upper().startswith("NONE,"):
        raise EnvironmentRefused("export", 'no variables with "NONE" (as sbatch)')


def block(environment: Mapping[str, str], forced: Mapping[str, str]) -> bytes:
    """The NUL-separated entries :data:`READER` reads, ``forced`` last (it wins), ended by an empty entry."""
    entries = {**submitted(environment), **forced}
    return b"".join(f"{name}={value}".encode() + b"\x00" for name, value in entries.items()) + b"\x00"
