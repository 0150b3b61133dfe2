"""sbatch-style options -> the body of ``POST /api/v1/workspaces/{ws}/jobs`` (a pure function)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from slurm.directives import DirectiveError, Options, memory, minutes, parse
from slurm.environment import crossing, submitted

_GPU = re.compile(r"^gpu(?::(?P<type>[a-z0-9_.-]+))?(?::(?P<count>\d+))?$")
_TYPED_COUNT = re.compile(r"^(?:(?P<type>[a-z0-9_.-]+):)?(?P<count>\d+)$")


def _int(options: Options, name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.isdigit():
        raise DirectiveError(f"--{name} must be a whole number here, got {value!r}")
    return int(value)


def _gpus(options: Options, nodes: int) -> tuple[int, str | None]:
    if isinstance(gres := options.get("gres"), str):
        match = _GPU.match(gres)
        if not match:
            raise DirectiveError(f"--gres={gres}: only gpu[:type][:count] is supported")
        return int(match["count"] or 1), match["type"]
    for name in ("gpus-per-node", "gpus"):
        if isinstance(value := options.get(name), str):
            match = _TYPED_COUNT.match(value)
            if not match:
                raise DirectiveError(f"--{name}={value}: use [type:]count")
            count = int(match["count"])
            if name == "gpus":
                if count % nodes:
                    raise DirectiveError(f"--gpus={value} does not divide evenly over {nodes} nodes")
                count //= nodes
            return count, match["type"]
    return 0, None


def _environment(
    options: Options, environ: Mapping[str, str], read_file: Callable[[str], bytes] | None
) -> dict[str, Any]:
    """The submitter's environment and ``--export`` (applied by sbatch), with ``--export-file``'s variables.

    sbatch merges an export file's ``NAME=value`` entries (NUL-separated) into the job's environment after
    ``--export``: here they join the environment sent, and their names an ``--export`` list.
    """
    export = options.get("export")
    export = export if isinstance(export, str) else None
    env = submitted(environ)
    if (umask := _umask()) is not None:
        env.setdefault("SLURM_UMASK", f"{umask:04o}")  # sbatch records the submitter's umask; ours is not theirs
    if isinstance(path := options.get("export-file"), str):
        if read_file is None:
            raise DirectiveError("--export-file: no file can be read here")
        source = f"/dev/fd/{path}" if path.isdigit() else path
        try:
            entries = read_file(source).split(b"\x00")
        except OSError as exc:
            raise DirectiveError(f"--export-file={path}: {exc.strerror}") from None
        listed = dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)
        names = [name for name in listed if crossing(name)]
        env.update({name: listed[name] for name in names})
        if export is not None and export.upper() == "NONE" and names:
            raise DirectiveError("--export=NONE with --export-file: not supported here")
        if export is not None and export.upper() != "ALL" and names:
            export = ",".join([export, *names])
    body: dict[str, Any] = {"environment": env}
    if export is not None:
        body["export"] = export
    return body


def _umask() -> int | None:
    """The process's umask without changing it (Linux's /proc), as sbatch reads it."""
    try:
        with Path("/proc/self/status").open() as status:
            line = next((x for x in status if x.startswith("Umask:")), None)
    except OSError:
        return None
    return int(line.split(":", 1)[1], 8) if line else None


class JobRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What ``remotegpu submit`` sends: the job body, and where it goes.

    ``workspace`` comes from ``--workspace``; ``account`` from ``-A/--account``, which names a workspace by its
    Slurm account (scripts written for sbatch carry one); the CLI resolves either (or the default workspace).
    """

    workspace: str | None
    account: str | None
    body: dict[str, Any]


def job_request(
    script_path: str,
    script: str,
    argv: Sequence[str],
    *,
    cwd: str,
    environ: Mapping[str, str],
    read_file: Callable[[str], bytes] | None = None,
) -> JobRequest:
    """sbatch options and ``#SBATCH`` directives -> the API request (reads only what ``read_file`` reads:
    ``--export-file``)."""
    options, script_args = parse(script, argv)
    nodes = _int(options, "nodes")
    gpus_per_node, gpu_type = _gpus(options, nodes or 1)
    body: dict[str, Any] = {
        "name": options.get("job-name") or PurePosixPath(script_path).name or "job",
        "script": script,
        "script_args": script_args,
        "gpus_per_node": gpus_per_node,
        **_environment(options, environ, read_file),
        "hold": "hold" in options,
    }
    if nodes is not None:
        body["nodes"] = nodes
    if gpu_type:
        body["gpu_type"] = gpu_type
    for option, field in (
        ("ntasks", "ntasks"),
        ("ntasks-per-node", "ntasks_per_node"),
        ("cpus-per-task", "cpus_per_task"),
    ):
        if (number := _int(options, option)) is not None:
            body[field] = number
    for option, field in (("mem", "mem_mib"), ("mem-per-cpu", "mem_per_cpu_mib")):
        if isinstance(value := options.get(option), str):
            body[field] = memory(value, option)
    if isinstance(value := options.get("time"), str):
        body["time_minutes"] = minutes(value)
    for option, field in (
        ("partition", "partition"),
        ("qos", "qos"),
        ("array", "array"),
        ("dependency", "dependency"),
        ("output", "stdout"),
        ("error", "stderr"),
        ("image", "image"),
    ):
        if isinstance(value := options.get(option), str):
            body[field] = value
    chdir = options.get("chdir")
    body["work_dir"] = str(PurePosixPath(cwd, chdir)) if isinstance(chdir, str) else cwd
    for option, field in (("dataset", "datasets"), ("model", "models")):
        values = options.get(option)
        if isinstance(values, list):
            body[field] = values
    workspace, account = options.get("workspace"), options.get("account")
    return JobRequest(
        workspace=workspace if isinstance(workspace, str) else None,
        account=account if isinstance(account, str) else None,
        body=body,
    )
