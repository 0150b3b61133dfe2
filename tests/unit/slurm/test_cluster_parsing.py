"""Nodes, partitions and one job's entries, parsed from real 22.05 outputs recorded on the development cluster
(samples/: sinfo --json, slurmrestd /nodes and /partitions, scontrol show partition|job --oneline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm.dialects import v22_05
from slurm.dialects.scontrol import key_values
from slurm.errors import SlurmUnavailable
from slurm.records import JobState, NodeGpus

SAMPLES = Path(__file__).parent / "samples"


def text(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_sinfo_nodes_with_gpus_in_use() -> None:
    n1, n2 = v22_05.parse_nodes(text("sinfo_mixed_gpus.json"))
    assert (n1.name, n1.state, n1.partitions, n1.reason) == ("n1", "MIXED", ("gpu", "debug"), None)
    assert (n1.cpus, n1.cpus_allocated, n1.memory_mib, n1.memory_allocated_mib) == (4, 1, 8000, 512)
    assert n1.gpus == (NodeGpus(type="a100", total=2, allocated=1),)
    assert n2.gpus == (NodeGpus(type="a100", total=2, allocated=2),) and n2.cpus_allocated == 3
    assert n1.schedulable and n1.features == ()


def test_drained_node_state_and_reason() -> None:
    nodes = {n.name: n for n in v22_05.parse_nodes(text("sinfo_drained.json"))}
    assert (nodes["n2"].state, nodes["n2"].reason) == ("IDLE+DRAIN", "rgpu snapshot sample")
    assert not nodes["n2"].schedulable and nodes["n1"].schedulable


def test_rest_nodes_are_the_same_schema() -> None:
    nodes = v22_05.parse_nodes(text("rest_nodes.json"))
    assert [(n.name, n.state, n.gpus) for n in nodes] == [
        ("n1", "IDLE", (NodeGpus(type="a100", total=2, allocated=0),)),
        ("n2", "IDLE", (NodeGpus(type="a100", total=2, allocated=0),)),
    ]


@pytest.mark.parametrize(
    ("gres", "used", "expected"),
    [
        ("gpu:2", "gpu:1(IDX:0)", (NodeGpus(type=None, total=2, allocated=1),)),
        (
            "gpu:a100:2(S:0-1),gpu:h100:4,mps:100",
            "gpu:a100:1(IDX:0),gpu:h100:3(IDX:0,2-3),mps:0",
            (NodeGpus(type="a100", total=2, allocated=1), NodeGpus(type="h100", total=4, allocated=3)),
        ),
        ("gpu:(null):1", "gpu:(null):0(IDX:N/A)", (NodeGpus(type=None, total=1, allocated=0),)),
        ("", "", ()),
    ],
)
def test_gres_strings(gres: str, used: str, expected: tuple[NodeGpus, ...]) -> None:
    payload = '{"errors": [], "nodes": [{"name": "x", "state": "idle", "gres": "%s", "gres_used": "%s"}]}'
    [node] = v22_05.parse_nodes(payload % (gres, used))
    assert node.gpus == expected


def test_nodes_errors_are_an_outage() -> None:
    with pytest.raises(SlurmUnavailable):
        v22_05.parse_nodes('{"errors": [{"error": "Unable to contact slurm controller"}], "nodes": []}')


def test_partitions_text_and_rest_agree() -> None:
    from_text = v22_05.parse_partitions_text(text("scontrol_partitions.txt"))
    from_rest = v22_05.parse_partitions_json(text("rest_partitions.json"))
    assert from_text == from_rest
    gpu, debug = from_text
    assert (gpu.name, gpu.default, gpu.state, gpu.nodes, gpu.max_time_minutes, gpu.total_cpus) == (
        "gpu",
        True,
        "UP",
        ("n1", "n2"),
        7 * 24 * 60,
        8,
    )
    assert (debug.default, debug.max_time_minutes) == (False, 60)


def test_unlimited_partition_time() -> None:
    [p] = v22_05.parse_partitions_text("PartitionName=long Default=NO MaxTime=UNLIMITED State=DRAIN Nodes=g[01-02]")
    assert (p.max_time_minutes, p.state, p.nodes) == (None, "DRAIN", ("g01", "g02"))
    payload = '{"errors": [], "partitions": [{"name": "long", "flags": [], "max_time_limit": 4294967295}]}'
    assert v22_05.parse_partitions_json(payload)[0].max_time_minutes is None


def test_key_values_keep_spaces_inside_values() -> None:
    line = "JobId=7 Reason=(ReqNodeNotAvail, UnavailableNodes:n1) Dependency=(null) OS=Linux 6.1 #1 SMP Foo=bar"
    assert key_values(line) == {
        "JobId": "7",
        "Reason": "(ReqNodeNotAvail, UnavailableNodes:n1)",
        "Dependency": "(null)",
        "OS": "Linux 6.1 #1 SMP",
        "Foo": "bar",
    }


def test_scontrol_show_job_running() -> None:
    [job] = v22_05.parse_jobs_text(text("scontrol_job_running.txt"))
    assert (job.job_id, job.state, job.reason, job.user, job.account, job.nodes) == (
        446,
        JobState.RUNNING,
        None,
        "root",
        "ws1",
        ("n1",),
    )
    assert job.allocated["gres/gpu"] == 1 and job.time_limit_minutes is None


def test_scontrol_show_job_held_array() -> None:
    [job] = v22_05.parse_jobs_text(text("scontrol_job_array_held.txt"))
    assert (job.state, job.reason, job.array_job_id, job.array_task_id, job.array_task_string) == (
        JobState.PENDING,
        "JobHeldUser",
        job.job_id,
        None,
        "0-3%2",
    )
