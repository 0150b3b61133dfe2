"""Which gateway a Slurm job belongs to, by its comment: the poller adopts and cancels only its own."""

from __future__ import annotations

import msgspec
import pytest

from gateway.jobs.origin import Origin, parse_comment, slurm_comment
from gateway.jobs.poller import Accounting, PollResult, Snapshot, update_job
from slurm.records import Job, JobState
from tests.unit.test_poller_arrays import training_job

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("comment", "origin"),
    [
        (slurm_comment("a1b2c3", "f" * 32), Origin(instance="a1b2c3", job_id="f" * 32)),
        ("rgpu:" + "e" * 32, Origin(instance=None, job_id="e" * 32)),  # the first form
        ("rgpu:", None),
        ("rgpu:x:", None),
        ("someone else's comment", None),
        ("", None),
    ],
)
def test_parse_comment(comment: str, origin: Origin | None) -> None:
    assert parse_comment(comment) == origin


BASE = Job(job_id=1, name="j", user="u", account="a", partition="p", state=JobState.RUNNING)


def test_a_snapshot_keeps_only_this_gateways_jobs() -> None:
    ours, theirs, old = "1" * 32, "2" * 32, "3" * 32
    jobs = [
        msgspec.structs.replace(BASE, job_id=10, comment=slurm_comment("mine", ours)),
        msgspec.structs.replace(BASE, job_id=11, comment=slurm_comment("other", theirs)),
        msgspec.structs.replace(BASE, job_id=12, comment="rgpu:" + old),
        msgspec.structs.replace(BASE, job_id=13, comment="plain"),
    ]
    snapshot = Snapshot(jobs, "mine")
    assert set(snapshot.by_gateway_id) == {ours, old}  # may be adopted
    assert snapshot.surely_ours == {ours}  # may be cancelled as an orphan


def test_a_repeated_slurm_id_updates_only_the_job_it_belongs_to() -> None:
    """The cluster's state was wiped: job 5 now is another gateway job's; the old row keeps its last state."""
    old, new = training_job(id="a" * 32, slurm_job_id=5), training_job(id="b" * 32, slurm_job_id=5)
    live = msgspec.structs.replace(BASE, job_id=5, comment=slurm_comment("mine", new.id))
    snapshot = Snapshot([live], "mine")
    assert update_job(old, snapshot, Accounting([]), PollResult()) is None and old.state == "PENDING"
    change = update_job(new, snapshot, Accounting([]), PollResult())
    assert change is not None and (change.job_id, change.new) == (new.id, "RUNNING")
