from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.jobs.models import TrainingJob
from gateway.schemas import whole
from slurm import script as sbatch
from slurm.reasons import explain
from slurm.script import REFERENCE, JobSpec, MailType


def _body(pattern: re.Pattern[str]) -> str:
    return pattern.pattern.removeprefix("^").removesuffix("$")


def _allow_list(pattern: re.Pattern[str]) -> str:
    """One of slurm.script's allow-lists (``^...$``, applied with ``fullmatch``) as the document states it."""
    return whole(_body(pattern))


def _checked(pattern: str | None = None, **schema: Any) -> msgspec.Meta:
    """Rules :func:`slurm.script.validate` applies to a field (with a hint naming the syntax), stated in the
    document (``pattern``, ``minItems``...): published here, checked once, where the clear message is."""
    return msgspec.Meta(extra_json_schema={**schema, **({"pattern": pattern} if pattern is not None else {})})


NO_NUL = r"^[^\x00]*$"
_COMPONENT = r"/(?!\.\.?(?:/|$))"
PATH = whole(rf"(?:{_COMPONENT}[^/\x00-\x1f\x7f]+)+/?")
"""What :func:`slurm.script.check_path` takes: absolute, normalised (no ``.``, ``..`` or empty component, at
most one trailing ``/``), no control characters."""
WORK_DIR = whole(rf"(?:{_COMPONENT}[A-Za-z0-9_.+-]+)+/?|")
"""A path that can go on an ``#SBATCH --chdir`` line; empty: the home directory, as when it is left out."""
OUTPUT = whole(r"(?!(?:.*/)?\.\.(?:/|$))[A-Za-z0-9_./%+?:@=,~-]{1,4096}")
ENV_NAME = whole(
    r"(?!SLURM_|SLURMD_|GEMINI_|REMOTEGPU_)(?!(?:MASTER_ADDR|MASTER_PORT|NNODES|NPROC_PER_NODE|NODE_RANK)$)"
    r"[A-Za-z_][A-Za-z0-9_]{0,127}"
)
"""A variable the script may set: a shell name, not one Slurm or the gateway sets."""
ENVIRONMENT_NAME = whole(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_EXPORT_ITEM = r"[A-Za-z_][A-Za-z0-9_]{0,255}(?:=[^,\x00\n]*)?"
_ALL, _NONE = "[Aa][Ll][Ll]", "[Nn][Oo][Nn][Ee]"
EXPORT = whole(rf"(?!{_NONE},)(?:{_ALL}|{_NONE}|(?:{_ALL},)?{_EXPORT_ITEM}(?:,{_EXPORT_ITEM})*)")
"""sbatch's ``--export`` (``ALL`` and ``NONE`` in any case), without variables after ``NONE``."""
GRES = whole(rf"(?!gpu(?::|$))(?:{_body(sbatch._GRES)})")
"""A generic resource other than GPUs (those have fields of their own)."""
_DEP_ID = r"(?:\d+|[0-9a-f]{32})"
_DEP_ITEM = (
    rf"(?:singleton|(?:after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(?::{_DEP_ID}(?:_\d+)?(?:\+\d+)?)+)"
)
DEPENDENCY = whole(rf"{_DEP_ITEM}(?:[,?]{_DEP_ITEM})*")
"""sbatch's ``--dependency``, on Slurm job ids or the gateway's (of this workspace's jobs)."""


def _unset(*fields: str) -> dict[str, Any]:
    """Each field absent or null."""
    return {"properties": {field: {"type": "null"} for field in fields}}


_MEMORY = ("mem_mib", "mem_per_cpu_mib", "mem_per_gpu_mib")

Count = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Short = Annotated[str, msgspec.Meta(max_length=256)]
Arg = Annotated[str, msgspec.Meta(max_length=65536), _checked(NO_NUL)]
Argv = Annotated[list[Arg], msgspec.Meta(max_length=1024)]
Path = Annotated[str, msgspec.Meta(max_length=4096), _checked(PATH)]
MOUNT = whole(rf"(?:{_COMPONENT}[^/\x00-\x1f\x7f]+)+/?|{REFERENCE.pattern}")
"""An absolute path on the nodes, or a dataset/model of the gateway: ``NAME[:VERSION]``, ``WORKSPACE/NAME[:V]``."""
Mount = Annotated[str, msgspec.Meta(max_length=4096), _checked(MOUNT)]
Mounts = Annotated[list[Mount], _checked(maxItems=sbatch.MAX_MOUNTS)]
SIMPLE = _checked(_allow_list(sbatch._SIMPLE))
GpuType = Annotated[str, msgspec.Meta(max_length=32), _checked(_allow_list(sbatch._GPU_TYPE))]
Partition = Annotated[str, msgspec.Meta(max_length=2048), _checked(_allow_list(sbatch._PARTITIONS))]
Image = Annotated[str, msgspec.Meta(max_length=256), _checked(_allow_list(sbatch._IMAGE))]
EnvVars = Annotated[
    dict[Annotated[str, _checked(ENV_NAME)], Annotated[Text, _checked(NO_NUL)]], msgspec.Meta(max_length=256)
]
"""Variables a job's script sets (and an environment's sessions have)."""
"""1-64 letters, digits, '_', '.', '+' or '-' (a QOS, reservation or WCKey)."""


class JobCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A training job. Give ``command`` (argv) or ``script`` (a bash script body); ``gpus_per_task`` only with
    ``gpus``, ``ntasks`` or ``ntasks_per_node``."""

    json_schema_rules: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "required": ["command"],
                "properties": {
                    "command": {"type": "array"},
                    "script": {"type": "null"},
                    "script_args": {"maxItems": 0},
                },
            },
            {
                "required": ["script"],
                "properties": {"script": {"type": "string"}, "command": {"type": "null"}, "launch": {"const": "none"}},
            },
        ],
        "allOf": [
            {
                "anyOf": [
                    {"required": ["launch"], "properties": {"launch": {"const": "torchrun"}}},
                    _unset("nproc_per_node"),
                ]
            },
            {"anyOf": [_unset(*(m for m in _MEMORY if m != given)) for given in _MEMORY]},
        ],
    }
    """What slurm.script.validate refuses across fields, as the document states it: exactly one of ``command``
    and ``script`` (``script_args`` only with a script, torchrun only with a command), ``nproc_per_node`` only
    with torchrun, at most one of the memory sizes. (``gpus_per_task`` needs ``gpus`` or a task count too, as
    the description says: with that rule as well, schemathesis's generator outgrows its limit on intersections.)"""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64), _checked(_allow_list(sbatch._NAME))]
    command: Annotated[Argv, _checked(minItems=1)] | None = None
    script: Annotated[str, msgspec.Meta(max_length=1024 * 1024), _checked(NO_NUL)] | None = None
    script_args: Argv = msgspec.field(default_factory=list)
    nodes: Count | None = None
    """None: one node, as sbatch without -N."""
    max_nodes: Count | None = None
    """``-N nodes-max_nodes``."""
    ntasks: Count | None = None
    ntasks_per_node: Count | None = None
    ntasks_per_socket: Count | None = None
    mincpus: Count | None = None
    gpus_per_node: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """Per node (``--gres=gpu[:type]:N``, ``--gpus-per-node``)."""
    gpus_per_node_option: Literal["gres", "gpus-per-node"] = "gres"
    """How the GPUs per node are asked of sbatch: ``--gres=gpu[:type]:N`` or ``--gpus-per-node=[type:]N`` (the
    same job, but sbatch tells the job ``SLURM_GPUS_PER_NODE`` only for the second)."""
    gpu_type: GpuType | None = None
    """The type of each GPU form given; None: any."""
    gpus: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    """Per job (``-G/--gpus``)."""
    gpus_per_task: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    cpus_per_gpu: Count | None = None
    mem_per_gpu_mib: Annotated[int, msgspec.Meta(ge=1, le=2**31)] | None = None
    ntasks_per_gpu: Count | None = None
    gpu_bind: Annotated[Short, _checked(_allow_list(sbatch._GPU_BIND))] | None = None
    gres: Annotated[list[Annotated[Short, _checked(GRES)]], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    """Generic resources other than GPUs (``name[:type][:count]``)."""
    cpus_per_task: Count | None = None
    mem_mib: Annotated[int, msgspec.Meta(ge=0, le=2**31)] | None = None
    """``--mem``; 0: all of each node's memory (``--mem=0``)."""
    mem_per_cpu_mib: Annotated[int, msgspec.Meta(ge=1, le=2**31)] | None = None
    time_minutes: Annotated[int, msgspec.Meta(ge=1, le=525_600)] | None = None
    partition: Partition | None = None
    """One partition, or several comma-separated (``-p gpu,debug``)."""
    qos: Annotated[str, msgspec.Meta(max_length=64), SIMPLE] | None = None
    env: EnvVars = msgspec.field(default_factory=dict)
    """Variables the script sets for the program, whatever ``export`` says."""
    environment: (
        Annotated[
            dict[Annotated[str, _checked(ENVIRONMENT_NAME)], Annotated[str, _checked(NO_NUL)]],
            msgspec.Meta(max_length=4096),
        ]
        | None
    ) = None
    """The environment sbatch is run in, as if the user ran it (``remotegpu submit`` sends theirs); sbatch's
    ``--export=ALL`` gives it to the job. What never crosses is dropped (see the README). None: a minimal one."""
    export: Annotated[str, msgspec.Meta(max_length=65536), _checked(EXPORT)] | None = None
    """sbatch's ``--export``: ``ALL`` (default), ``NONE``, or ``[ALL,]NAME[=value],...``."""
    datasets: Mounts = msgspec.field(default_factory=list)
    models: Mounts = msgspec.field(default_factory=list)
    code_dir: Path | None = None
    output_dir: Path | None = None
    work_dir: Annotated[Text, _checked(WORK_DIR)] | None = None
    """Absolute; default: the user's home directory on the cluster."""
    stdout: Annotated[Text, _checked(OUTPUT)] | None = None
    stderr: Annotated[Text, _checked(OUTPUT)] | None = None
    array: Annotated[str, msgspec.Meta(max_length=256), _checked(_allow_list(sbatch._ARRAY))] | None = None
    dependency: Annotated[str, msgspec.Meta(max_length=1024), _checked(DEPENDENCY)] | None = None
    hold: bool = False
    image: Image | None = None
    launch: Literal["none", "torchrun"] = "none"
    nproc_per_node: Count | None = None
    master_port: Annotated[int, msgspec.Meta(ge=1024, le=65535)] = 29500
    comment: Annotated[Short, _checked(_allow_list(sbatch._COMMENT))] | None = None
    """The user's ``--comment`` (the Slurm job's comment starts with the gateway's id, then this)."""
    mail_type: Annotated[list[MailType], msgspec.Meta(max_length=16)] = msgspec.field(default_factory=list)
    mail_user: Annotated[Short, _checked(_allow_list(sbatch._MAIL_USER))] | None = None
    exclusive: Literal["node", "user", "mcs"] | None = None
    constraint: Annotated[Text, _checked(_allow_list(sbatch._CONSTRAINT))] | None = None
    signal: Annotated[Short, _checked(_allow_list(sbatch._SIGNAL))] | None = None
    requeue: bool | None = None
    """``--requeue`` (true) / ``--no-requeue`` (false); null: the cluster's default."""
    open_mode: Literal["append", "truncate"] | None = None
    nodelist: Annotated[Text, _checked(_allow_list(sbatch._HOSTS))] | None = None
    exclude: Annotated[Text, _checked(_allow_list(sbatch._HOSTS))] | None = None
    begin: Annotated[Short, _checked(_allow_list(sbatch._TIME_SPEC))] | None = None
    deadline: Annotated[Short, _checked(_allow_list(sbatch._TIME_SPEC))] | None = None
    time_min_minutes: Annotated[int, msgspec.Meta(ge=1, le=525_600)] | None = None
    reservation: Annotated[Short, SIMPLE] | None = None
    nice: Annotated[int, msgspec.Meta(ge=-2147483645, le=2147483645)] | None = None
    wckey: Annotated[Short, SIMPLE] | None = None
    distribution: Annotated[Short, _checked(_allow_list(sbatch._DISTRIBUTION))] | None = None
    licenses: Annotated[Text, _checked(_allow_list(sbatch._LICENSES))] | None = None
    kill_on_invalid_dep: bool | None = None
    get_user_env: Annotated[str, msgspec.Meta(max_length=16), _checked(_allow_list(sbatch._GET_USER_ENV))] | None = None
    """``--get-user-env[=timeout][mode]``: ``""`` for the option alone, else its value (``60L``); null: not given."""


def job_spec(data: JobCreate, work_dir: str) -> JobSpec:
    """The one way a request becomes the job's spec (in the working directory given, or the default one).

    Every field of the request is a field of the spec of the same name and default (a test pins the two
    together); the spec's own ``account`` is for scripts made outside the gateway (the gateway gives sbatch
    the workspace's). Values are checked once more by :func:`slurm.script.render`.
    """
    return msgspec.convert({**msgspec.structs.asdict(data), "work_dir": work_dir}, JobSpec)


def stored_spec(spec: Mapping[str, Any]) -> JobSpec:
    """A job's spec as stored (the ``jobs.spec`` column), read back typed."""
    return msgspec.convert(spec, JobSpec)


class ListedJob(msgspec.Struct):
    """A job's row as a list reads it: the columns of ``LISTED`` in that order, then its owner's name.

    Made positionally from each row (one C call), then read like a job: a SQLAlchemy Row's attributes cost
    several times as much to read, which a page of 50 jobs does 800 times.
    """

    id: str
    name: str
    state: str
    reason: str | None
    state_unknown: bool
    slurm_job_id: int | None
    spec: dict[str, Any]
    nodes: list[str]
    allocated: dict[str, Any]
    exit_code: int | None
    array_tasks: dict[str, int] | None
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    owner_name: str


LISTED = tuple(f for f in ListedJob.__struct_fields__ if f != "owner_name")
"""The job columns a list selects, in ListedJob's order."""


class JobOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    user: str
    state: str
    state_unknown: bool
    reason: str | None
    reason_detail: str | None
    """Slurm's reason in words, e.g. which quota a pending job waits for (slurm.reasons)."""
    slurm_job_id: int | None
    nodes: list[str]
    exit_code: int | None
    array_tasks: dict[str, int] | None
    """An array's tasks by state, e.g. ``{"COMPLETED": 3, "RUNNING": 1}``; null for a single job."""
    requested: dict[str, Any]
    allocated: dict[str, Any]
    created_at: datetime
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None

    @classmethod
    def of(cls, job: TrainingJob | ListedJob | SimpleNamespace, user: str) -> JobOut:
        """From a job's row (lists run this 50 times a page: one attribute read per field, no copies)."""
        spec = job.spec
        return cls(
            id=job.id,
            name=job.name,
            user=user,
            state=job.state,
            state_unknown=job.state_unknown,
            reason=job.reason,
            reason_detail=explain(job.reason) if job.state == "PENDING" else None,
            slurm_job_id=job.slurm_job_id,
            nodes=job.nodes,
            exit_code=job.exit_code,
            array_tasks=job.array_tasks,
            requested={key: value for key in REQUESTED if (value := spec.get(key)) is not None},
            allocated=job.allocated,
            created_at=job.created_at,
            submitted_at=job.submitted_at,
            started_at=job.started_at,
            ended_at=job.ended_at,
        )


REQUESTED = (
    "nodes",
    "ntasks",
    "ntasks_per_node",
    "gpus_per_node",
    "gpu_type",
    "cpus_per_task",
    "mem_mib",
    "mem_per_cpu_mib",
    "time_minutes",
    "partition",
    "qos",
    "array",
)
"""What of a job's spec shows as its requested resources."""


class TestOnlyOut(msgspec.Struct):
    """What ``sbatch --test-only`` answered, e.g. ``sbatch: Job 12 to start at 2026-01-02T10:00:00 using 1
    processors on nodes n1 in partition gpu``."""

    message: str


class JobEventOut(msgspec.Struct, kw_only=True):
    """One change of a job's state (``kind`` "state"), a cancel, hold or release someone asked for, or what its
    node's stage-in reported (``kind`` "stage-in", in ``reason``)."""

    id: int
    old_state: str | None
    new_state: str
    reason: str | None
    at: datetime
    kind: str = "state"
    actor: str | None = None
    """Who asked (requests); null for what Slurm did."""


class JobLogs(msgspec.Struct):
    path: str
    lines: list[str]
