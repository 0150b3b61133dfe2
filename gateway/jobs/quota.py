"""What a job asks for, in the TRES Slurm counts against a workspace's GrpTRES, and the up-front refusal of
a job that its quota could never let run (one that fits but must wait pends in Slurm, with its reason)."""

from __future__ import annotations

from gateway.errors import InvalidInput
from gateway.jobs.schemas import JobCreate
from gateway.workspaces.models import Quota
from gateway.workspaces.slurm_sync import grp_tres_for
from slurm import resources
from slurm.resources import Request

_UNITS = {"cpu": "CPUs", "mem": "MiB of memory"}


def resource_request(data: JobCreate) -> Request:
    """The numbers of a job that sbatch's arithmetic works on."""
    return Request(
        nodes=data.nodes,
        ntasks=data.ntasks,
        ntasks_per_node=data.ntasks_per_node,
        cpus_per_task=data.cpus_per_task,
        gpus=data.gpus,
        gpus_per_node=data.gpus_per_node or None,
        gpus_per_task=data.gpus_per_task,
        cpus_per_gpu=data.cpus_per_gpu,
        ntasks_per_gpu=data.ntasks_per_gpu,
        mem_per_node_mib=data.mem_mib,
        mem_per_cpu_mib=data.mem_per_cpu_mib,
        mem_per_gpu_mib=data.mem_per_gpu_mib,
    )


def _first_given(data: JobCreate, *fields: str) -> str:
    return next((f for f in fields if getattr(data, f)), fields[0])


def requested_tres(data: JobCreate) -> dict[str, tuple[int, str]]:
    """The least the job holds at once, by TRES, with the field that asks for it.

    Counted as sbatch counts (slurm.resources): one node and one task per node unless told, one CPU per task
    unless told; memory per node times nodes, per CPU times CPUs or per GPU times GPUs (absent when none is
    given: the cluster's default applies, or with ``--mem=0``: see :func:`check_quota`). Each task of an array
    is a job of its own: this is one task's.
    """
    request = resource_request(data)
    cpu_field = _first_given(data, "cpus_per_task", "cpus_per_gpu")
    tres: dict[str, tuple[int, str]] = {"cpu": (resources.cpus(request), cpu_field)}
    if (mem := resources.memory_mib(request)) is not None:
        tres["mem"] = (mem, _first_given(data, "mem_mib", "mem_per_cpu_mib", "mem_per_gpu_mib"))
    if gpus := resources.gpus(request):
        field = _first_given(data, "gpus_per_node", "gpus", "gpus_per_task")
        tres["gres/gpu"] = (gpus, field)
        if data.gpu_type:
            tres[f"gres/gpu:{data.gpu_type}"] = (gpus, field)
    return tres


def check_quota(quota: Quota | None, data: JobCreate) -> None:
    """Raise InvalidInput, naming the field, for the first request that alone exceeds the quota's limit.

    ``--mem=0`` (``mem_mib`` 0) asks for all of each node's memory, which depends on the nodes Slurm picks and
    is not known here: with a memory quota it is refused (give a size), without one it passes.
    """
    limits = grp_tres_for(quota)
    if data.mem_mib == 0 and "mem" in limits:
        raise InvalidInput(
            "--mem=0 (all of a node's memory) cannot be checked against the workspace's memory quota: give a size",
            field="mem_mib",
        )
    for name, (amount, field) in requested_tres(data).items():
        limit = limits.get(name)
        if limit is not None and amount > limit:
            what = _UNITS.get(name) or (f"{name.split(':', 1)[1]} GPUs" if ":" in name else "GPUs")
            raise InvalidInput(f"{amount} {what} requested; the workspace quota allows {limit}", field=field)
