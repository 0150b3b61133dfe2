"""``sacct --parsable2`` and ``sacctmgr --parsable2`` text, from real outputs (samples/, *_live made with TZ=UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from slurm.dialects import for_version
from slurm.dialects.parsable import ASSOCIATION_FIELDS, SACCT_FIELDS, parse_associations, parse_sacct_parsable
from slurm.records import Association, JobState

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_sacct_parsable_sample() -> None:
    job, batch = parse_sacct_parsable(sample("sacct_parsable.txt"))
    assert (job.job_id, job.step, job.name, job.account, job.state) == (446, None, "sample", "ws1", JobState.COMPLETED)
    assert (job.exit_code, job.signal, job.elapsed_seconds, job.nodes) == (0, 0, 3, "n1")
    assert job.allocated == {"billing": 1, "cpu": 1, "gres/gpu": 1, "mem": 256, "node": 1}
    assert job.start_time == datetime(2026, 11, 22, 13, 48, 41, tzinfo=UTC)
    assert (batch.job_id, batch.step, batch.display_id, batch.requested) == (446, "batch", "446.batch", {})
    assert parse_sacct_parsable(sample("sacct_parsable.txt"), steps=False) == [job]


def test_sacct_parsable_live_output() -> None:
    records = {r.display_id: r for r in parse_sacct_parsable(sample("sacct_parsable_live.txt"))}
    assert len(records) == 48
    # exit codes and signals are right in text (unlike 22.05's JSON)
    assert (records["1186"].state, records["1186"].exit_code, records["1186"].nodes) == (JobState.FAILED, 1, "")
    assert records["1186"].time_limit_minutes is None  # Partition_Limit
    assert (records["1185"].state, records["1185.batch"].signal) == (JobState.CANCELLED, 15)  # "CANCELLED by 1061"
    assert (records["1188"].elapsed_seconds, records["1188"].time_limit_minutes) == (18, 7 * 1440)
    ddp = records["1202"]
    assert (ddp.nodes, ddp.allocated["gres/gpu:a100"], ddp.allocated["node"], ddp.allocated["mem"]) == (
        "n[1-2]",
        2,
        2,
        512,
    )
    assert (records["1202.0"].name, records["1202.0"].allocated["gres/gpu"]) == ("bash", 2)
    assert records["1184"].user == "" and records["1185"].user == "rgt8914bb90"  # deleted users print blank


def test_arrays_unknown_times_custom_delimiter_and_no_header() -> None:
    fields = ["JobID", "JobIDRaw", "State", "ExitCode", "Start", "End", "Elapsed", "AllocTRES"]
    text = "\n".join(
        [
            "7_1\x1f13\x1fCOMPLETED\x1f0:0\x1f2026-01-02T03:04:05\x1f2026-01-02T03:05:05\x1f00:01:00\x1fcpu=1,mem=1G",
            "7_1.batch\x1f13.batch\x1fCOMPLETED\x1f0:0\x1fUnknown\x1fUnknown\x1f1-00:00:01\x1f",
            "7_[2-3%2]\x1f7\x1fPENDING\x1f0:0\x1fNone\x1fUnknown\x1f00:00:00\x1f",
        ]
    )
    task, step, pending = parse_sacct_parsable(text, fields=fields, delimiter="\x1f", tz=timezone(timedelta(hours=8)))
    assert (task.job_id, task.array_job_id, task.array_task_id, task.display_id) == (13, 7, 1, "7_1")
    assert task.start_time == datetime(2026, 1, 1, 19, 4, 5, tzinfo=UTC)  # read as UTC+8
    assert (task.elapsed_seconds, task.allocated) == (60, {"cpu": 1, "mem": 1024})
    assert (step.job_id, step.step, step.display_id, step.start_time, step.elapsed_seconds) == (
        13,
        "batch",
        "7_1.batch",
        None,
        86401,
    )
    assert (pending.job_id, pending.array_job_id, pending.array_task_id, pending.state) == (
        7,
        7,
        None,
        JobState.PENDING,
    )


def test_a_delimiter_inside_a_field_is_an_error_not_a_shifted_record() -> None:
    with pytest.raises(ValueError, match="line 1: 3 columns where 2 were expected"):
        parse_sacct_parsable("JobID|JobName\n5|a|b\n")
    with pytest.raises(ValueError, match="not a sacct job id"):
        parse_sacct_parsable("JobID|State\nabc|RUNNING\n")
    assert parse_sacct_parsable("") == []


def test_sacct_fields_cover_every_record_column() -> None:
    header = "|".join(SACCT_FIELDS)
    row = "9|9|n|u|a|p|q|RUNNING|0:0|2026-01-01T00:00:00|2026-01-01T00:00:01|Unknown|5|10|cpu=1|cpu=1|n1|rgpu:x"
    [rec] = parse_sacct_parsable(f"{header}\n{row}\n")
    assert (rec.name, rec.user, rec.account, rec.partition, rec.qos, rec.comment) == ("n", "u", "a", "p", "q", "rgpu:x")
    assert (rec.elapsed_seconds, rec.time_limit_minutes, rec.end_time) == (5, 10, None)


def test_sacctmgr_associations_sample() -> None:
    # recorded with format=cluster,account,user,grptres,qos
    assocs = parse_associations(
        sample("sacctmgr_assoc_parsable.txt"), fields=("Cluster", "Account", "User", "GrpTRES", "QOS")
    )
    assert len(assocs) == 7
    assert assocs[4] == Association(
        cluster="testcluster", account="ws1", user=None, grp_tres={"gres/gpu": 1}, qos=("normal",)
    )
    assert [a.user for a in assocs if a.account == "ws1"] == [None, "root", "slurmtestuser"]


def test_sacctmgr_associations_live_in_our_format() -> None:
    assocs = for_version("22.05").parse_associations(sample("sacctmgr_assoc_live.txt"), fields=ASSOCIATION_FIELDS)
    assert assocs[1] == Association(cluster="remotegpu", account="root", user="root", qos=("normal",))
    assert all(a.partition is None and a.grp_tres == {} for a in assocs)
    qos = parse_associations("c|a|u||gres/gpu=4,mem=100G|normal,gpu1\n")
    assert qos == [
        Association(cluster="c", account="a", user="u", grp_tres={"gres/gpu": 4, "mem": 102400}, qos=("normal", "gpu1"))
    ]
