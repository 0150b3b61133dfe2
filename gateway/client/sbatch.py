"""sbatch-style options -> the body of ``POST /api/v1/workspaces/{ws}/jobs`` (a pure function)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import msgspec

from slurm.directives import DirectiveError, Options, memory, minutes, parse

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


def _export(value: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """``ALL``/``NONE`` plus ``VAR`` (taken from here) or ``VAR=value`` entries."""
    env: dict[str, str] = {}
    for item in (value or "ALL").split(","):
        if item in ("ALL", "NONE", ""):
            continue
        name, eq, val = item.partition("=")
        if eq:
            env[name] = val
        elif name in environ:
            env[name] = environ[name]
    return env


class JobRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What ``remotegpu submit`` sends: the job body, and where it goes.

    ``workspace`` comes from ``--workspace``; ``account`` from ``-A/--account``, which names a workspace by its
    Slurm account (scripts written for sbatch carry one); the CLI resolves either (or the default workspace).
    """

    workspace: str | None
    account: str | None
    body: dict[str, Any]


def job_request(
    script_path: str, script: str, argv: Sequence[str], *, cwd: str, environ: Mapping[str, str]
) -> JobRequest:
    """sbatch options and ``#SBATCH`` directives -> the API request (pure: reads no file, calls nothing)."""
    options, script_args = parse(script, argv)
    nodes = _int(options, "nodes")
    gpus_per_node, gpu_type = _gpus(options, nodes or 1)
    body: dict[str, Any] = {
        "name": options.get("job-name") or PurePosixPath(script_path).name or "job",
        "script": script,
        "script_args": script_args,
        "gpus_per_node": gpus_per_node,
        "env": _export(export if isinstance(export := options.get("export"), str) else None, environ),
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
