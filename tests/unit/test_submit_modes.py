"""``remotegpu submit --parsable`` and ``--wait`` (sbatch's output modes), with a fake gateway client."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import cli
from gateway.client.sbatch import job_request

pytestmark = pytest.mark.unit


def test_parsable_and_wait_are_read_from_the_command_line_and_the_script() -> None:
    flags = job_request("j.sh", "#!/bin/bash\n#SBATCH --parsable\n", ["-W", "--", "x"], cwd="/", environ={})
    assert (flags.parsable, flags.wait) == (True, True)
    assert "parsable" not in flags.body and "wait" not in flags.body and flags.body["script_args"] == ["x"]
    plain = job_request("j.sh", "#!/bin/bash\n", [], cwd="/", environ={})
    assert (plain.parsable, plain.wait) == (False, False)


class _Jobs:
    """Answers GET .../jobs/ID with each of ``states`` in turn."""

    def __init__(self, *states: dict[str, Any]) -> None:
        self.states = list(states)
        self.asked: list[str] = []

    def request(self, method: str, path: str) -> dict[str, Any]:
        self.asked.append(f"{method} {path}")
        return {"state_unknown": False, "exit_code": None, **self.states.pop(0)}


@pytest.mark.parametrize(
    ("last", "code"),
    [
        ({"state": "COMPLETED", "exit_code": 0}, 0),
        ({"state": "FAILED", "exit_code": 3}, 3),
        ({"state": "FAILED", "exit_code": None}, 1),
        ({"state": "CANCELLED", "exit_code": 0}, 1),
        ({"state": "TIMEOUT", "exit_code": None}, 1),
        ({"state": "SUBMIT_FAILED"}, 1),
    ],
)
def test_wait_returns_the_jobs_exit_code_once_it_has_ended(
    monkeypatch: pytest.MonkeyPatch, last: dict[str, Any], code: int
) -> None:
    monkeypatch.setattr(cli, "WAIT_POLL_SECONDS", 0)
    client = _Jobs(
        {"state": "SUBMITTING"},
        {"state": "PENDING"},
        {"state": "RUNNING"},
        {"state": "COMPLETED", "state_unknown": True},
        last,
    )
    assert cli._wait_for_end(client, "lab", "abc") == code  # type: ignore[arg-type]
    assert client.asked == ["GET /workspaces/lab/jobs/abc"] * 5


def test_gateway_ids_are_found_wherever_sbatch_takes_a_job_id() -> None:
    from gateway.jobs.service import _GATEWAY_ID

    a, b = "a" * 32, "0123456789abcdef" * 2
    dependency = f"afterok:{a}:123_4,afterany:{b}_2+5?singleton"
    assert _GATEWAY_ID.findall(dependency) == [a, b]
    assert _GATEWAY_ID.sub(lambda m: {a: "7", b: "8"}[m[0]], dependency) == "afterok:7:123_4,afterany:8_2+5?singleton"
    assert _GATEWAY_ID.findall(f"afterok:{a}0") == []  # 33 hex digits: a Slurm id? no: not ours either
