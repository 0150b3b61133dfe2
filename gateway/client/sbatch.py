"""sbatch-style options -> the body of ``POST /api/v1/workspaces/{ws}/jobs`` (a pure function)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from slurm.directives import DirectiveError, Options, memory, minutes, parse
from slurm.environment import crossing, submitted

_TYPED_COUNT = re.compile(r"^(?:(?P<type>[a-z0-9_.-]+):)?(?P<count>\d+)$")
_NODES = re.compile(r"^(?P<min>\d+)(?:-(?P<max>\d+))?$")


def _int(options: Options, name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.isdigit():
        raise DirectiveError(f"--{name} must be a whole number here, got {value!r}")
    return int(value)


def _typed_count(options: Options, name: str) -> tuple[int, str | None] | None:
    """``--gpus``-style ``[type:]count``."""
    value = options.get(name)
    if not isinstance(value, str):
        return None
    match = _TYPED_COUNT.match(value)
    if not match:
        raise DirectiveError(f"--{name}={value}: use [type:]count")
    return int(match["count"]), match["type"]


def _gres(value: str) -> tuple[tuple[int, str | None] | None, list[str]]:
    """``--gres`` items: the GPU one as (count, type), and the others as they are.

    ``gpu`` is one GPU, ``gpu:2`` two of any type, ``gpu:a100`` one A100, ``gpu:a100:2`` two: a last part of
    digits is always the count, never a type (``gpu:1`` is one untyped GPU).
    """
    gpu: tuple[int, str | None] | None = None
    others: list[str] = []
    for item in value.split(","):
        parts = item.split(":")
        if parts[0] != "gpu":
            others.append(item)
            continue
        if gpu is not None:
            raise DirectiveError(f"--gres={value}: give the GPUs once")
        count = parts.pop() if len(parts) > 1 and parts[-1].isdigit() else "1"
        if len(parts) > 2:
            raise DirectiveError(f"--gres={value}: use gpu[:type][:count]")
        gpu = (int(count), parts[1] if len(parts) == 2 else None)
    return gpu, others


def _gpus(options: Options, body: dict[str, Any]) -> None:
    """Each GPU form into its own field, as written (``--gres=gpu`` and ``--gpus-per-node`` are one: per node);
    one GPU type for all of them."""
    types: set[str] = set()
    per_node = _typed_count(options, "gpus-per-node")
    if per_node is not None:
        body["gpus_per_node_option"] = "gpus-per-node"
    if isinstance(gres := options.get("gres"), str):
        from_gres, others = _gres(gres)
        per_node = per_node or from_gres
        if others:
            body["gres"] = others
    for field, found in (
        ("gpus_per_node", per_node),
        ("gpus", _typed_count(options, "gpus")),
        ("gpus_per_task", _typed_count(options, "gpus-per-task")),
    ):
        if found is not None:
            body[field] = found[0]
            if found[1]:
                types.add(found[1])
    if len(types) > 1:
        raise DirectiveError(f"GPUs of more than one type ({', '.join(sorted(types))}) are not supported")
    if types:
        body["gpu_type"] = types.pop()


_NUMBERS = (
    ("ntasks", "ntasks"),
    ("ntasks-per-node", "ntasks_per_node"),
    ("ntasks-per-socket", "ntasks_per_socket"),
    ("mincpus", "mincpus"),
    ("cpus-per-task", "cpus_per_task"),
    ("cpus-per-gpu", "cpus_per_gpu"),
    ("ntasks-per-gpu", "ntasks_per_gpu"),
)
_TEXTS = (
    ("partition", "partition"),
    ("qos", "qos"),
    ("array", "array"),
    ("dependency", "dependency"),
    ("output", "stdout"),
    ("error", "stderr"),
    ("image", "image"),
    ("gpu-bind", "gpu_bind"),
    ("mail-user", "mail_user"),
    ("constraint", "constraint"),
    ("signal", "signal"),
    ("open-mode", "open_mode"),
    ("nodelist", "nodelist"),
    ("exclude", "exclude"),
    ("begin", "begin"),
    ("deadline", "deadline"),
    ("reservation", "reservation"),
    ("comment", "comment"),
    ("wckey", "wckey"),
    ("distribution", "distribution"),
    ("licenses", "licenses"),
)
"""Options passed through as they are: the gateway checks their values."""


def _options(options: Options, body: dict[str, Any]) -> None:
    for option, field in _NUMBERS:
        if (number := _int(options, option)) is not None:
            body[field] = number
    for option, field in (("mem", "mem_mib"), ("mem-per-cpu", "mem_per_cpu_mib"), ("mem-per-gpu", "mem_per_gpu_mib")):
        if isinstance(value := options.get(option), str):
            body[field] = memory(value, option)
    for option, field in (("time", "time_minutes"), ("time-min", "time_min_minutes")):
        if isinstance(value := options.get(option), str):
            body[field] = minutes(value)
    for option, field in _TEXTS:
        if isinstance(value := options.get(option), str):
            body[field] = value
    if isinstance(value := options.get("mail-type"), str):
        body["mail_type"] = [item.upper() for item in value.split(",")]
    if "nice" in options:
        nice = options["nice"]
        nice = nice if isinstance(nice, str) else "100"  # sbatch's --nice without a value
        try:
            body["nice"] = int(nice)
        except ValueError:
            raise DirectiveError(f"--nice={nice} must be a whole number") from None
    if "exclusive" in options:
        exclusive = options["exclusive"]
        body["exclusive"] = exclusive if isinstance(exclusive, str) else "node"
    if "requeue" in options or "no-requeue" in options:
        body["requeue"] = "requeue" in options
    if isinstance(value := options.get("kill-on-invalid-dep"), str):
        if value.lower() not in ("yes", "no"):
            raise DirectiveError(f"--kill-on-invalid-dep={value}: use yes or no")
        body["kill_on_invalid_dep"] = value.lower() == "yes"
    if "get-user-env" in options:
        value = options["get-user-env"]
        body["get_user_env"] = value if isinstance(value, str) else ""  # "": the option without a value


def _nodes(options: Options, body: dict[str, Any]) -> None:
    """``-N COUNT`` or ``-N MIN-MAX``."""
    if not isinstance(value := options.get("nodes"), str):
        return
    match = _NODES.match(value)
    if not match:
        raise DirectiveError(f"--nodes={value}: use a count or MIN-MAX")
    body["nodes"] = int(match["min"])
    if match["max"] is not None and match["max"] != match["min"]:
        body["max_nodes"] = int(match["max"])


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
    parsable: bool = False
    """``--parsable``: print only ``jobid`` (sbatch's ``jobid[;cluster]``; this gateway drives one cluster)."""
    wait: bool = False
    """``-W/--wait``: return when the job has ended, with its exit code."""
    test_only: bool = False
    """``--test-only``: ask Slurm when and where the job would start; submit nothing."""


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
    body: dict[str, Any] = {
        "name": options.get("job-name") or PurePosixPath(script_path).name or "job",
        "script": script,
        "script_args": script_args,
        **_environment(options, environ, read_file),
        "hold": "hold" in options,
    }
    _nodes(options, body)
    _gpus(options, body)
    _options(options, body)
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
        parsable="parsable" in options,
        wait="wait" in options,
        test_only="test-only" in options,
    )
