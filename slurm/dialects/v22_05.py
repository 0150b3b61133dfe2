"""Slurm 22.05 (openapi v0.0.38): ``squeue --json`` and ``sacct --json``, and the same schemas over REST.

Facts of this release: squeue ignores filters when asked for JSON (we parse everything); with the controller
down it still exits 0, printing no jobs and an ``errors`` list (so errors must be checked, or every job would
look gone), while sacct reports finding no jobs as an error too (9003, "Nothing found"), which is no outage;
sacct's JSON exit codes are always 0, for jobs and steps alike (so they are reported as unknown, None: use the
state, or the text parser); squeue's ``exit_code`` is a raw wait status; times are epoch seconds with 0
meaning unset; squeue's ``end_time`` of a live job and ``start_time`` of a pending one are projections.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec

from slurm.dialects.parsable import parse_associations, parse_sacct_parsable
from slurm.dialects.scontrol import parse_jobs_text, parse_partitions_text
from slurm.errors import SlurmUnavailable
from slurm.hostlist import expand_hostlist
from slurm.records import (
    AccountingRecord,
    Allocation,
    Association,
    Job,
    JobState,
    Node,
    NodeAllocation,
    NodeGpus,
    Partition,
)
from slurm.tres import parse_tres

__all__ = [
    "RELEASE",
    "parse_associations",
    "parse_associations_json",
    "parse_jobs_text",
    "parse_nodes",
    "parse_partitions_json",
    "parse_partitions_text",
    "parse_sacct",
    "parse_sacct_parsable",
    "parse_squeue",
]

RELEASE = (22, 5)
_NOTHING_FOUND = 9003
# gres_detail, one entry per allocated node: "gpu:1(IDX:0)", "gpu:a100:2(IDX:0-1)", "gpu:a100:3(IDX:0,2-3)"
_GRES_DETAIL = re.compile(r"gpu(?::(?P<type>[^:(]+))?:\d+\(IDX:(?P<idx>[^)]*)\)")


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def _indices(text: str) -> tuple[int, ...]:
    """``0,2-3`` -> ``(0, 2, 3)``; ``N/A`` -> ``()``."""
    out: list[int] = []
    for item in text.split(","):
        low, _, high = item.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out.extend(range(int(low), int(high or low) + 1))
    return tuple(out)


def _node_allocation(node: dict[str, Any], gres: str | None) -> NodeAllocation:
    sockets = node.get("sockets") or {}
    cores = sum(
        1 for socket in sockets.values() for state in (socket.get("cores") or {}).values() if state == "allocated"
    )
    match = _GRES_DETAIL.search(gres or "")
    gpu_type = match["type"] if match and match["type"] not in (None, "(null)") else None
    return NodeAllocation(
        node=str(node.get("nodename", "")),
        cores=cores,
        memory_mib=node.get("memory_allocated"),
        gpu_indices=_indices(match["idx"]) if match else (),
        gpu_type=gpu_type,
    )


def _allocation(raw: dict[str, Any], state: JobState) -> Allocation | None:
    resources = raw.get("job_resources") or {}
    nodes = resources.get("allocated_nodes") or []
    if state.is_terminal or state == JobState.PENDING or not nodes:
        return None
    details = list(raw.get("gres_detail") or [])
    details += [None] * (len(nodes) - len(details))
    return Allocation(
        job_id=int(raw["job_id"]),
        nodes=tuple(_node_allocation(node, gres) for node, gres in zip(nodes, details, strict=False)),
    )


def _job(raw: dict[str, Any]) -> Job:
    state = JobState.parse(raw.get("job_state"))
    status = raw.get("exit_code")
    exit_code = signal = None
    if isinstance(status, int) and state.is_terminal:
        exit_code, signal = (status >> 8) & 0xFF, status & 0x7F
    array_task = raw.get("array_task_id")
    nodes = tuple(expand_hostlist(raw.get("nodes")))
    # A pending job's start_time is the scheduler's estimate, and one cancelled while pending gets the cancel
    # time: only a job that got nodes has started.
    started = state != JobState.PENDING and bool(nodes)
    return Job(
        job_id=int(raw["job_id"]),
        name=raw.get("name") or "",
        user=raw.get("user_name") or "",
        account=raw.get("account") or "",
        partition=raw.get("partition") or "",
        state=state,
        reason=None if raw.get("state_reason") in (None, "", "None") else raw["state_reason"],
        array_job_id=raw.get("array_job_id") or None,
        array_task_id=array_task if isinstance(array_task, int) else None,
        array_task_string=raw.get("array_task_string") or "",
        qos=raw.get("qos") or None,
        nodes=nodes,
        node_count=raw.get("node_count") or 0,
        cpus=raw.get("cpus") or 0,
        tasks=raw.get("tasks") or 0,
        time_limit_minutes=raw.get("time_limit"),
        submit_time=_time(raw.get("submit_time")),
        start_time=_time(raw.get("start_time")) if started else None,
        end_time=_time(raw.get("end_time")) if state.is_terminal else None,
        exit_code=exit_code,
        signal=signal,
        comment=raw.get("comment") or "",
        work_dir=raw.get("current_working_directory") or "",
        stdout=raw.get("standard_output") or "",
        stderr=raw.get("standard_error") or "",
        dependency=raw.get("dependency") or "",
        requested=parse_tres(raw.get("tres_req_str")),
        allocated=parse_tres(raw.get("tres_alloc_str")),
        allocation=_allocation(raw, state),
    )


def _tres_list(entries: list[dict[str, Any]] | None) -> dict[str, int]:
    """sacct's ``[{type, name, count}]`` -> ``{"gres/gpu": 1, "gres/gpu:a100": 1, ...}`` (mem is already MiB)."""
    out: dict[str, int] = {}
    for entry in entries or []:
        if entry.get("count") is None:
            continue
        key = f"{entry['type']}/{entry['name']}" if entry.get("name") else str(entry["type"])
        out[key] = int(entry["count"])
    return out


def _signal(exit_code: dict[str, Any] | None) -> int | None:
    """The one part of 22.05's JSON exit code that is right: a step killed by a signal says which."""
    if exit_code and exit_code.get("status") == "SIGNALED":
        signal = (exit_code.get("signal") or {}).get("signal_id")
        return signal if isinstance(signal, int) else None
    return None


def _record(raw: dict[str, Any]) -> AccountingRecord:
    time = raw.get("time") or {}
    array = raw.get("array") or {}
    comment = raw.get("comment")
    limit = time.get("limit")
    return AccountingRecord(
        job_id=int(raw["job_id"]),
        array_job_id=array.get("job_id") or None,
        array_task_id=array.get("task_id"),
        name=raw.get("name") or "",
        user=raw.get("user") or "",
        account=raw.get("account") or "",
        partition=raw.get("partition") or "",
        qos=raw.get("qos") or None,
        state=JobState.parse((raw.get("state") or {}).get("current")),
        elapsed_seconds=int(time.get("elapsed") or 0),
        time_limit_minutes=limit if isinstance(limit, int) else None,
        submit_time=_time(time.get("submission")),
        start_time=_time(time.get("start")),
        end_time=_time(time.get("end")),
        nodes="" if raw.get("nodes") == "None assigned" else raw.get("nodes") or "",
        comment=(comment.get("job") if isinstance(comment, dict) else comment) or "",
        allocated=_tres_list((raw.get("tres") or {}).get("allocated")),
        requested=_tres_list((raw.get("tres") or {}).get("requested")),
    )


def _step_record(job: AccountingRecord, raw: dict[str, Any]) -> AccountingRecord:
    step = raw.get("step") or {}
    time = raw.get("time") or {}
    return msgspec.structs.replace(
        job,
        job_id=int(step.get("job_id") or job.job_id),
        step=str(step.get("id")),
        name=str(step.get("name") or ""),
        state=JobState.parse(raw.get("state")),
        elapsed_seconds=int(time.get("elapsed") or 0),
        signal=_signal(raw.get("exit_code")),
        submit_time=None,
        start_time=_time(time.get("start")),
        end_time=_time(time.get("end")),
        nodes=str((raw.get("nodes") or {}).get("range") or ""),
        allocated=_tres_list((raw.get("tres") or {}).get("allocated")),
        requested={},
    )


def _decode(payload: bytes | str, command: str, key: str = "jobs") -> list[dict[str, Any]]:
    document = msgspec.json.decode(payload)
    # sacct (and /slurmdb) report an empty result as error 9003 "Nothing found": that is no jobs, not an outage.
    errors = [e for e in document.get("errors") or [] if e.get("error_number") != _NOTHING_FOUND]
    if errors:
        described = "; ".join(f"{e.get('source', '?')}: {e.get('description') or e.get('error')}" for e in errors)
        raise SlurmUnavailable(f"{command} reported errors: {described}", command=command)
    items: list[dict[str, Any]] = document.get(key) or []
    return items


def parse_squeue(payload: bytes | str) -> list[Job]:
    """Every job; raises SlurmUnavailable when squeue could not load them (it still exits 0 then)."""
    return [_job(raw) for raw in _decode(payload, "squeue")]


def parse_sacct(payload: bytes | str, *, steps: bool = False) -> list[AccountingRecord]:
    """One record per job (what billing and the poller read); ``steps=True`` adds one per step after each."""
    records: list[AccountingRecord] = []
    for raw in _decode(payload, "sacct"):
        job = _record(raw)
        records.append(job)
        if steps:
            records += [_step_record(job, s) for s in raw.get("steps") or []]
    return records


def _association(raw: dict[str, Any]) -> Association:
    tres = ((raw.get("max") or {}).get("tres") or {}).get("total")
    return Association(
        cluster=raw.get("cluster") or "",
        account=raw.get("account") or "",
        user=raw.get("user") or None,
        partition=raw.get("partition") or None,
        grp_tres=_tres_list(tres),
        qos=tuple(raw.get("qos") or ()),
    )


def parse_associations_json(payload: bytes | str) -> list[Association]:
    """slurmrestd's ``GET /slurmdb/v0.0.38/associations`` (sacctmgr has no JSON in 22.05), in slurmdbd's order
    (the account before its users, as ``sacctmgr show assoc`` lists them). GrpTRES is ``max.tres.total``."""
    return [_association(raw) for raw in _decode(payload, "slurmdbd", key="associations")]


# a node's gres / gres_used items: "gpu:a100:2(S:0-1)", "gpu:2", "gpu:a100:1(IDX:0)", "gpu:(null):0(IDX:N/A)"
_GRES_ITEM = re.compile(r"(?:^|,)gpu(?::(?P<type>\(null\)|[^:(,]+))?:(?P<count>\d+)")
_INFINITE = 0xFFFFFFFE
"""uint32 values at or above this are Slurm's INFINITE / NO_VAL."""


def _gpus_of(gres: str | None) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for match in _GRES_ITEM.finditer(gres or ""):
        kind = match["type"] if match["type"] not in (None, "(null)") else None
        out[kind] = out.get(kind, 0) + int(match["count"])
    return out


def _node(raw: dict[str, Any]) -> Node:
    total, used = _gpus_of(raw.get("gres")), _gpus_of(raw.get("gres_used"))
    flags = [str(f).upper() for f in raw.get("state_flags") or []]
    features = raw.get("active_features") or raw.get("features") or ""
    return Node(
        name=str(raw.get("name") or ""),
        state="+".join([str(raw.get("state") or "unknown").upper(), *flags]),
        partitions=tuple(raw.get("partitions") or ()),
        reason=raw.get("reason") or None,
        cpus=int(raw.get("cpus") or 0),
        cpus_allocated=int(raw.get("alloc_cpus") or 0),
        memory_mib=int(raw.get("real_memory") or 0),
        memory_allocated_mib=int(raw.get("alloc_memory") or 0),
        gpus=tuple(
            NodeGpus(type=kind, total=count, allocated=min(count, used.get(kind, 0)))
            for kind, count in sorted(total.items(), key=lambda item: item[0] or "")
        ),
        features=tuple(f for f in features.split(",") if f),
    )


def parse_nodes(payload: bytes | str) -> list[Node]:
    """``sinfo --json`` and slurmrestd's ``GET /slurm/v0.0.38/nodes`` (the same schema). GPUs come from
    ``gres``/``gres_used``, which name every type, where the TRES strings have only those accounting tracks."""
    return [_node(raw) for raw in _decode(payload, "sinfo", key="nodes")]


def _limit(value: Any) -> int | None:
    return value if isinstance(value, int) and 0 <= value < _INFINITE else None


def parse_partitions_json(payload: bytes | str) -> list[Partition]:
    """slurmrestd's ``GET /slurm/v0.0.38/partitions`` (22.05's CLI has no JSON for them: parse_partitions_text)."""
    return [
        Partition(
            name=str(raw.get("name") or ""),
            default="default" in (raw.get("flags") or []),
            state=str(raw.get("state") or "UNKNOWN").upper(),
            nodes=tuple(expand_hostlist(raw.get("nodes"))),
            max_time_minutes=_limit(raw.get("max_time_limit")),
            total_cpus=int(raw.get("total_cpus") or 0),
        )
        for raw in _decode(payload, "slurmrestd", key="partitions")
    ]
