"""Slurm 22.05 JSON, parsed from real outputs recorded on the development cluster (samples/)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from slurm.dialects import Dialect, for_version, release, v22_05
from slurm.errors import (
    AccessDenied,
    InvalidAccount,
    InvalidPartition,
    NodeConfigUnavailable,
    SlurmError,
    SlurmUnavailable,
    SubmitRejected,
    classify,
)
from slurm.hostlist import expand_hostlist
from slurm.records import Allocation, JobState, NodeAllocation
from slurm.tres import format_tres, parse_tres
from slurm.units import duration_minutes, duration_seconds, memory_mib

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# --- squeue --json (and GET /slurm/v0.0.38/jobs, same schema) -------------------------------------------


def test_running_gpu_job() -> None:
    [job] = v22_05.parse_squeue(sample("squeue_running_gpu_job.json"))
    assert (job.job_id, job.state, job.account, job.partition, job.user, job.qos) == (
        446,
        JobState.RUNNING,
        "ws1",
        "debug",
        "root",
        "normal",
    )
    assert job.nodes == ("n1",) and job.reason is None and job.exit_code is None
    assert job.allocated == {"cpu": 1, "mem": 256, "node": 1, "billing": 1, "gres/gpu": 1}
    assert job.memory_mib == 256 and job.time_limit_minutes is None  # null = UNLIMITED
    assert job.start_time == datetime.fromtimestamp(1795355321, UTC) and job.start_time.tzinfo is UTC
    assert job.end_time is None  # squeue's end_time is a projection while running
    assert job.allocation == Allocation(
        job_id=446, nodes=(NodeAllocation(node="n1", cores=1, memory_mib=256, gpu_indices=(0,)),)
    )
    assert job.allocation.gpus == 1


def test_states_exit_codes_arrays_and_dependencies() -> None:
    jobs = {j.job_id: j for j in v22_05.parse_squeue(sample("squeue_all_states.json"))}
    assert len(jobs) == 18
    assert (jobs[10].state, jobs[10].exit_code, jobs[10].reason) == (JobState.FAILED, 3, "NonZeroExitCode")
    assert (jobs[18].exit_code, jobs[18].signal) == (7, 0)  # raw wait status 1792
    assert (jobs[17].state, jobs[17].signal) == (JobState.CANCELLED, 15)
    assert jobs[11].dependency == "afterok:10(failed)" and jobs[11].nodes == () and jobs[11].start_time is None
    assert (jobs[13].array_job_id, jobs[13].array_task_id) == (7, 1)
    assert jobs[1].array_job_id is None and jobs[1].requested["mem"] == 8000
    assert all(j.allocation is None for j in jobs.values())  # finished jobs hold nothing

    pending = {j.job_id: j for j in v22_05.parse_squeue(sample("squeue_array_dep.json"))}
    assert (pending[9].state, pending[9].reason) == (JobState.PENDING, "Dependency")
    assert pending[9].dependency == "afterok:8(unfulfilled)"
    assert (pending[7].array_job_id, pending[7].array_task_id, pending[7].reason) == (7, None, "JobArrayTaskLimit")
    running = pending[12].allocation
    assert running is not None and running.gpus == 0 and running.nodes[0].node == "vm"


def test_pending_and_running_under_a_grptres_limit() -> None:
    jobs = {j.job_id: j for j in v22_05.parse_squeue(sample("squeue_grptres_pending.json"))}
    assert (jobs[5].state, jobs[5].reason, jobs[5].allocated) == (JobState.PENDING, "AssocGrpGRES", {})
    assert jobs[5].requested["gres/gpu"] == 1 and jobs[5].memory_mib == 256
    assert jobs[4].state == JobState.RUNNING and jobs[4].allocation is not None
    assert jobs[4].allocation.nodes[0].gpu_indices == (0,)

    queue = {j.job_id: j for j in v22_05.parse_squeue(sample("squeue_running.json"))}
    assert (queue[3].state, queue[3].reason, queue[2].reason) == (JobState.PENDING, "Priority", None)


def test_rest_jobs_share_the_squeue_schema() -> None:
    jobs = {j.job_id: j for j in v22_05.parse_squeue(sample("rest_jobs.json"))}
    assert len(jobs) == 19
    assert (jobs[19].name, jobs[19].account, jobs[19].time_limit_minutes) == ("rest-job", "ws1", 5)
    assert jobs[11].reason == "DependencyNeverSatisfied"
    [one] = v22_05.parse_squeue(sample("rest_job_19.json"))
    assert one == jobs[19]


def test_a_down_controller_is_an_error_not_an_empty_cluster() -> None:
    # squeue --json exits 0 with "errors" and no jobs when slurmctld is down: that must never read as "no jobs".
    with pytest.raises(SlurmUnavailable, match="slurm_load_jobs"):
        v22_05.parse_squeue(sample("squeue_controller_down.json"))


def test_sacct_finding_nothing_is_no_jobs_not_an_outage() -> None:
    # sacct --json -S now -E now: exit 0, errors [{"error_number": 9003, "description": "Nothing found"}]
    assert v22_05.parse_sacct(sample("sacct_nothing_found.json")) == []


# --- sacct --json (and GET /slurmdb/v0.0.38/jobs, same schema) ------------------------------------------


def test_accounting_records() -> None:
    [rec] = v22_05.parse_sacct(sample("sacct_job_gpu.json"))
    assert (rec.job_id, rec.state, rec.elapsed_seconds, rec.account, rec.step) == (
        3,
        JobState.COMPLETED,
        5,
        "root",
        None,
    )
    assert rec.allocated == {"cpu": 1, "mem": 256, "node": 1, "billing": 1, "gres/gpu": 1}  # energy has no count
    assert rec.exit_code is None  # 22.05's JSON always says 0: unknown, not success
    tasks = sorted(
        (r.array_job_id, r.array_task_id, r.display_id) for r in v22_05.parse_sacct(sample("sacct_array.json"))
    )
    assert tasks == [(7, 0, "7_0"), (7, 1, "7_1"), (7, 2, "7_2"), (7, 3, "7_3")]
    states = {r.job_id: r.state for r in v22_05.parse_sacct(sample("sacct_failed_and_dep.json"))}
    assert states == {10: JobState.FAILED, 11: JobState.PENDING}
    cancelled = {r.job_id: r for r in v22_05.parse_sacct(sample("sacct_cancelled.json"))}
    assert cancelled[11].start_time is None and cancelled[11].nodes == "" and cancelled[17].elapsed_seconds == 1


def test_accounting_of_a_grptres_workspace_and_the_sample_job() -> None:
    ws1 = {r.job_id: r for r in v22_05.parse_sacct(sample("sacct_ws1_grptres.json"))}
    assert {r.account for r in ws1.values()} == {"ws1"} and ws1[4].allocated["gres/gpu"] == 1
    assert ws1[4].elapsed_seconds == 6 and ws1[5].elapsed_seconds == 1
    [job] = v22_05.parse_sacct(sample("sacct_sample_job.json"))
    assert (job.job_id, job.name, job.nodes, job.elapsed_seconds) == (446, "sample", "n1", 3)
    assert job.end_time == datetime.fromtimestamp(1795355324, UTC)


def test_steps_on_request() -> None:
    records = v22_05.parse_sacct(sample("sacct_multinode_typed_gpu.json"), steps=True)
    assert [r.display_id for r in records] == ["1234", "1234.batch", "1234.0"]
    job, batch, step0 = records
    assert job.nodes == "n[1-2]" and job.allocated["gres/gpu:a100"] == 2 and job.allocated["node"] == 2
    assert (batch.nodes, batch.allocated["gres/gpu"]) == ("n1", 1)
    assert (step0.name, step0.nodes, step0.allocated["gres/gpu"]) == ("bash", "n[1-2]", 2)
    signalled = [r for r in v22_05.parse_sacct(sample("sacct_cancelled.json"), steps=True) if r.step == "batch"]
    assert [(r.job_id, r.state, r.signal) for r in signalled] == [(17, JobState.CANCELLED, 15)]


def test_slurmdb_rest_shares_the_sacct_schema() -> None:
    records = {r.job_id: r for r in v22_05.parse_sacct(sample("rest_slurmdb_jobs.json"))}
    assert len(records) == 18 and records[19].time_limit_minutes == 5 and records[19].allocated["mem"] == 128
    [one] = v22_05.parse_sacct(sample("rest_slurmdb_job_19.json"))
    assert one == records[19]


# --- the registry -----------------------------------------------------------------------------------------


def test_dialect_registry_falls_back_to_the_nearest_older_release() -> None:
    dialect: Dialect = for_version("22.05.8")
    assert dialect is v22_05
    assert for_version("22.5") is v22_05 and for_version("23.02.1") is v22_05
    with pytest.raises(ValueError, match="older"):
        for_version("21.08")
    with pytest.raises(ValueError, match="not a Slurm version"):
        release("latest")


# --- hostlists, TRES, units, errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("n1", ["n1"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("gpu[08-10],cpu1", ["gpu08", "gpu09", "gpu10", "cpu1"]),
        ("n[1,3-4]x", ["n1x", "n3x", "n4x"]),
        ("", []),
        (None, []),
        ("None assigned", []),
    ],
)
def test_hostlists(text: str | None, hosts: list[str]) -> None:
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
    assert parse_tres("mem=1.5T") == {"mem": 1572864} and parse_tres("mem=512") == {"mem": 512}
    assert format_tres({"gres/gpu": 4, "cpu": None}) == "cpu=-1,gres/gpu=4"
    for bad in ("cpu", "cpu=two", "mem=2X"):
        with pytest.raises(ValueError, match="TRES"):
            parse_tres(bad)


@pytest.mark.parametrize(
    ("text", "mib"), [("512", 512), ("256M", 256), ("2G", 2048), ("2g", 2048), ("1T", 1048576), ("1024K", 1), ("1K", 1)]
)
def test_memory_sizes(text: str, mib: int) -> None:
    assert memory_mib(text) == mib


@pytest.mark.parametrize("text", ["", "G", "2GB", "-1", "1e3", "2 G"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        memory_mib(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:10", 1810),
        ("2:00:00", 7200),
        ("1-0", 86400),
        ("1-2:30", 95400),
        ("0-0:0:1", 1),
        ("00:00:03", 3),
        ("UNLIMITED", None),
        ("Partition_Limit", None),
        ("infinite", None),
    ],
)
def test_durations(text: str, seconds: int | None) -> None:
    assert duration_seconds(text) == seconds
    assert duration_minutes(text) == (None if seconds is None else -(-seconds // 60))


@pytest.mark.parametrize("text", ["", "1:2:3:4", "1-", "-5", "1h", "1-2-3", "1.5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        duration_seconds(text)


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
        # the connection broke after sbatch sent the job: it may exist
        ("sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received", SlurmUnavailable),
        # the submitting user is unknown to the controller: a refusal of the job, not "someone else's job"
        ("sbatch: error: Batch job submission failed: Invalid user id", SubmitRejected),
    ],
)
def test_sbatch_errors_are_typed_and_keep_slurms_words(stderr: str, cls: type[Exception]) -> None:
    error = classify(stderr, command="sbatch", submit=True)
    assert type(error) is cls
    assert error.message and "sbatch: error" not in error.message


@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        ("Invalid user id for job 7\nslurm_suspend error: Invalid user id", AccessDenied),  # someone else's job
        ("Job has already finished for job 7\nslurm_suspend error: Job has already finished", SlurmError),
        ("scancel: error: Kill job error on job id 7: Access/permission denied", AccessDenied),
        ("sacctmgr: error: Unable to connect to database", SlurmUnavailable),
    ],
)
def test_control_errors_are_typed(stderr: str, cls: type[Exception]) -> None:
    assert type(classify(stderr, command="scontrol")) is cls
