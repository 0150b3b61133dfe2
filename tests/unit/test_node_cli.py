"""``remotegpu node`` without a gateway: options into request bodies (checked against the API's own schemas), the
tables, what a finished run prints, refusals before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.client.node_commands import (
    NODE_HEADERS,
    add_body,
    gpus_value,
    node_rows,
    result_rows,
    run_summary,
    show_lines,
    state_names,
)
from gateway.nodes.schemas import (
    LastRunOut,
    NodeCreate,
    NodeGpusOut,
    NodeOut,
    ProvisionCreate,
    RunOut,
    SlurmGpusOut,
    SlurmNodeOut,
    StateResultOut,
    TargetOut,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _json(value: msgspec.Struct) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


def test_add_bodies_are_what_the_api_takes() -> None:
    for gpus, expected in [("a100:8", {"type": "a100", "count": 8}), ("detect", "detect"), (None, None)]:
        body = add_body("gpu-01", "10.0.0.7", "dc-1", gpus)
        made = msgspec.convert(body, NodeCreate)
        assert made.name == "gpu-01" and msgspec.to_builtins(made.gpus) == expected
    assert "region" not in add_body("n1", "h", None, "none")
    for bad in ("a100", "a100:0", "A100:2", "8"):
        with pytest.raises(click.BadParameter):
            gpus_value(bad)


def test_state_names() -> None:
    assert state_names(()) == ["remotegpu"]
    assert state_names(("munge", "remotegpu.slurmd")) == ["remotegpu.munge", "remotegpu.slurmd"]
    msgspec.convert({"states": state_names(("gpu", "users"))}, ProvisionCreate)
    with pytest.raises(click.BadParameter):
        state_names(("rm",))


def _node(**over: Any) -> Any:
    node = NodeOut(
        name="n1",
        address="10.0.0.7",
        region="dc-1",
        gpus=NodeGpusOut(type="a100", count=2, detect=False),
        key_state="bootstrapped",
        bootstrapped_at=NOW,
        slurm=SlurmNodeOut(
            state="MIXED+DRAIN",
            reason="fan",
            partitions=["gpu"],
            cpus=64,
            cpus_allocated=8,
            memory_mib=512000,
            memory_allocated_mib=1000,
            gpus=[SlurmGpusOut(type="a100", total=2, allocated=1)],
        ),
        jobs=[41, 42],
        last_run=LastRunOut(id=7, status="done", test=True, states_changed=3, states_failed=0, finished_at=NOW),
        created_at=NOW,
    )
    return {**_json(node), **over}


def test_node_rows_and_show() -> None:
    rows = list(node_rows([_node(), _node(name="n2", slurm=None, last_run=None, jobs=[],
                                         gpus={"type": None, "count": 0, "detect": True})]))  # fmt: skip
    assert len(rows[0]) == len(NODE_HEADERS)
    assert rows[0][3:] == ["a100:2", "bootstrapped", "MIXED+DRAIN", "a100:1/2", 2,
                           "#7 test done (changed 3, failed 0)"]  # fmt: skip
    assert rows[1][3:] == ["detect", "bootstrapped", "unknown", "-", 0, "-"]
    lines = show_lines(_node())
    assert "reason:      fan" in lines and "jobs:        41, 42" in lines and "cpus:        8/64" in lines


def test_a_finished_run_and_its_results() -> None:
    run = RunOut(
        id=9, states=["remotegpu.munge"], test=False, status="failed", attempts=1, error="1 of 2 nodes failed",
        targets=[
            TargetOut(node="n1", status="done", jid="1", retcode=0, states_total=3, states_changed=1, states_failed=0,
                      error=None, submitted_at=NOW, finished_at=NOW),
            TargetOut(node="n2", status="failed", jid=None, retcode=None, states_total=0, states_changed=0,
                      states_failed=0, error="Salt started no job on 'n2'\nmore", submitted_at=None, finished_at=NOW),
        ],
        created_at=NOW, started_at=NOW, finished_at=NOW,
    )  # fmt: skip
    lines = run_summary(_json(run))
    assert lines[0] == "run 9: apply of remotegpu.munge: failed"
    assert "  n1: done, 3 states, 1 changed, 0 failed" in lines
    assert "  n2: failed: Salt started no job on 'n2'" in lines
    result = StateResultOut(node="n1", state_id="remotegpu_munge_key", sls="remotegpu.munge", function="file.decode",
                            name="/etc/munge/munge.key", result=None, changed=True, comment="would be\n  written",
                            changes={}, duration_ms=12.4, run_num=2)  # fmt: skip
    assert list(result_rows([_json(result)])) == [
        ["n1", "remotegpu.munge", "remotegpu_munge_key", "would change", "yes", "12", "would be written"]
    ]


def test_refusals_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEGPU_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("REMOTEGPU_TOKEN", "t")
    runner = CliRunner()
    both = runner.invoke(main, ["node", "provision", "n1", "--all"])
    assert both.exit_code == 2 and "name the nodes, or give --all" in both.output
    bad = runner.invoke(main, ["node", "add", "n1", "--address", "h", "--gpus", "lots"])
    assert bad.exit_code == 2 and "TYPE:COUNT" in bad.output
    state = runner.invoke(main, ["node", "provision", "n1", "--state", "rm"])
    assert state.exit_code == 2 and "--state" in state.output
    # nothing listening: one line, exit 1
    down = runner.invoke(main, ["node", "list"])
    assert down.exit_code == 1 and "cannot connect to the gateway" in down.output and "Traceback" not in down.output
