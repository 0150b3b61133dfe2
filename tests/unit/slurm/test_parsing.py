"""Slurm 22.05 JSON, parsed from real outputs recorded on the development cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm.dialects import for_version, v22_05
from slurm.dialects.v22_05 import expand_hostlist
from slurm.errors import (
    InvalidAccount,
    InvalidPartition,
    NodeConfigUnavailable,
    SlurmUnavailable,
    SubmitRejected,
    classify,
)
from slurm.records import JobState
from slurm.tres import format_tres, memory_mib, parse_tres

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_running_gpu_job() -> None:
    [job] = v22_05.parse_squeue(sample("squeue_running_gpu_job.json"))
    assert (job.job_id, job.state, job.account, job.partition, job.user) == (
        446,
        JobState.RUNNING,
        "ws1",
        "debug",
        "root",
    )
    assert job.nodes == ("n1",) and job.reason is None and job.exit_code is None
    assert job.allocated == {"cpu": 1, "mem": 256, "node": 1, "billing": 1, "gres/gpu": 1}
    assert job.start_time is not None and job.end_time is None  # squeue's end_time is a projection while running


def test_states_exit_codes_arrays_and_dependencies() -> None:
    jobs = {j.job_id: j for j in v22_05.parse_squeue(sample("squeue_all_states.json"))}
    assert (jobs[10].state, jobs[10].exit_code, jobs[10].reason) == (JobState.FAILED, 3, "NonZeroExitCode")
    assert (jobs[18].exit_code, jobs[18].signal) == (7, 0)
    assert (jobs[17].state, jobs[17].signal) == (JobState.CANCELLED, 15)
    assert jobs[11].dependency == "afterok:10(failed)" and jobs[11].nodes == ()
    assert (jobs[13].array_job_id, jobs[13].array_task_id) == (7, 1)
    assert jobs[1].array_job_id is None

    pending = {j.job_id: j for j in v22_05.parse_squeue(sample("squeue_array_dep.json"))}
    assert (pending[9].state, pending[9].reason) == (JobState.PENDING, "Dependency")
    assert (pending[7].array_job_id, pending[7].array_task_id, pending[7].reason) == (7, None, "JobArrayTaskLimit")


def test_accounting_records() -> None:
    [rec] = v22_05.parse_sacct(sample("sacct_job_gpu.json"))
    assert (rec.job_id, rec.state, rec.elapsed_seconds, rec.account) == (3, JobState.COMPLETED, 5, "root")
    assert rec.allocated["gres/gpu"] == 1 and rec.allocated["mem"] == 256 and "energy" not in rec.allocated
    tasks = sorted((r.array_job_id, r.array_task_id) for r in v22_05.parse_sacct(sample("sacct_array.json")))
    assert tasks == [(7, 0), (7, 1), (7, 2), (7, 3)]
    states = {r.job_id: r.state for r in v22_05.parse_sacct(sample("sacct_failed_and_dep.json"))}
    assert states == {10: JobState.FAILED, 11: JobState.PENDING}
    cancelled = {r.job_id: r for r in v22_05.parse_sacct(sample("sacct_cancelled.json"))}
    assert cancelled[11].start_time is None and cancelled[17].elapsed_seconds == 1


def test_a_down_controller_is_an_error_not_an_empty_cluster() -> None:
    # squeue --json exits 0 with "errors" and no jobs when slurmctld is down: that must never read as "no jobs".
    with pytest.raises(SlurmUnavailable, match="slurm_load_jobs"):
        v22_05.parse_squeue(sample("squeue_controller_down.json"))


def test_dialect_registry_falls_back_to_the_nearest_older_release() -> None:
    assert for_version("22.05.8") is v22_05
    assert for_version("23.02.1") is v22_05
    with pytest.raises(ValueError, match="older"):
        for_version("21.08")


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("n1", ["n1"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("gpu[08-10],cpu1", ["gpu08", "gpu09", "gpu10", "cpu1"]),
        ("n[1,3-4]x", ["n1x", "n3x", "n4x"]),
        ("", []),
    ],
)
def test_hostlists(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


def test_tres_strings() -> None:
    assert parse_tres("cpu=2,mem=2G,node=1,billing=2,gres/gpu=1,gres/gpu:a100=1") == {
        "cpu": 2,
        "mem": 2048,
        "node": 1,
        "billing": 2,
        "gres/gpu": 1,
        "gres/gpu:a100": 1,
    }
    assert parse_tres("") == {} and parse_tres(None) == {}
    assert [memory_mib(v) for v in ("512", "256M", "2G", "1T", "1024K")] == [512, 256, 2048, 1048576, 1]
    assert format_tres({"gres/gpu": 4, "cpu": None}) == "cpu=-1,gres/gpu=4"


@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
            InvalidAccount,
        ),
        (
            "sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid "
            "partition name specified",
            InvalidPartition,
        ),
        (
            "sbatch: error: Batch job submission failed: Requested node configuration is not available",
            NodeConfigUnavailable,
        ),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
            SlurmUnavailable,
        ),
        ("sbatch: error: something new", SubmitRejected),
    ],
)
def test_sbatch_errors_are_typed_and_keep_slurms_words(stderr: str, cls: type[Exception]) -> None:
    error = classify(stderr, command="sbatch", submit=True)
    assert type(error) is cls
    assert error.message and "sbatch: error" not in error.message
