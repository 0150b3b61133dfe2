"""What the environments API takes and gives."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from gateway.environments.states import State
from gateway.jobs.schemas import EnvVars, GpuType, Image, Mounts, Partition
from gateway.jobs.schemas import Path as JobPath
from gateway.schemas import Description, whole

Service = Literal["ssh", "tensorboard", "jupyterlab"]
EnvironmentName = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[a-z0-9][a-z0-9_.-]{0,62}"),
        description="1-63 chars: lowercase letters, digits, '.', '_', '-' (a JupyterHub server name too)",
        examples=["dev"],
    ),
]
Services = Annotated[
    list[Service],
    msgspec.Meta(
        min_length=1,
        max_length=3,
        extra_json_schema={"uniqueItems": True},
        description="each at most once; JupyterLab runs when the session is started from JupyterHub",
    ),
]


class EnvironmentSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the next start asks of Slurm and runs (GPU/CPU/memory limits stay Slurm's GrpTRES)."""

    gpus: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """GPUs on the environment's node."""
    gpu_type: GpuType | None = None
    cpus: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    mem_mib: Annotated[int, msgspec.Meta(ge=1, le=2**31)] | None = None
    time_minutes: Annotated[int, msgspec.Meta(ge=1, le=525_600)] | None = None
    """Slurm's time limit of each start; None: the partition's default."""
    partition: Partition | None = None
    image: Image | None = None
    datasets: Mounts = msgspec.field(default_factory=list)
    models: Mounts = msgspec.field(default_factory=list)
    env: EnvVars = msgspec.field(default_factory=dict)
    services: Services = msgspec.field(default_factory=lambda: ["ssh"])
    """What the session runs; JupyterLab is the hub's single-user server (started from JupyterHub)."""
    tensorboard_logdir: JobPath | None = None
    """TensorBoard's log directory; None: the environment's output (``/gemini/output``)."""


class EnvironmentCreate(EnvironmentSpec, kw_only=True, forbid_unknown_fields=True):
    name: EnvironmentName
    description: Description = ""
    start: bool = True
    """Start it now (else it is made stopped)."""


HubVariables = Annotated[
    dict[
        Annotated[str, msgspec.Meta(pattern=whole(r"(JUPYTERHUB|JPY)_[A-Z0-9_]{1,64}"))],
        Annotated[str, msgspec.Meta(min_length=1, max_length=8192, pattern=whole(r"[^\x00]*"))],
    ],
    msgspec.Meta(
        max_length=64,
        extra_json_schema={"required": ["JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_PREFIX"]},
        description="JupyterHub's single-user variables, as Spawner.get_env() gives them",
    ),
]


class HubLaunch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A start from JupyterHub: the session runs the hub's single-user server (JupyterLab) with these."""

    env: HubVariables


class StartOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    jupyterhub: HubLaunch | None = None
    """Given by the hub's spawner only; never shown back (the hub's API token is among them)."""


class EnvironmentPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Name and description now; resources and services for the next start (a running session keeps its own)."""

    name: EnvironmentName | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    gpus: Annotated[int, msgspec.Meta(ge=0, le=64)] | msgspec.UnsetType = msgspec.UNSET
    gpu_type: GpuType | msgspec.UnsetType | None = msgspec.UNSET
    cpus: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | msgspec.UnsetType | None = msgspec.UNSET
    mem_mib: Annotated[int, msgspec.Meta(ge=1, le=2**31)] | msgspec.UnsetType | None = msgspec.UNSET
    time_minutes: Annotated[int, msgspec.Meta(ge=1, le=525_600)] | msgspec.UnsetType | None = msgspec.UNSET
    partition: Partition | msgspec.UnsetType | None = msgspec.UNSET
    image: Image | msgspec.UnsetType | None = msgspec.UNSET
    datasets: Mounts | msgspec.UnsetType = msgspec.UNSET
    models: Mounts | msgspec.UnsetType = msgspec.UNSET
    env: EnvVars | msgspec.UnsetType = msgspec.UNSET
    services: Services | msgspec.UnsetType = msgspec.UNSET
    tensorboard_logdir: JobPath | msgspec.UnsetType | None = msgspec.UNSET


class SshAccess(msgspec.Struct, kw_only=True):
    host: str
    port: int
    user: str
    command: str
    """Ready to paste: ``ssh -p PORT alice@gateway-host``."""
    config: str
    """A ``~/.ssh/config`` stanza (VS Code Remote-SSH, PyCharm)."""


class PortMappingOut(msgspec.Struct, kw_only=True):
    id: int
    service: str
    node: str | None
    node_port: int
    public_port: int
    created_at: datetime
    last_accessed_at: datetime
    auto_release_hours: int
    released_at: datetime | None
    release_reason: str | None


class SessionOut(msgspec.Struct, kw_only=True):
    """The environment's current (or last) start: its Slurm job."""

    job_id: str
    number: int
    slurm_job_id: int | None
    slurm_state: str
    node: str | None
    host: str | None
    """The address its services listen on, as the gateway reaches it (from the callback)."""
    hub: bool
    """Started from JupyterHub: it runs the hub's single-user server."""
    started_at: datetime | None
    ended_at: datetime | None
    reported_at: datetime | None


class EnvironmentOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    description: str
    user: str
    state: State
    reason: str | None
    """Why it is pending (Slurm's reason), failed or stopped (by whom, or Slurm's end state)."""
    spec: EnvironmentSpec
    starts: int
    session: SessionOut | None
    ssh: SshAccess | None
    """How to reach it over SSH, once running with a mapped port."""
    tensorboard_url: str | None
    jupyterlab_url: str | None
    """Its named server on the hub (opens or starts it there), when the environment has JupyterLab and the
    gateway knows its hub."""
    created_at: datetime
    updated_at: datetime


class EnvironmentEventOut(msgspec.Struct, kw_only=True):
    id: str
    """``e<n>`` for the environment's own events, ``j<n>`` for its sessions' state changes."""
    at: datetime
    kind: str
    message: str | None
    actor: str | None
    job_id: str | None


class CallbackIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a session's supervisor reports once its services listen."""

    node: Annotated[str, msgspec.Meta(pattern=whole(r"[A-Za-z0-9_.-]{1,64}"))]
    host: Annotated[str, msgspec.Meta(pattern=whole(r"[A-Za-z0-9_.:-]{1,255}"))]
    """The address the services listen on (the one the supervisor reached the gateway from)."""
    services: dict[Service, Annotated[int, msgspec.Meta(ge=1, le=65535)]]


class CallbackOut(msgspec.Struct, kw_only=True):
    """What the supervisor needs: the owner's public keys for sshd, TensorBoard's path prefix."""

    authorized_keys: list[str]
    tensorboard_path_prefix: str | None = None


def spec_dict(spec: EnvironmentSpec) -> dict[str, Any]:
    return msgspec.to_builtins(spec)  # type: ignore[no-any-return]
