"""Request and response bodies of ``/api/v1/nodes``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from gateway.schemas import whole

NODE_NAME = r"[a-z0-9][a-z0-9-]{0,62}"
NodeName = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(NODE_NAME),
        max_length=63,
        description="the node's Slurm NodeName (also its Salt minion id): lowercase letters, digits, '-'",
        examples=["gpu-node-01"],
    ),
]
NewNodeName = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"(?!(?:runs|provision|bootstrap)(?!\n)$)" + NODE_NAME),
        max_length=63,
        description="the node's Slurm NodeName (also its Salt minion id): lowercase letters, digits, '-'; not "
        "'runs', 'provision' or 'bootstrap' (paths of this API)",
        examples=["gpu-node-01"],
    ),
]
Address = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]{2,45}\]?"),
        max_length=255,
        description="host name or IP address the node is reached at",
        examples=["10.0.3.17"],
    ),
]
Region = Annotated[str, msgspec.Meta(pattern=whole(r"[a-z0-9][a-z0-9_.-]{0,63}"), max_length=64, examples=["dc-1"])]
GpuType = Annotated[str, msgspec.Meta(pattern=whole(r"[a-z0-9][a-z0-9_.-]{0,31}"), max_length=32, examples=["a100"])]
STATE_IDS = (
    "remotegpu",
    "remotegpu.gpu",
    "remotegpu.munge",
    "remotegpu.slurmd",
    "remotegpu.gemini",
    "remotegpu.users",
    "remotegpu.exporter",
)
StateName = Literal[
    "remotegpu",
    "remotegpu.gpu",
    "remotegpu.munge",
    "remotegpu.slurmd",
    "remotegpu.gemini",
    "remotegpu.users",
    "remotegpu.exporter",
]
Reason = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[A-Za-z0-9][A-Za-z0-9 _.,:;/()@#+=-]{0,199}"),
        max_length=200,
        description="why (Slurm shows it as the node's reason): letters, digits, spaces and _.,:;/()@#+=-",
        examples=["replacing GPU 3"],
    ),
]
Status = Literal["queued", "running", "done", "failed"]


class GpuSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    type: GpuType
    count: Annotated[int, msgspec.Meta(ge=1, le=64)]


class NodeCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Register a node. ``gpus``: its GPUs (type and count), ``"detect"`` (the first run asks the node) or
    null (no GPUs)."""

    name: NewNodeName
    address: Address
    region: Region = "default"
    gpus: GpuSpec | Literal["detect"] | None = None


class NodeGpusOut(msgspec.Struct, kw_only=True):
    type: str | None
    count: int
    detect: bool
    """Found by asking the node (its ``gpus`` grain), and gres.conf written with AutoDetect=nvml."""


class SlurmGpusOut(msgspec.Struct, kw_only=True):
    type: str | None
    total: int
    allocated: int


class SlurmNodeOut(msgspec.Struct, kw_only=True):
    """The node as the poller last saw it in Slurm."""

    state: str
    reason: str | None
    partitions: list[str]
    cpus: int
    cpus_allocated: int
    memory_mib: int
    memory_allocated_mib: int
    gpus: list[SlurmGpusOut]


class LastRunOut(msgspec.Struct, kw_only=True):
    id: int
    status: Status
    test: bool
    states_changed: int
    states_failed: int
    finished_at: datetime | None


class NodeOut(msgspec.Struct, kw_only=True):
    name: str
    address: str
    region: str
    gpus: NodeGpusOut
    key_state: Literal["registered", "bootstrapped"]
    bootstrapped_at: datetime | None
    slurm: SlurmNodeOut | None
    """Null: Slurm does not know the node (yet), or no snapshot was read."""
    jobs: list[int]
    """Slurm ids of the gateway's jobs running on the node."""
    last_run: LastRunOut | None
    created_at: datetime


class NodesOut(msgspec.Struct, kw_only=True):
    items: list[NodeOut]
    snapshot_at: datetime | None
    """When the poller last read Slurm's nodes (null: never)."""
    stale: bool


class BootstrapTokenOut(msgspec.Struct, kw_only=True):
    token: str
    """Good once, for this node, until ``expires_at``; shown only now."""
    expires_at: datetime
    command: str
    """The shell command to run as root on the node."""


class NodeCreated(msgspec.Struct, kw_only=True):
    node: NodeOut
    bootstrap: BootstrapTokenOut | None
    """Null when the gateway has no ``node_bootstrap_secret`` or no salt-api to bootstrap nodes with."""


class ProvisionCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Run ``state.apply`` of ``states`` (default: all of ``remotegpu``) as a dry run (``test=True``) unless
    ``apply`` is true."""

    states: Annotated[list[StateName], msgspec.Meta(min_length=1, max_length=7)] = msgspec.field(
        default_factory=lambda: ["remotegpu"]
    )
    apply: bool = False


class ProvisionManyCreate(ProvisionCreate, forbid_unknown_fields=True, kw_only=True):
    """As for one node; ``nodes``: which (default: every registered node)."""

    nodes: Annotated[list[NodeName], msgspec.Meta(min_length=1, max_length=1000)] | None = None


class TargetOut(msgspec.Struct, kw_only=True):
    node: str
    status: Status
    jid: str | None
    retcode: int | None
    states_total: int
    states_changed: int
    states_failed: int
    error: str | None
    submitted_at: datetime | None
    finished_at: datetime | None


class RunOut(msgspec.Struct, kw_only=True):
    id: int
    states: list[str]
    test: bool
    status: Status
    attempts: int
    error: str | None
    targets: list[TargetOut]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class StateResultOut(msgspec.Struct, kw_only=True):
    node: str
    state_id: str
    sls: str | None
    function: str
    name: str
    result: bool | None
    """Salt's: true succeeded, false failed, null a dry run's pending change."""
    changed: bool
    comment: str
    changes: dict[str, Any]
    duration_ms: float | None
    run_num: int


class DrainBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Reason


class ResumeBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Reason | None = None
    """Recorded in the audit trail only (Slurm clears the reason)."""


class BootstrapExchange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    node: NodeName
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class BootstrapFile(msgspec.Struct, kw_only=True):
    path: str
    """Relative to the minion's configuration directory (``/etc/salt``)."""
    mode: str
    content: str


class BootstrapOut(msgspec.Struct, kw_only=True):
    minion_id: str
    master: str
    master_port: int
    publish_port: int
    master_pub: str
    master_finger: str
    """SHA-256 of the master key as the minion computes it (not ``salt-key -F``'s: saltstack/salt#69970)."""
    minion_pub: str
    minion_pem: str
    files: list[BootstrapFile]
    """What to write: the minion's key pair, the master's key, and ``minion.d/remotegpu.conf``."""


class BootstrapCommandOut(msgspec.Struct, kw_only=True):
    node: str
    command: str
    expires_at: datetime
