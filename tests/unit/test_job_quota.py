"""A job that its workspace's quota could never let run is refused up front, naming the field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.errors import InvalidInput
from gateway.jobs.quota import check_quota, requested_tres
from gateway.jobs.schemas import JobCreate
from gateway.workspaces.models import Quota

pytestmark = pytest.mark.unit


def job(**fields: Any) -> JobCreate:
    return msgspec.convert({"name": "j", "command": ["true"], **fields}, JobCreate)


@pytest.mark.parametrize(
    ("fields", "tres"),
    [
        ({}, {"cpu": 1}),
        ({"nodes": 2}, {"cpu": 2}),  # one task per node
        ({"nodes": 2, "ntasks_per_node": 4, "cpus_per_task": 2}, {"cpu": 16}),
        ({"ntasks": 3, "cpus_per_task": 2, "mem_per_cpu_mib": 100}, {"cpu": 6, "mem": 600}),
        ({"nodes": 2, "mem_mib": 1000}, {"cpu": 2, "mem": 2000}),
        ({"nodes": 2, "gpus_per_node": 2, "gpu_type": "a100"}, {"cpu": 2, "gres/gpu": 4, "gres/gpu:a100": 4}),
        ({"nodes": 2, "gpus": 3}, {"cpu": 2, "gres/gpu": 3}),  # per job: not multiplied by the nodes
        ({"ntasks": 3, "gpus_per_task": 2}, {"cpu": 3, "gres/gpu": 6}),
        ({"gpus": 2, "ntasks_per_gpu": 2}, {"cpu": 4, "gres/gpu": 2}),  # sbatch makes gpus x ntasks-per-gpu tasks
        ({"gpus": 2, "cpus_per_gpu": 4, "mem_per_gpu_mib": 100}, {"cpu": 8, "gres/gpu": 2, "mem": 200}),
    ],
)
def test_requested_tres_counts_as_sbatch_does(fields: dict[str, Any], tres: dict[str, int]) -> None:
    assert {name: amount for name, (amount, _) in requested_tres(job(**fields)).items()} == tres


@pytest.mark.parametrize(
    ("quota", "fields", "field"),
    [
        ({"gpus": 2}, {"nodes": 2, "gpus_per_node": 2}, "gpus_per_node"),
        ({"gpus_by_type": {"a100": 1}}, {"gpus_per_node": 2, "gpu_type": "a100"}, "gpus_per_node"),
        ({"cpus": 8}, {"ntasks": 4, "cpus_per_task": 4}, "cpus_per_task"),
        ({"memory_bytes": 1024**3}, {"nodes": 2, "mem_mib": 600}, "mem_mib"),
        ({"memory_bytes": 1024**3}, {"ntasks": 4, "mem_per_cpu_mib": 300}, "mem_per_cpu_mib"),
        ({"gpus": 2}, {"gpus": 3}, "gpus"),
        ({"gpus": 2}, {"ntasks": 3, "gpus_per_task": 1}, "gpus_per_task"),
        ({"cpus": 2}, {"gpus": 1, "cpus_per_gpu": 4}, "cpus_per_gpu"),
        ({"memory_bytes": 1024**3}, {"gpus": 2, "mem_per_gpu_mib": 600}, "mem_per_gpu_mib"),
    ],
)
def test_over_the_quota_names_the_field(quota: dict[str, Any], fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_quota(Quota(**{"gpus_by_type": {}, **quota}), job(**fields))
    assert refused.value.errors is not None and refused.value.errors[0].field == field
    assert "quota allows" in refused.value.detail


def test_what_fits_or_has_no_limit_passes() -> None:
    check_quota(None, job(gpus_per_node=8))
    check_quota(Quota(gpus=4, gpus_by_type={"h100": 1}, cpus=4), job(gpus_per_node=4, gpu_type="a100", ntasks=4))


def test_all_of_a_nodes_memory_is_refused_only_under_a_memory_quota() -> None:
    assert "mem" not in requested_tres(job(mem_mib=0))  # not a count of MiB: it depends on the nodes
    check_quota(None, job(mem_mib=0))
    check_quota(Quota(gpus=4, gpus_by_type={}, cpus=4), job(mem_mib=0))
    with pytest.raises(InvalidInput) as refused:
        check_quota(Quota(gpus_by_type={}, memory_bytes=1024**4), job(mem_mib=0))
    assert refused.value.errors is not None and refused.value.errors[0].field == "mem_mib"
    assert "--mem=0" in refused.value.detail
