"""What a job asks for, in the TRES Slurm counts against a workspace's GrpTRES, and the up-front refusal of
a job that its quota could never let run (one that fits but must wait pends in Slurm, with its reason)."""

from __future__ import annotations

from gateway.errors import InvalidInput
from gateway.jobs.schemas import JobCreate
from gateway.workspaces.models import Quota
from gateway.workspaces.slurm_sync import grp_tres_for

_UNITS = {"cpu": "CPUs", "mem": "MiB of memory"}


def requested_tres(data: JobCreate) -> dict[str, tuple[int, str]]:
    """The least the job holds at once, by TRES, with the field that asks for it.

    As sbatch counts: one node and one task per node unless told, one CPU per task unless told; memory per
    node times nodes, or per CPU times CPUs (absent when neither is given: the cluster's default applies).
    Each task of an array is a job of its own: this is one task's.
    """
    nodes = data.nodes or 1
    tasks = data.ntasks or (nodes * data.ntasks_per_node if data.ntasks_per_node else nodes)
    cpus = tasks * (data.cpus_per_task or 1)
    tres: dict[str, tuple[int, str]] = {"cpu": (cpus, "cpus_per_task")}
    if data.mem_mib is not None:
        tres["mem"] = (data.mem_mib * nodes, "mem_mib")
    elif data.mem_per_cpu_mib is not None:
        tres["mem"] = (data.mem_per_cpu_mib * cpus, "mem_per_cpu_mib")
    if data.gpus_per_node:
        gpus = nodes * data.gpus_per_node
        tres["gres/gpu"] = (gpus, "gpus_per_node")
        if data.gpu_type:
            tres[f"gres/gpu:{data.gpu_type}"] = (gpus, "gpus_per_node")
    return tres


def check_quota(quota: Quota | None, data: JobCreate) -> None:
    """Raise InvalidInput, naming the field, for the first request that alone exceeds the quota's limit."""
    limits = grp_tres_for(quota)
    for name, (amount, field) in requested_tres(data).items():
        limit = limits.get(name)
        if limit is not None and amount > limit:
            what = _UNITS.get(name) or (f"{name.split(':', 1)[1]} GPUs" if ":" in name else "GPUs")
            raise InvalidInput(f"{amount} {what} requested; the workspace quota allows {limit}", field=field)
