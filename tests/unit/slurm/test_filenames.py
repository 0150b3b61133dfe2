"""sbatch's --output/--error patterns (checked against real sbatch in tests/integration/slurm/test_filenames.py)."""

from __future__ import annotations

import pytest

from slurm.filenames import PatternValues, UnknownInPattern, expand

pytestmark = pytest.mark.unit

SINGLE = PatternValues(job_id=42, user="alice", name="train")
TASK = PatternValues(job_id=57, user="alice", name="sweep", array_job_id=50, task_id=3)


@pytest.mark.parametrize(
    ("pattern", "values", "name"),
    [
        ("slurm-%j.out", SINGLE, "slurm-42.out"),
        ("slurm-%A_%a.out", TASK, "slurm-50_3.out"),
        ("slurm-%A_%a.out", SINGLE, "slurm-42_4294967294.out"),
        ("%x-%u-%j", TASK, "sweep-alice-57"),
        ("%4a.%5j.%2A", TASK, "0003.00057.50"),
        ("100%%-%s-%n-%t", SINGLE, "100%-batch-0-0"),
        ("%q%Z%", SINGLE, "%q%Z%"),  # no pattern: kept
        ("/abs/%x/%j.log", SINGLE, "/abs/train/42.log"),
        ("%20j", SINGLE, "0000000042"),  # widths stop at 10, as in sbatch
    ],
)
def test_expand(pattern: str, values: PatternValues, name: str) -> None:
    assert expand(pattern, values) == name


def test_what_the_gateway_cannot_know_is_refused() -> None:
    with pytest.raises(UnknownInPattern) as caught:
        expand("%N.log", SINGLE)
    assert caught.value.letter == "N"
    with pytest.raises(UnknownInPattern, match="%j"):
        expand("out-%j", PatternValues(job_id=None, user="a", name="b", array_job_id=50, task_id=1))
