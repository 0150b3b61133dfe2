"""sbatch's task arithmetic: what a job asks for, counted the way sbatch 22.05 (its ``_opt_verify``) and the
controller count it. One place, used by the gateway's quota check and by the REST backend (slurmrestd does
none of sbatch's own arithmetic). Pure functions over numbers.

Checked on the test cluster with ``sbatch -H`` and ``scontrol show job``: ``--ntasks-per-gpu=1 --gpus=2`` gives
2 tasks; ``--gpus-per-task=1 -n 2`` 2 GPUs; ``-N 2 -c 2`` (no task count) one task per node, 4 CPUs;
``-N 2 --gpus=3`` 2 tasks, 2 CPUs.
"""

from __future__ import annotations

import msgspec


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """The numbers of a request that the counts depend on (None: not given)."""

    nodes: int | None = None
    ntasks: int | None = None
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus: int | None = None
    """Per job."""
    gpus_per_node: int | None = None
    gpus_per_task: int | None = None
    cpus_per_gpu: int | None = None
    ntasks_per_gpu: int | None = None
    mem_per_node_mib: int | None = None
    mem_per_cpu_mib: int | None = None
    mem_per_gpu_mib: int | None = None


def implied_tasks(request: Request) -> int | None:
    """The task count sbatch works out itself where none is given; None where it sets none.

    sbatch asks for ``gpus x ntasks-per-gpu`` tasks, or ``nodes x ntasks-per-node`` (one node unless told),
    or with a node count one task per node (which makes the CPU count ``tasks x cpus-per-task``: slurmrestd
    given ``-N 2`` alone makes a job of 1 CPU where sbatch makes one of 2).
    """
    if request.ntasks is not None:
        return None
    if request.ntasks_per_gpu and request.gpus:
        return request.gpus * request.ntasks_per_gpu
    nodes = request.nodes or 1
    if request.ntasks_per_node:
        return nodes * request.ntasks_per_node
    if request.nodes is not None:
        return nodes
    return None


def tasks(request: Request) -> int:
    """Tasks the job holds at once: the given count, the implied one, or one per node."""
    return request.ntasks or implied_tasks(request) or (request.nodes or 1)


def gpus(request: Request) -> int:
    """GPUs the job holds at least: the most any of its GPU forms asks for."""
    nodes = request.nodes or 1
    return max(
        request.gpus or 0,
        nodes * (request.gpus_per_node or 0),
        tasks(request) * (request.gpus_per_task or 0),
    )


def cpus(request: Request) -> int:
    """CPUs: tasks times CPUs per task, or per GPU where that asks for more."""
    return max(tasks(request) * (request.cpus_per_task or 1), gpus(request) * (request.cpus_per_gpu or 0))


def memory_mib(request: Request) -> int | None:
    """Memory: per node times nodes, per CPU times CPUs, or per GPU times GPUs; None: the cluster's default,
    or per node 0 (``--mem=0``: all of each node's memory, which depends on the nodes the job gets)."""
    if request.mem_per_node_mib == 0:
        return None
    if request.mem_per_node_mib is not None:
        return request.mem_per_node_mib * (request.nodes or 1)
    if request.mem_per_cpu_mib is not None:
        return request.mem_per_cpu_mib * cpus(request)
    if request.mem_per_gpu_mib is not None:
        return request.mem_per_gpu_mib * gpus(request)
    return None
