"""Job spec -> batch script: a pure function, with every user string validated or quoted.

The script carries its resources as ``#SBATCH`` lines (so it reproduces with plain ``sbatch``), sets the
environment, lays out the VirtAI-compatible paths (``/gemini/...``, or the same layout under the working
directory where a node has no writable ``/gemini``), and runs the command, optionally in a container and/or
through torchrun on every node of the allocation.

Two rules keep user text away from a shell and from sbatch's directive parser: what goes on an ``#SBATCH``
line must match a character allow-list (no blanks, quotes, ``#`` or newlines), and everything else reaches
bash only through :func:`shlex.quote` (or verbatim inside a quoted here-document, for a user's own script).
Allow-lists are applied with ``fullmatch``: ``re``'s ``$`` also matches before a final newline.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from typing import Annotated, Literal

import msgspec

from slurm import environment
from slurm.arrays import task_ids

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_MOUNTS = 3
MAX_MEM_MIB = 2**31
MAX_TIME_MINUTES = 525_600
ContainerRuntime = Literal["pyxis", "apptainer"]

_SIMPLE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
_GPU_TYPE = re.compile(r"^[a-z0-9_.-]{1,32}$")
_COMMENT = re.compile(r"^[A-Za-z0-9_.:@+=/-]{1,256}$")
_NAME = re.compile(r"^[A-Za-z0-9_.+*:@=,%^~!?()\[\]{}/-]{1,64}$")
"""A job name as sbatch takes one on an ``#SBATCH`` line (``*JOB_NAME*``, ``run:1``), without what ends a word."""
_PARTITIONS = re.compile(r"^[A-Za-z0-9_.+-]{1,64}(,[A-Za-z0-9_.+-]{1,64}){0,31}$")
"""``-p gpu,debug``: the job runs in whichever of them can start it first."""
_GRES = re.compile(r"^[a-z][a-z0-9_.-]{0,31}(:[A-Za-z0-9_.-]{1,32})?(:\d{1,9})?$")
_HOSTS = re.compile(r"^[A-Za-z0-9_.,\[\]/-]{1,4096}$")
_TIME_SPEC = re.compile(r"^[A-Za-z0-9:+_-]{1,64}$")
"""``--begin``/``--deadline``: ``now+1hour``, ``2026-01-02T10:00``, ``16:00``, ``midnight``... (Slurm parses)."""
_MAIL_USER = re.compile(r"^[A-Za-z0-9._%+-]{1,128}(@[A-Za-z0-9.-]{1,253})?$")
_SIGNAL = re.compile(r"^((R|B|RB|BR):)?(SIG)?[A-Z0-9]{1,10}(@\d{1,5})?$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.&|*\[\]()!:,-]{1,1024}$")
_GPU_BIND = re.compile(r"^[A-Za-z0-9_:,.]{1,256}$")
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9*:,=]{1,64}$")
_LICENSES = re.compile(r"^[A-Za-z0-9_.:@,|-]{1,1024}$")
_GET_USER_ENV = re.compile(r"^(\d{1,9})?[SsLl]?$")
"""``--get-user-env``'s value: ``[timeout][mode]``, a timeout in seconds and S (short) or L (long); may be empty."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RESERVED_ENV = re.compile(
    r"^(SLURM_|SLURMD_|GEMINI_|REMOTEGPU_)|^(MASTER_ADDR|MASTER_PORT|NNODES|NPROC_PER_NODE|NODE_RANK)$"
)
_ARRAY = re.compile(r"^\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?$")
_DEP_ITEM = r"(singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+)"
_DEPENDENCY = re.compile(rf"^{_DEP_ITEM}([,?]{_DEP_ITEM})*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+#-]{0,255}$")
_OUTPUT_PATTERN = re.compile(r"^[A-Za-z0-9_./%+?:@=,~-]{1,4096}$")
_DIRECTIVE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]{0,4095}$")
_ERROR_AT = re.compile(r" - at `\$\.(\w+)")

DATASET_SLOTS = [("data-1", "GEMINI_DATA_IN1"), ("data-2", "GEMINI_DATA_IN2"), ("data-3", "GEMINI_DATA_IN3")]
MODEL_SLOTS = [("pretrain", "GEMINI_PRETRAIN"), ("pretrain2", "GEMINI_PRETRAIN2"), ("pretrain3", "GEMINI_PRETRAIN3")]
GEMINI = "/gemini"
_IN_CONTAINER_SCRIPT = f"{GEMINI}/.job-script"


class ScriptError(ValueError):
    """A spec that cannot be rendered safely; ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
GpuCount = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
MailType = Literal[
    "NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT", "TIME_LIMIT",
    "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS",
]  # fmt: skip


REFERENCE = re.compile(r"(?:[a-z][a-z0-9-]{1,30}[a-z0-9]/)?[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?::[1-9][0-9]{0,6})?")
"""A dataset or model of the gateway in ``datasets``/``models``: ``NAME``, ``NAME:VERSION``, ``WORKSPACE/NAME[:V]``
(one shared with the job's workspace); what is not an absolute path is one."""


class StageIn(msgspec.Struct, frozen=True, kw_only=True):
    """A mount the job fetches when it starts (a dataset or model version of the gateway), resolved at submission."""

    slot: str
    """``data-1``.. or ``pretrain``..: where it appears under the job's /gemini."""
    reference: str
    """What the request said (``imagenet:3``)."""
    version_id: int


class JobSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    command: list[str] | None = None
    """argv of the program to run; or ``script``, a bash script body."""
    script: str | None = None
    script_args: list[str] = msgspec.field(default_factory=list)
    """Arguments given to ``script`` (like ``sbatch script.sh ARGS``)."""
    nodes: PositiveInt | None = None
    """None: Slurm's default (one node), and no --nodes line, exactly as sbatch without -N."""
    max_nodes: PositiveInt | None = None
    """``-N nodes-max_nodes``: a range of node counts."""
    ntasks: PositiveInt | None = None
    ntasks_per_node: PositiveInt | None = None
    ntasks_per_socket: PositiveInt | None = None
    mincpus: PositiveInt | None = None
    """``--mincpus``: CPUs per node at least."""
    gpus_per_node: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """Per node: ``--gres=gpu[:type]:N`` or ``--gpus-per-node``, as :attr:`gpus_per_node_option` says."""
    gpus_per_node_option: Literal["gres", "gpus-per-node"] = "gres"
    """How the GPUs per node are asked of sbatch: ``--gres=gpu[:type]:N`` or ``--gpus-per-node=[type:]N`` (the
    same job, but sbatch tells the job ``SLURM_GPUS_PER_NODE`` only for the second)."""
    gpu_type: str | None = None
    """The type of every GPU form given (``a100`` in ``--gpus=a100:2``); None: any."""
    gpus: GpuCount | None = None
    """Per job: ``-G/--gpus``."""
    gpus_per_task: GpuCount | None = None
    cpus_per_gpu: PositiveInt | None = None
    mem_per_gpu_mib: Annotated[int, msgspec.Meta(ge=1, le=MAX_MEM_MIB)] | None = None
    ntasks_per_gpu: PositiveInt | None = None
    gpu_bind: str | None = None
    gres: list[str] = msgspec.field(default_factory=list)
    """Generic resources other than GPUs, as ``--gres`` items (``name[:type][:count]``)."""
    cpus_per_task: PositiveInt | None = None
    mem_mib: Annotated[int, msgspec.Meta(ge=0, le=MAX_MEM_MIB)] | None = None
    """``--mem``; 0: all of each node's memory (``--mem=0``)."""
    mem_per_cpu_mib: Annotated[int, msgspec.Meta(ge=1, le=MAX_MEM_MIB)] | None = None
    time_minutes: Annotated[int, msgspec.Meta(ge=1, le=MAX_TIME_MINUTES)] | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    """None: no ``--account`` line (the gateway passes the workspace's account to sbatch itself)."""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Variables the script sets for the program (whatever ``export`` says)."""
    environment: dict[str, str] | None = None
    """The submitter's environment, sbatch's own (slurm.environment); None: the gateway's minimal one."""
    export: str | None = None
    """sbatch's ``--export`` (``ALL``, ``NONE``, ``[ALL,]NAME[=value],...``), applied to ``environment``."""
    datasets: list[str] = msgspec.field(default_factory=list)
    """Up to 3 absolute paths, mounted read-only at /gemini/data-1..3."""
    models: list[str] = msgspec.field(default_factory=list)
    """Up to 3 absolute paths, mounted read-only at /gemini/pretrain, pretrain2, pretrain3."""
    stage_in: list[StageIn] = msgspec.field(default_factory=list)
    """The references among ``datasets`` and ``models``, resolved by the gateway: fetched at the job's start."""
    code_dir: str | None = None
    output_dir: str | None = None
    work_dir: str | None = None
    """``--chdir``; None: no line (sbatch's default, the submitting directory, or the caller's ``--chdir``)."""
    stdout: str | None = None
    stderr: str | None = None
    array: str | None = None
    dependency: str | None = None
    hold: bool = False
    comment: str | None = None
    """The user's ``--comment``. The gateway's own id goes ahead of it in the Slurm job's comment
    (``rgpu:<instance>:<id> <comment>``, gateway.jobs.origin), passed on sbatch's command line."""
    mail_type: list[MailType] = msgspec.field(default_factory=list)
    mail_user: str | None = None
    exclusive: Literal["node", "user", "mcs"] | None = None
    """``--exclusive`` (node), ``--exclusive=user|mcs``."""
    constraint: str | None = None
    signal: str | None = None
    requeue: bool | None = None
    """``--requeue`` / ``--no-requeue``; None: the cluster's default."""
    open_mode: Literal["append", "truncate"] | None = None
    nodelist: str | None = None
    exclude: str | None = None
    begin: str | None = None
    deadline: str | None = None
    time_min_minutes: Annotated[int, msgspec.Meta(ge=1, le=MAX_TIME_MINUTES)] | None = None
    reservation: str | None = None
    nice: Annotated[int, msgspec.Meta(ge=-2147483645, le=2147483645)] | None = None
    wckey: str | None = None
    distribution: str | None = None
    licenses: str | None = None
    kill_on_invalid_dep: bool | None = None
    get_user_env: str | None = None
    """``--get-user-env[=timeout][mode]`` (``60L``); ``""``: the option without a value; None: not given."""
    image: str | None = None
    launch: Literal["none", "torchrun"] = "none"
    nproc_per_node: PositiveInt | None = None
    """torchrun processes per node; defaults to the GPUs per node (at least 1)."""
    master_port: Annotated[int, msgspec.Meta(ge=1024, le=65535)] = 29500


class _Mount(msgspec.Struct, frozen=True):
    slot: str
    var: str
    source: str | None
    """None: an empty directory made for the job (code and output only)."""
    read_only: bool


# --- validation -----------------------------------------------------------------------------------------


def _simple(field: str, value: str | None) -> None:
    if value is not None and not _SIMPLE.fullmatch(value):
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


def _check_command(spec: JobSpec) -> None:
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
    if spec.script is not None:
        _clean_text("script", spec.script)
        if len(spec.script.encode()) > MAX_SCRIPT_BYTES:
            raise ScriptError("script", f"larger than {MAX_SCRIPT_BYTES} bytes")
    if spec.launch == "torchrun" and spec.script is not None:
        raise ScriptError("launch", "torchrun runs a Python program: give it as command, not as a script")
    if spec.launch == "none" and spec.nproc_per_node is not None:
        raise ScriptError("nproc_per_node", "only with launch=torchrun")


def _check_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key):
            raise ScriptError(f"env.{key}" if key.isprintable() else "env", "not a valid variable name")
        if _RESERVED_ENV.match(key):
            raise ScriptError(f"env.{key}", "reserved: set by Slurm or the gateway")
        _clean_text(f"env.{key}", value)


def _check_environment(spec: JobSpec) -> None:
    try:
        if spec.environment is not None:
            environment.check(spec.environment)
        environment.check_export(spec.export)
    except environment.EnvironmentRefused as exc:
        raise ScriptError(exc.field, exc.message) from None


def _check_paths(spec: JobSpec) -> None:
    staged = {s.slot for s in spec.stage_in}
    for field, paths, slots in (("datasets", spec.datasets, DATASET_SLOTS), ("models", spec.models, MODEL_SLOTS)):
        if len(paths) > MAX_MOUNTS:
            raise ScriptError(field, f"at most {MAX_MOUNTS}")
        for i, path in enumerate(paths):
            if path.startswith("/"):
                check_path(f"{field}[{i}]", path)
            elif not REFERENCE.fullmatch(path) or slots[i][0] not in staged:
                raise ScriptError(f"{field}[{i}]", "an absolute path, or a dataset/model NAME[:VERSION] of the gateway")
    for field, value in (("code_dir", spec.code_dir), ("output_dir", spec.output_dir)):
        if value is not None:
            check_path(field, value)
    if spec.work_dir is not None and not _DIRECTIVE_PATH.fullmatch(check_path("work_dir", spec.work_dir)):
        raise ScriptError("work_dir", "use a path of letters, digits and '_ . / + -'")
    for field, value in (("stdout", spec.stdout), ("stderr", spec.stderr)):
        if value is not None and (not _OUTPUT_PATTERN.fullmatch(value) or ".." in value.split("/")):
            raise ScriptError(field, "use a path of letters, digits and '_ . / % + ? : @ = , ~ -', without '..'")


def _check_pattern(field: str, value: str | None, pattern: re.Pattern[str], hint: str) -> None:
    if value is not None and not pattern.fullmatch(value):
        raise ScriptError(field, hint)


def _check_types(spec: JobSpec) -> None:
    """Types and numeric bounds: a JobSpec built in Python skips the checks decoding would make."""
    try:
        msgspec.convert(msgspec.structs.asdict(spec), JobSpec)
    except msgspec.ValidationError as exc:
        message, *_ = str(exc).split(" - at ")
        match = _ERROR_AT.search(str(exc))
        raise ScriptError(match[1] if match else "spec", message) from None


def _check_gpus(spec: JobSpec) -> None:
    """Resources sbatch would refuse together, refused with sbatch's words."""
    given = [f for f in ("mem_mib", "mem_per_cpu_mib", "mem_per_gpu_mib") if getattr(spec, f) is not None]
    if len(given) > 1:
        raise ScriptError(given[-1], "--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive.")
    if spec.gpus_per_task is not None and spec.gpus is None and spec.ntasks is None and not spec.ntasks_per_node:
        raise ScriptError("gpus_per_task", "--gpus-per-task used without either --gpus or -n/--ntasks is not allowed.")
    if spec.max_nodes is not None and spec.max_nodes < (spec.nodes or 1):
        raise ScriptError("max_nodes", "the maximum node count is below the minimum")
    for i, item in enumerate(spec.gres):
        if not _GRES.fullmatch(item) or item.split(":", 1)[0] == "gpu":
            raise ScriptError(f"gres[{i}]", "use name[:type][:count] for resources other than GPUs")


def _check_options(spec: JobSpec) -> None:
    for field in ("reservation", "wckey"):
        _simple(field, getattr(spec, field))
    checks: list[tuple[str, re.Pattern[str], str]] = [
        ("mail_user", _MAIL_USER, "not a mail address"),
        ("constraint", _CONSTRAINT, "use sbatch's syntax, e.g. a100&ib or [rack1|rack2]"),
        ("signal", _SIGNAL, "use [R|B:]SIGNAL[@seconds], e.g. B:USR1@60"),
        ("nodelist", _HOSTS, "use a host list, e.g. n[1-4],n7"),
        ("exclude", _HOSTS, "use a host list, e.g. n[1-4],n7"),
        ("begin", _TIME_SPEC, "use sbatch's syntax, e.g. now+1hour or 2026-01-02T10:00"),
        ("deadline", _TIME_SPEC, "use sbatch's syntax, e.g. now+1day or 2026-01-02T10:00"),
        ("gpu_bind", _GPU_BIND, "use sbatch's syntax, e.g. closest or map_gpu:0,1"),
        ("distribution", _DISTRIBUTION, "use sbatch's syntax, e.g. block:cyclic"),
        ("licenses", _LICENSES, "use sbatch's syntax, e.g. matlab:2,ansys@db:1"),
        ("get_user_env", _GET_USER_ENV, "use [timeout][S|L], e.g. 60L, or nothing"),
    ]
    for field, pattern, hint in checks:
        _check_pattern(field, getattr(spec, field), pattern, hint)


def validate(spec: JobSpec) -> None:
    """Raise ScriptError naming the first field that cannot be rendered safely."""
    _check_types(spec)
    _check_pattern("name", spec.name, _NAME, "use 1-64 letters, digits and '_ . + * : @ = , % ^ ~ ! ? ( ) [ ] { } / -'")
    for field in ("qos", "account"):
        _simple(field, getattr(spec, field))
    _check_pattern(
        "partition", spec.partition, _PARTITIONS, "use partition names (letters, digits, '_ . + -'), comma-separated"
    )
    _check_command(spec)
    _check_gpus(spec)
    _check_pattern("gpu_type", spec.gpu_type, _GPU_TYPE, "use lowercase letters, digits, '_', '.', '-'")
    _check_env(spec.env)
    _check_environment(spec)
    _check_paths(spec)
    _check_pattern("array", spec.array, _ARRAY, "use sbatch's syntax, e.g. 0-15 or 1,3,5%2")
    if spec.array is not None:
        try:
            task_ids(spec.array)
        except ValueError as exc:
            raise ScriptError("array", f"{exc}: ranges run upwards, steps are at least 1") from None
    _check_pattern("dependency", spec.dependency, _DEPENDENCY, "use sbatch's syntax, e.g. afterok:123 or singleton")
    _check_pattern("comment", spec.comment, _COMMENT, "use 1-256 letters, digits and '_ . : @ + = / -'")
    _check_options(spec)
    _check_pattern("image", spec.image, _IMAGE, "not a valid image reference")


# --- rendering ------------------------------------------------------------------------------------------


def directives(spec: JobSpec) -> list[str]:
    """``#SBATCH`` lines. Every value here was validated against a character allow-list."""
    ntasks_per_node = spec.ntasks_per_node or (1 if spec.launch == "torchrun" else None)
    typed = f"{spec.gpu_type}:{spec.gpus_per_node}" if spec.gpu_type else str(spec.gpus_per_node)
    as_gres = spec.gpus_per_node and spec.gpus_per_node_option == "gres"
    gres = [f"gpu:{typed}"] if as_gres else []
    values = _directive_values(spec, ntasks_per_node, ",".join(gres + spec.gres) or None)
    if spec.gpus_per_node and not as_gres:
        values.append(("gpus-per-node", typed))
    lines = [f"--{option}={value}" for option, value in values if value is not None and value != ""]
    flags = {
        "hold": spec.hold,
        "exclusive": spec.exclusive == "node",
        "requeue": spec.requeue is True,
        "no-requeue": spec.requeue is False,
        "get-user-env": spec.get_user_env == "",
    }
    lines += [f"--{flag}" for flag, given in flags.items() if given]
    return [f"#SBATCH {line}" for line in lines]


def _typed(prefix: str, gpu_type: str | None, count: int | None) -> str | None:
    """``[type:]count`` (with a prefix: ``gpu:a100:2``)."""
    if count is None:
        return None
    return f"{prefix}{gpu_type}:{count}" if gpu_type else f"{prefix}{count}"


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _directive_values(spec: JobSpec, ntasks_per_node: int | None, gres: str | None) -> list[tuple[str, object]]:
    return [
        ("job-name", spec.name),
        ("nodes", f"{spec.nodes or 1}-{spec.max_nodes}" if spec.max_nodes else spec.nodes),
        ("ntasks", spec.ntasks),
        ("ntasks-per-node", ntasks_per_node),
        ("ntasks-per-socket", spec.ntasks_per_socket),
        ("mincpus", spec.mincpus),
        ("gres", gres),
        ("gpus", _typed("", spec.gpu_type, spec.gpus)),
        ("gpus-per-task", _typed("", spec.gpu_type, spec.gpus_per_task)),
        ("cpus-per-gpu", spec.cpus_per_gpu),
        ("mem-per-gpu", f"{spec.mem_per_gpu_mib}M" if spec.mem_per_gpu_mib else None),
        ("ntasks-per-gpu", spec.ntasks_per_gpu),
        ("gpu-bind", spec.gpu_bind),
        ("cpus-per-task", spec.cpus_per_task),
        ("mem", None if spec.mem_mib is None else f"{spec.mem_mib}M" if spec.mem_mib else "0"),
        ("mem-per-cpu", f"{spec.mem_per_cpu_mib}M" if spec.mem_per_cpu_mib else None),
        ("time", spec.time_minutes),
        ("partition", spec.partition),
        ("qos", spec.qos),
        ("account", spec.account),
        ("chdir", spec.work_dir),
        ("output", spec.stdout),
        ("error", spec.stderr),
        ("array", spec.array),
        ("dependency", spec.dependency),
        ("comment", spec.comment),
        ("mail-type", ",".join(spec.mail_type)),
        ("mail-user", spec.mail_user),
        ("exclusive", spec.exclusive if spec.exclusive in ("user", "mcs") else None),
        ("constraint", spec.constraint),
        ("signal", spec.signal),
        ("open-mode", spec.open_mode),
        ("nodelist", spec.nodelist),
        ("exclude", spec.exclude),
        ("begin", spec.begin),
        ("deadline", spec.deadline),
        ("time-min", spec.time_min_minutes),
        ("reservation", spec.reservation),
        ("nice", spec.nice),
        ("wckey", spec.wckey),
        ("distribution", spec.distribution),
        ("licenses", spec.licenses),
        ("kill-on-invalid-dep", _yes_no(spec.kill_on_invalid_dep)),
        ("get-user-env", spec.get_user_env),
    ]


def _mounts(spec: JobSpec) -> list[_Mount]:
    mounts = [_Mount("code", "GEMINI_CODE", spec.code_dir, read_only=False)]
    for slots, sources in ((DATASET_SLOTS, spec.datasets), (MODEL_SLOTS, spec.models)):
        mounts += [
            _Mount(slot, var, src if src.startswith("/") else None, True)  # a reference: filled by the stage-in
            for (slot, var), src in zip(slots, sources, strict=False)
        ]
    return [*mounts, _Mount("output", "GEMINI_DATA_OUT", spec.output_dir, read_only=False)]


def _layout(mounts: list[_Mount], gemini_root: str) -> list[str]:
    """The job's own /gemini layout: ``<gemini_root>/.jobs/<job>`` where the node has a writable /gemini, else
    ``$PWD/.gemini/<job>``; ``<job>`` is ``ARRAYID_TASK`` for an array task, else the job id.

    Per job because jobs share nodes and working directories: one layout for all of them let a job read
    another's dataset, and a link land inside an earlier job's output directory (``ln -T`` never nests one).
    """
    root = shlex.quote(gemini_root)
    return [
        'REMOTEGPU_LAYOUT="${SLURM_JOB_ID:-$$}"',
        'if [ -n "${SLURM_ARRAY_TASK_ID-}" ]; then REMOTEGPU_LAYOUT="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; fi',
        f'if [ -d {root} ] && [ -w {root} ]; then GEMINI_ROOT={root}/.jobs/"$REMOTEGPU_LAYOUT"; '
        'else GEMINI_ROOT="$PWD/.gemini/$REMOTEGPU_LAYOUT"; fi',
        "export GEMINI_ROOT",
        *(f'export {m.var}="$GEMINI_ROOT/{m.slot}"' for m in mounts),
    ]


def _prepare(mounts: list[_Mount], staging: list[str]) -> list[str]:
    """The layout's directories and links, and the stage-in, on every node of the job: a shell function, run in
    the batch script on a one-node job, through one ``srun`` task per node on a bigger one (a node-local /gemini
    exists only where it was made). Each line returns on failure (``set -e`` does not hold inside a function
    called with ``||``); a failed stage-in ends the job with 75 (EX_TEMPFAIL) before the program runs."""
    body = ['    mkdir -p "$GEMINI_ROOT" || return 1']
    for m in mounts:
        if m.source is None:
            body.append(f'    mkdir -p "$GEMINI_ROOT/{m.slot}" || return 1')
        else:  # another node may have made the same link a moment ago (a shared working directory)
            body.append(
                f'    ln -sfnT {shlex.quote(m.source)} "$GEMINI_ROOT/{m.slot}" 2>/dev/null'
                f' || [ -L "$GEMINI_ROOT/{m.slot}" ] || return 1'
            )
    body += [f"    {line}" for line in staging]
    return [
        "remotegpu_prepare() {",
        *body,
        "}",
        'if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then',
        '    srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
        '--kill-on-bad-exit=1 bash -c "$(declare -f remotegpu_prepare); remotegpu_prepare" || exit $?',
        "else",
        "    remotegpu_prepare || exit $?",
        "fi",
    ]


def _heredoc_marker(text: str) -> str:
    """A delimiter that cannot occur as a line of ``text`` (derived from its hash, lengthened if needed)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    lines = set(text.splitlines())
    for size in range(16, 65, 8):
        marker = f"REMOTEGPU_SCRIPT_{digest[:size]}"
        if marker not in lines:
            return marker
    raise ScriptError("script", "cannot be embedded")  # would need a SHA-256 preimage


def _user_program(spec: JobSpec, in_container: bool) -> tuple[list[str], list[str]]:
    """Lines that prepare the program, and its argv as shell words (already quoted)."""
    if spec.script is None:
        return [], [shlex.quote(a) for a in spec.command or []]
    marker = _heredoc_marker(spec.script)
    setup = [
        'REMOTEGPU_USER_SCRIPT="$(mktemp)"',
        "trap 'rm -f \"$REMOTEGPU_USER_SCRIPT\"' EXIT",
        f"cat > \"$REMOTEGPU_USER_SCRIPT\" <<'{marker}'",
        spec.script.rstrip("\n"),
        marker,
    ]
    path = _IN_CONTAINER_SCRIPT if in_container else '"$REMOTEGPU_USER_SCRIPT"'
    # A script runs with its own interpreter line, as under sbatch; without one, with bash.
    if spec.script.startswith("#!"):
        setup.append('chmod u+x "$REMOTEGPU_USER_SCRIPT"')
        interpreter = []
    else:
        interpreter = ["bash"]
    return setup, [*interpreter, path, *(shlex.quote(a) for a in spec.script_args)]


def _container(spec: JobSpec, runtime: ContainerRuntime, mounts: list[_Mount]) -> tuple[list[str], list[str]]:
    """srun options and the words before the program: each /gemini slot bound in, GEMINI_* pointing there.

    The host layout holds symlinks to host paths, so binding it whole would leave dangling links inside;
    each slot is bound from where it really is instead, and the env vars say /gemini/... in the container.
    """
    binds = [f'"$GEMINI_ROOT/{m.slot}":{GEMINI}/{m.slot}' + (":ro" if m.read_only else "") for m in mounts]
    if spec.script is not None:
        binds.append(f'"$REMOTEGPU_USER_SCRIPT":{_IN_CONTAINER_SCRIPT}:ro')
    env = ["env", *(f"{m.var}={GEMINI}/{m.slot}" for m in mounts)]
    image = shlex.quote(spec.image or "")
    if runtime == "pyxis":
        return [f"--container-image={image}", f"--container-mounts={','.join(binds)}"], env
    return [], ["apptainer", "exec", "--nv", *(f"--bind {b}" for b in binds), image, *env]


def _run_lines(spec: JobSpec, runtime: ContainerRuntime | None, mounts: list[_Mount]) -> tuple[list[str], str]:
    """Lines that prepare the run, and the line that runs the program (its status is the job's)."""
    if spec.image is not None and runtime is None:
        raise ScriptError("image", "this cluster runs no container runtime; remove the image")
    in_container = spec.image is not None
    lines, argv = _user_program(spec, in_container)
    srun_options: list[str] = []
    prefix: list[str] = []
    if in_container:
        assert runtime is not None
        # Bind specs are comma/colon separated: a working directory holding either cannot be bound.
        lines.append(
            'case "$GEMINI_ROOT" in *[,:]*) echo "remotegpu: cannot bind $GEMINI_ROOT into a container'
            " (',' or ':' in the path)\" >&2; exit 2;; esac"
        )
        srun_options, prefix = _container(spec, runtime, mounts)
    if spec.launch == "torchrun":
        nproc = spec.nproc_per_node or max(spec.gpus_per_node, 1)
        launcher = (
            'export NODE_RANK="$SLURM_NODEID"; exec torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" '
            '--node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$@"'
        )
        lines += [
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f'export MASTER_ADDR MASTER_PORT={spec.master_port} NNODES="$SLURM_JOB_NUM_NODES" NPROC_PER_NODE={nproc}',
        ]
        # One torchrun per node; each learns its rank from Slurm. User arguments arrive as "$@".
        run = ["srun", *srun_options, "--ntasks-per-node=1", "--kill-on-bad-exit=1", *prefix]
        run += ["bash", "-c", shlex.quote(launcher), "torchrun", *argv]
    elif srun_options:  # pyxis needs a step; like a bare command, it runs once, on the first node
        run = ["srun", "--nodes=1", "--ntasks=1", *srun_options, *prefix, *argv]
    else:
        run = [*prefix, *argv]
    return lines, " ".join(run)


def render(
    spec: JobSpec,
    *,
    container_runtime: ContainerRuntime | None = None,
    sbatch_lines: bool = True,
    gemini_root: str = GEMINI,
    stage_in: StageInProgram | None = None,
) -> str:
    """The whole batch script.

    ``sbatch_lines=False`` leaves out the ``#SBATCH`` header (tests run the body with bash); ``gemini_root``
    is where the node's layout is looked for (tests point it at a temporary directory); ``stage_in``: the
    program that fetches ``spec.stage_in`` (needed when there is any).
    """
    validate(spec)
    check_path("gemini_root", gemini_root)
    if spec.stage_in and stage_in is None:
        raise ScriptError("datasets", "this gateway cannot fetch datasets into jobs (no stage-in program)")
    mounts = _mounts(spec)
    setup, run = _run_lines(spec, container_runtime, mounts)
    head = ["#!/bin/bash", *(directives(spec) if sbatch_lines else []), "# rendered by RemoteGPU Gateway", "set -e"]
    # The user's variables come after the layout, so that e.g. their PATH cannot break it.
    env = [f"export {key}={shlex.quote(value)}" for key, value in sorted(spec.env.items())]
    # This wrapper is a shell level the user's script does not have under plain sbatch: their program sees
    # the SHLVL slurmd gave the job, as it would there.
    shlvl = ['[ "${SHLVL-0}" -gt 0 ] 2>/dev/null && SHLVL=$((SHLVL - 1))']
    staging = _stage_in_lines(spec, stage_in) if stage_in is not None else []
    layout = [*_layout(mounts, gemini_root), *_prepare(mounts, staging)]
    return "\n".join([*head, *layout, *env, *setup, *shlvl, "set +e", run]) + "\n"


class StageInProgram(msgspec.Struct, frozen=True):
    """``remotegpu-stage-in`` as the nodes run it, and the gateway's URL as they reach it."""

    command: str
    gateway_url: str


def _stage_in_lines(spec: JobSpec, program: StageInProgram) -> list[str]:
    """Each referenced dataset or model fetched into its slot before the program runs; a failure ends the job
    with EX_TEMPFAIL (75) and says which, in the job's error output."""
    out = []
    for item in spec.stage_in:
        words = " ".join(
            shlex.quote(w) for w in (program.command, "--gateway", program.gateway_url, "--slot", item.slot)
        )
        failed = shlex.quote(f"remotegpu: could not fetch {item.reference} into /gemini/{item.slot}")
        out.append(f'{words} --dest "$GEMINI_ROOT/{item.slot}" || {{ echo {failed} >&2; return 75; }}')
    return out
