"""sbatch's task arithmetic (slurm/resources.py), as measured with sbatch -H and scontrol show job here."""

from __future__ import annotations

import pytest

from slurm import resources
from slurm.resources import Request

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("request_", "tasks", "cpus", "gpus", "memory"),
    [
        (Request(), 1, 1, 0, None),
        (Request(nodes=2), 2, 2, 0, None),  # sbatch: NumTasks=2 NumCPUs=2
        (Request(nodes=2, gpus=3), 2, 2, 3, None),  # -N 2 --gpus=a100:3: per job, not per node
        (Request(nodes=2, cpus_per_task=2), 2, 4, 0, None),
        (Request(ntasks=2, gpus_per_task=1), 2, 2, 2, None),  # --gpus-per-task=1 -n 2: 2 GPUs
        (Request(gpus=2, ntasks_per_gpu=1), 2, 2, 2, None),  # NumTasks=2
        (Request(gpus=2, cpus_per_gpu=2), 1, 4, 2, None),
        (Request(gpus=1, mem_per_gpu_mib=1024), 1, 1, 1, 1024),
        (Request(nodes=3, gpus_per_node=2, mem_per_node_mib=100), 3, 3, 6, 300),
        (Request(ntasks=4, mem_per_cpu_mib=10, cpus_per_task=2), 4, 8, 0, 80),
    ],
)
def test_counts_as_sbatch_does(request_: Request, tasks: int, cpus: int, gpus: int, memory: int | None) -> None:
    assert resources.tasks(request_) == tasks
    assert resources.cpus(request_) == cpus
    assert resources.gpus(request_) == gpus
    assert resources.memory_mib(request_) == memory


def test_a_given_task_count_is_not_worked_out() -> None:
    assert resources.implied_tasks(Request(ntasks=5, nodes=2)) is None
    assert resources.implied_tasks(Request()) is None  # nothing given: sbatch sets no count either
