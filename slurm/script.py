"""Job spec -> batch script: a pure function, with every user string validated or quoted.

The script carries its resources as ``#SBATCH`` lines (so it reproduces with plain ``sbatch``), sets the
environment, lays out the VirtAI-compatible paths (``/gemini/...``, or the same layout under the working
directory where a node has no ``/gemini``), and runs the command, optionally in a container and/or through
torchrun on every node of the allocation.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from typing import Annotated, Literal

import msgspec

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_MOUNTS = 3
ContainerRuntime = Literal["pyxis", "apptainer"]

_SIMPLE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
_GPU_TYPE = re.compile(r"^[a-z0-9_.-]{1,32}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RESERVED_ENV = re.compile(
    r"^(SLURM_|SLURMD_|GEMINI_|REMOTEGPU_)|^(MASTER_ADDR|MASTER_PORT|NNODES|NPROC_PER_NODE|NODE_RANK)$"
)
_ARRAY = re.compile(r"^\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?$")
_DEPENDENCY = re.compile(
    r"^(singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+)"
    r"([,?](singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+))*$"
)
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+#-]{0,255}$")
_OUTPUT_PATTERN = re.compile(r"^[A-Za-z0-9_./%+-]{1,4096}$")

DATASET_SLOTS = [("data-1", "GEMINI_DATA_IN1"), ("data-2", "GEMINI_DATA_IN2"), ("data-3", "GEMINI_DATA_IN3")]
MODEL_SLOTS = [("pretrain", "GEMINI_PRETRAIN"), ("pretrain2", "GEMINI_PRETRAIN2"), ("pretrain3", "GEMINI_PRETRAIN3")]


class ScriptError(ValueError):
    """A spec that cannot be rendered safely; ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class JobSpec(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    command: list[str] | None = None
    """argv of the program to run; or ``script``, a bash script body."""
    script: str | None = None
    script_args: list[str] = msgspec.field(default_factory=list)
    """Arguments given to ``script`` (like ``sbatch script.sh ARGS``)."""
    nodes: PositiveInt | None = None
    """None: Slurm's default (one node), and no --nodes line, exactly as sbatch without -N."""
    ntasks: PositiveInt | None = None
    ntasks_per_node: PositiveInt | None = None
    gpus_per_node: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    gpu_type: str | None = None
    cpus_per_task: PositiveInt | None = None
    mem_mib: PositiveInt | None = None
    mem_per_cpu_mib: PositiveInt | None = None
    time_minutes: PositiveInt | None = None
    partition: str | None = None
    qos: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    datasets: list[str] = msgspec.field(default_factory=list)
    """Up to 3 absolute paths, mounted read-only at /gemini/data-1..3."""
    models: list[str] = msgspec.field(default_factory=list)
    """Up to 3 absolute paths, mounted read-only at /gemini/pretrain, pretrain2, pretrain3."""
    code_dir: str | None = None
    output_dir: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    array: str | None = None
    dependency: str | None = None
    image: str | None = None
    launch: Literal["none", "torchrun"] = "none"
    nproc_per_node: PositiveInt | None = None
    """torchrun processes per node; defaults to the GPUs per node (at least 1)."""
    master_port: Annotated[int, msgspec.Meta(ge=1024, le=65535)] = 29500


# --- validation -----------------------------------------------------------------------------------------


def _simple(field: str, value: str | None) -> None:
    if value is not None and not _SIMPLE.match(value):
        raise ScriptError(field, "use 1-64 letters, digits, '_', '.', '+' or '-'")


def _clean_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise ScriptError(field, "must not contain NUL characters")


def check_path(field: str, path: str) -> str:
    """An absolute, normalised path with no '..' and no control characters."""
    if not path.startswith("/"):
        raise ScriptError(field, "must be an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in path) or len(path) > 4096:
        raise ScriptError(field, "must not contain control characters")
    if ".." in path.split("/") or posixpath.normpath(path) != path.rstrip("/") or "//" in path:
        raise ScriptError(field, "must be normalised, without '..' or '//'")
    return path


def validate(spec: JobSpec) -> None:
    _simple("name", spec.name)
    _simple("partition", spec.partition)
    _simple("qos", spec.qos)
    if (spec.command is None) == (spec.script is None):
        raise ScriptError("command", "give exactly one of command or script")
    if spec.command is not None:
        if not spec.command:
            raise ScriptError("command", "must not be empty")
        for arg in spec.command:
            _clean_text("command", arg)
    if spec.script is None and spec.script_args:
        raise ScriptError("script_args", "only with a script")
    for arg in spec.script_args:
        _clean_text("script_args", arg)
    if spec.mem_mib is not None and spec.mem_per_cpu_mib is not None:
        raise ScriptError("mem_per_cpu_mib", "give mem or mem per CPU, not both")
    if spec.script is not None:
        _clean_text("script", spec.script)
        if len(spec.script.encode()) > MAX_SCRIPT_BYTES:
            raise ScriptError("script", f"larger than {MAX_SCRIPT_BYTES} bytes")
    if spec.gpu_type is not None and not _GPU_TYPE.match(spec.gpu_type):
        raise ScriptError("gpu_type", "use lowercase letters, digits, '_', '.', '-'")
    for key, value in spec.env.items():
        if not _ENV_NAME.match(key):
            raise ScriptError(f"env.{key}" if key.isprintable() else "env", "not a valid variable name")
        if _RESERVED_ENV.match(key):
            raise ScriptError(f"env.{key}", "reserved: set by Slurm or the gateway")
        _clean_text(f"env.{key}", value)
    for field, paths in (("datasets", spec.datasets), ("models", spec.models)):
        if len(paths) > MAX_MOUNTS:
            raise ScriptError(field, f"at most {MAX_MOUNTS}")
        for i, path in enumerate(paths):
            check_path(f"{field}[{i}]", path)
    for field in ("code_dir", "output_dir"):
        value = getattr(spec, field)
        if value is not None:
            check_path(field, value)
    for field in ("stdout", "stderr"):
        value = getattr(spec, field)
        if value is not None and (not _OUTPUT_PATTERN.match(value) or ".." in value.split("/")):
            raise ScriptError(field, "use a path of letters, digits and '_ . / % + -', without '..'")
    if spec.array is not None and not _ARRAY.match(spec.array):
        raise ScriptError("array", "use sbatch's syntax, e.g. 0-15 or 1,3,5%2")
    if spec.dependency is not None and not _DEPENDENCY.match(spec.dependency):
        raise ScriptError("dependency", "use sbatch's syntax, e.g. afterok:123 or singleton")
    if spec.image is not None and not _IMAGE.match(spec.image):
        raise ScriptError("image", "not a valid image reference")
    if spec.launch == "none" and spec.nproc_per_node is not None:
        raise ScriptError("nproc_per_node", "only with launch=torchrun")


# --- rendering ------------------------------------------------------------------------------------------


def directives(spec: JobSpec) -> list[str]:
    """``#SBATCH`` lines. Every value here was validated against a character allow-list."""
    lines = [f"--job-name={spec.name}"] + ([f"--nodes={spec.nodes}"] if spec.nodes is not None else [])
    if spec.ntasks is not None:
        lines.append(f"--ntasks={spec.ntasks}")
    ntasks_per_node = spec.ntasks_per_node or (1 if spec.launch == "torchrun" else None)
    if ntasks_per_node is not None:
        lines.append(f"--ntasks-per-node={ntasks_per_node}")
    if spec.gpus_per_node:
        gpu = f"gpu:{spec.gpu_type}:{spec.gpus_per_node}" if spec.gpu_type else f"gpu:{spec.gpus_per_node}"
        lines.append(f"--gres={gpu}")
    for option, value in (
        ("cpus-per-task", spec.cpus_per_task),
        ("mem", f"{spec.mem_mib}M" if spec.mem_mib else None),
        ("mem-per-cpu", f"{spec.mem_per_cpu_mib}M" if spec.mem_per_cpu_mib else None),
        ("time", spec.time_minutes),
        ("partition", spec.partition),
        ("qos", spec.qos),
        ("output", spec.stdout),
        ("error", spec.stderr),
        ("array", spec.array),
        ("dependency", spec.dependency),
    ):
        if value is not None:
            lines.append(f"--{option}={value}")
    return [f"#SBATCH {line}" for line in lines]


def _layout(spec: JobSpec) -> list[str]:
    """The /gemini layout; under the working directory when the node has none."""
    out = [
        'if [ -d /gemini ] && [ -w /gemini ]; then GEMINI_ROOT=/gemini; else GEMINI_ROOT="$PWD/gemini"; fi',
        'mkdir -p "$GEMINI_ROOT"',
    ]
    mounts = [(slot, var, src) for (slot, var), src in zip(DATASET_SLOTS, spec.datasets, strict=False)]
    mounts += [(slot, var, src) for (slot, var), src in zip(MODEL_SLOTS, spec.models, strict=False)]
    if spec.code_dir:
        mounts.append(("code", "GEMINI_CODE", spec.code_dir))
    for slot, var, src in mounts:
        out.append(f'ln -sfn {shlex.quote(src)} "$GEMINI_ROOT/{slot}"')
        out.append(f'export {var}="$GEMINI_ROOT/{slot}"')
    if spec.output_dir:
        out.append(f'ln -sfn {shlex.quote(spec.output_dir)} "$GEMINI_ROOT/output"')
    else:
        out.append('mkdir -p "$GEMINI_ROOT/output"')
    out.append('export GEMINI_DATA_OUT="$GEMINI_ROOT/output"')
    if not spec.code_dir:
        out += ['mkdir -p "$GEMINI_ROOT/code"', 'export GEMINI_CODE="$GEMINI_ROOT/code"']
    return out


def _heredoc_marker(text: str) -> str:
    """A delimiter that cannot occur as a line of ``text`` (derived from its hash, lengthened if needed)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    lines = set(text.splitlines())
    for size in range(16, 65, 8):
        marker = f"REMOTEGPU_SCRIPT_{digest[:size]}"
        if marker not in lines:
            return marker
    raise ScriptError("script", "cannot be embedded")  # would need a SHA-256 preimage


def _container(spec: JobSpec, runtime: ContainerRuntime | None, argv: list[str]) -> list[str]:
    if spec.image is None:
        return argv
    if runtime is None:
        raise ScriptError("image", "this cluster runs no container runtime; remove the image")
    if runtime == "apptainer":
        return ["apptainer", "exec", "--nv", "--bind", '"$GEMINI_ROOT":/gemini', shlex.quote(spec.image), *argv]
    return argv  # pyxis: the image goes on srun (see _run_lines)


def _run_lines(spec: JobSpec, runtime: ContainerRuntime | None) -> list[str]:
    lines: list[str] = []
    if spec.script is not None:
        marker = _heredoc_marker(spec.script)
        lines += [
            'REMOTEGPU_USER_SCRIPT="$(mktemp)"',
            f"cat > \"$REMOTEGPU_USER_SCRIPT\" <<'{marker}'",
            spec.script.rstrip("\n"),
            marker,
        ]
        # A script runs with its own interpreter line, as under sbatch; without one, with bash.
        interpreter = [] if spec.script.startswith("#!") else ["bash"]
        if not interpreter:
            lines.append('chmod u+x "$REMOTEGPU_USER_SCRIPT"')
        argv = [*interpreter, '"$REMOTEGPU_USER_SCRIPT"', *(shlex.quote(a) for a in spec.script_args)]
    else:
        argv = [shlex.quote(a) for a in spec.command or []]
    argv = _container(spec, runtime, argv)
    srun = ["srun"]
    if spec.image is not None and runtime == "pyxis":
        srun += [f"--container-image={shlex.quote(spec.image)}", '--container-mounts="$GEMINI_ROOT":/gemini']
    if spec.launch == "torchrun":
        nproc = spec.nproc_per_node or max(spec.gpus_per_node, 1)
        lines += [
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f'export MASTER_ADDR MASTER_PORT={spec.master_port} NNODES="$SLURM_JOB_NUM_NODES" NPROC_PER_NODE={nproc}',
            # One torchrun per node; each learns its rank from Slurm. User arguments arrive as "$@".
            " ".join(
                [
                    *srun,
                    "--ntasks-per-node=1",
                    "--kill-on-bad-exit=1",
                    "bash",
                    "-c",
                    shlex.quote(
                        'export NODE_RANK="$SLURM_NODEID"; exec torchrun --nnodes="$NNODES" '
                        '--nproc_per_node="$NPROC_PER_NODE" --node_rank="$NODE_RANK" '
                        '--master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$@"'
                    ),
                    "torchrun",
                    *argv,
                ]
            ),
        ]
    elif spec.image is not None and runtime == "pyxis":
        lines.append(" ".join([*srun, *argv]))
    else:
        lines.append(" ".join(argv))
    return lines


def render(spec: JobSpec, *, container_runtime: ContainerRuntime | None = None, sbatch_lines: bool = True) -> str:
    """The whole batch script. ``sbatch_lines=False`` leaves out the ``#SBATCH`` header (tests run the body)."""
    validate(spec)
    head = ["#!/bin/bash", *(directives(spec) if sbatch_lines else []), "# rendered by RemoteGPU Gateway", "set -e"]
    env = [f"export {key}={shlex.quote(value)}" for key, value in sorted(spec.env.items())]
    body = [*_layout(spec), "set +e", *_run_lines(spec, container_runtime)]
    return "\n".join([*head, *env, *body]) + "\n"
