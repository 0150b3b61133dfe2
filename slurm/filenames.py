"""sbatch's filename patterns (``--output``, ``--error``): ``slurm-%A_%a.out`` -> ``slurm-7_3.out``.

As sbatch(1) describes them for a batch script's output: ``%%`` a percent sign, ``%A`` the array's job id,
``%a`` the array task id (4294967294 for a job that is no array), ``%j`` the job id (an array task's own),
``%J`` the same (the batch step has no step number to add), ``%n`` and ``%t`` 0 (the batch script is node 0,
task 0), ``%s`` ``batch``, ``%u`` the user name, ``%x`` the job name. A number between ``%`` and the letter
zero-pads a number to that width (``%4a`` -> ``0003``), at most 10. Unknown letters stay as they are, as in
sbatch. ``%N`` is the first node's *host* name (what ``gethostname`` says there, not always the Slurm node
name: on the development cluster nodes n1 and n2 both write the machine's name), which only the node knows:
it raises UnknownInPattern.
"""

from __future__ import annotations

import re

import msgspec

_PATTERN = re.compile(r"%(%|(\d*)([AajJNnstux]))")
_NUMBERS = frozenset("AajJnt")


class PatternValues(msgspec.Struct, frozen=True, kw_only=True):
    job_id: int | None
    """The job's own id (an array task's); None where it is not known."""
    user: str
    name: str
    array_job_id: int | None = None
    task_id: int | None = None


class UnknownInPattern(ValueError):
    """The pattern needs a value that is not known (a task's own job id, a node's host name)."""

    def __init__(self, letter: str, pattern: str) -> None:
        super().__init__(f"%{letter} in {pattern!r} is not known for this job")
        self.letter = letter


def expand(pattern: str, values: PatternValues) -> str:
    """The file name sbatch makes of ``pattern`` for the batch step of a job with ``values``."""

    def one(match: re.Match[str]) -> str:
        if match[1] == "%":
            return "%"
        width, letter = match[2], match[3]
        value: object = {
            "A": values.array_job_id if values.array_job_id is not None else values.job_id,
            "a": values.task_id if values.array_job_id is not None else 4294967294,  # NO_VAL, as sbatch prints it
            "j": values.job_id,
            "J": values.job_id,
            "N": None,
            "n": 0,
            "t": 0,
            "s": "batch",
            "u": values.user,
            "x": values.name,
        }[letter]
        if value is None:
            raise UnknownInPattern(letter, pattern)
        if letter in _NUMBERS and width:
            return str(value).zfill(min(int(width), 10))
        return str(value)

    return _PATTERN.sub(one, pattern)
