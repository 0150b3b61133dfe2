"""Slurm 22.05: ``squeue --json`` and ``sacct --json``.

Facts of this release: squeue ignores filters when asked for JSON (we parse everything); with the controller
down it still exits 0, printing no jobs and an ``errors`` list (so errors must be checked, or every job would
look gone); sacct's JSON exit codes are always 0 (use the state); squeue's ``exit_code`` is a raw wait status;
times are epoch seconds with 0 meaning unset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from slurm.errors import SlurmUnavailable
from slurm.records import AccountingRecord, Job, JobState
from slurm.tres import parse_tres


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def _nodes(value: str | None) -> tuple[str, ...]:
    return tuple(expand_hostlist(value)) if value else ()


def expand_hostlist(text: str) -> list[str]:
    """``n[1-3,5],gpu7`` -> ``["n1", "n2", "n3", "n5", "gpu7"]`` (zero padding kept)."""
    hosts: list[str] = []
    depth, start = 0, 0
    parts: list[str] = []
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in filter(None, (p.strip() for p in parts)):
        if "[" not in part:
            hosts.append(part)
            continue
        prefix, _, rest = part.partition("[")
        ranges, _, suffix = rest.partition("]")
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            width = len(low)
            for n in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{n:0{width}d}{suffix}")
    return hosts


def _job(raw: dict[str, Any]) -> Job:
    status = raw.get("exit_code")
    exit_code = signal = None
    if isinstance(status, int) and JobState.parse(raw.get("job_state")).is_terminal:
        exit_code, signal = (status >> 8) & 0xFF, status & 0x7F
    array_task = raw.get("array_task_id")
    return Job(
        job_id=int(raw["job_id"]),
        name=raw.get("name") or "",
        user=raw.get("user_name") or "",
        account=raw.get("account") or "",
        partition=raw.get("partition") or "",
        state=JobState.parse(raw.get("job_state")),
        reason=None if raw.get("state_reason") in (None, "", "None") else raw["state_reason"],
        array_job_id=raw.get("array_job_id") or None,
        array_task_id=array_task if isinstance(array_task, int) else None,
        qos=raw.get("qos") or None,
        nodes=_nodes(raw.get("nodes")),
        node_count=raw.get("node_count") or 0,
        cpus=raw.get("cpus") or 0,
        tasks=raw.get("tasks") or 0,
        time_limit_minutes=raw.get("time_limit"),
        submit_time=_time(raw.get("submit_time")),
        start_time=_time(raw.get("start_time")),
        end_time=_time(raw.get("end_time")) if JobState.parse(raw.get("job_state")).is_terminal else None,
        exit_code=exit_code,
        signal=signal,
        comment=raw.get("comment") or "",
        work_dir=raw.get("current_working_directory") or "",
        stdout=raw.get("standard_output") or "",
        stderr=raw.get("standard_error") or "",
        dependency=raw.get("dependency") or "",
        requested=parse_tres(raw.get("tres_req_str")),
        allocated=parse_tres(raw.get("tres_alloc_str")),
    )


def _tres_list(entries: list[dict[str, Any]] | None) -> dict[str, int]:
    """sacct's ``[{type, name, count}]`` -> ``{"gres/gpu": 1, ...}`` (mem is already MiB)."""
    out: dict[str, int] = {}
    for entry in entries or []:
        if entry.get("count") is None:
            continue
        key = f"{entry['type']}/{entry['name']}" if entry.get("name") else str(entry["type"])
        out[key] = int(entry["count"])
    return out


def _record(raw: dict[str, Any]) -> AccountingRecord:
    time = raw.get("time") or {}
    array = raw.get("array") or {}
    comment = raw.get("comment")
    return AccountingRecord(
        job_id=int(raw["job_id"]),
        array_job_id=array.get("job_id") or None,
        array_task_id=array.get("task_id"),
        name=raw.get("name") or "",
        user=raw.get("user") or "",
        account=raw.get("account") or "",
        partition=raw.get("partition") or "",
        state=JobState.parse((raw.get("state") or {}).get("current")),
        elapsed_seconds=int(time.get("elapsed") or 0),
        submit_time=_time(time.get("submission")),
        start_time=_time(time.get("start")),
        end_time=_time(time.get("end")),
        nodes=raw.get("nodes") or "",
        comment=(comment.get("job") if isinstance(comment, dict) else comment) or "",
        allocated=_tres_list((raw.get("tres") or {}).get("allocated")),
        requested=_tres_list((raw.get("tres") or {}).get("requested")),
    )


def _decode(payload: bytes | str, command: str) -> list[dict[str, Any]]:
    document = msgspec.json.decode(payload)
    errors = document.get("errors") or []
    if errors:
        described = "; ".join(f"{e.get('source', '?')}: {e.get('description') or e.get('error')}" for e in errors)
        raise SlurmUnavailable(f"{command} reported errors: {described}", command=command)
    jobs: list[dict[str, Any]] = document.get("jobs", [])
    return jobs


def parse_squeue(payload: bytes | str) -> list[Job]:
    """Every job; raises SlurmUnavailable when squeue could not load them (it still exits 0 then)."""
    return [_job(raw) for raw in _decode(payload, "squeue")]


def parse_sacct(payload: bytes | str) -> list[AccountingRecord]:
    return [_record(raw) for raw in _decode(payload, "sacct")]
