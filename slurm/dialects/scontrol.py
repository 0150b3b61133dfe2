"""``scontrol show ... --oneline`` (22.05 has no ``scontrol --json``): one record per line of ``Key=Value``
pairs. Values may hold spaces (``Reason=(ReqNodeNotAvail, UnavailableNodes:n1)``, ``OS=Linux 6.1 #1``), so a
value runs up to the next `` Key=``."""

from __future__ import annotations

import re
from datetime import datetime

from slurm.hostlist import expand_hostlist
from slurm.records import Job, JobState, Partition
from slurm.tres import parse_tres
from slurm.units import duration_minutes

_PAIR = re.compile(r"(?:^|(?<= ))(?P<key>[A-Za-z][A-Za-z0-9_/:.]*)=(?P<value>.*?)(?= +[A-Za-z][A-Za-z0-9_/:.]*=|\s*$)")
_UNSET = frozenset({"", "(null)", "N/A", "None", "Unknown", "NONE"})


def key_values(line: str) -> dict[str, str]:
    """One ``--oneline`` record as a dict (first occurrence of a key wins)."""
    out: dict[str, str] = {}
    for match in _PAIR.finditer(line.strip()):
        out.setdefault(match["key"], match["value"].strip())
    return out


def records(text: str) -> list[dict[str, str]]:
    return [key_values(line) for line in text.splitlines() if "=" in line]


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _minutes(value: str | None) -> int | None:
    if value is None or value in _UNSET:
        return None
    try:
        return duration_minutes(value)
    except ValueError:
        return None


def parse_partitions_text(text: str) -> list[Partition]:
    """``scontrol show partition --oneline``."""
    return [
        Partition(
            name=rec["PartitionName"],
            default=rec.get("Default", "NO").upper() == "YES",
            state=rec.get("State", "UNKNOWN").upper(),
            nodes=tuple(expand_hostlist(rec.get("Nodes"))),
            max_time_minutes=_minutes(rec.get("MaxTime")),
            total_cpus=_int(rec.get("TotalCPUs")) or 0,
        )
        for rec in records(text)
        if rec.get("PartitionName")
    ]


def _time(value: str | None) -> datetime | None:
    if value is None or value in _UNSET:
        return None
    try:
        return datetime.fromisoformat(value).astimezone()  # scontrol writes the controller's local time
    except ValueError:
        return None


def _name(value: str | None) -> str:
    """``root(0)`` -> ``root``."""
    return (value or "").split("(", 1)[0]


def _exit(value: str | None) -> tuple[int | None, int | None]:
    code, _, signal = (value or "").partition(":")
    return _int(code), _int(signal)


def parse_jobs_text(text: str) -> list[Job]:
    """``scontrol show job ID --oneline``: the job, or an array's entries (its tasks, and the waiting ones')."""
    jobs: list[Job] = []
    for rec in records(text):
        if not rec.get("JobId", "").isdigit():
            continue
        state = JobState.parse(rec.get("JobState"))
        exit_code, signal = _exit(rec.get("ExitCode")) if state.is_terminal else (None, None)
        reason = rec.get("Reason")
        array_task = rec.get("ArrayTaskId")
        jobs.append(
            Job(
                job_id=int(rec["JobId"]),
                name=rec.get("JobName", ""),
                user=_name(rec.get("UserId")),
                account=rec.get("Account", ""),
                partition=rec.get("Partition", ""),
                state=state,
                reason=None if reason in _UNSET else reason,
                array_job_id=_int(rec.get("ArrayJobId")),
                array_task_id=_int(array_task),
                array_task_string="" if array_task is None or array_task.isdigit() else array_task,
                qos=rec.get("QOS") or None,
                nodes=tuple(expand_hostlist(rec.get("NodeList"))),
                node_count=_int(rec.get("NumNodes")) or 0,
                cpus=_int(rec.get("NumCPUs")) or 0,
                tasks=_int(rec.get("NumTasks")) or 0,
                time_limit_minutes=_minutes(rec.get("TimeLimit")),
                submit_time=_time(rec.get("SubmitTime")),
                start_time=_time(rec.get("StartTime")) if state != JobState.PENDING else None,
                end_time=_time(rec.get("EndTime")) if state.is_terminal else None,
                exit_code=exit_code,
                signal=signal,
                comment="" if rec.get("Comment") in _UNSET else rec.get("Comment", ""),
                work_dir=rec.get("WorkDir", ""),
                stdout=rec.get("StdOut", ""),
                stderr=rec.get("StdErr", ""),
                dependency="" if rec.get("Dependency") in _UNSET else rec.get("Dependency", ""),
                requested=parse_tres(rec.get("ReqTRES")) if rec.get("ReqTRES") else {},
                allocated=parse_tres(rec.get("AllocTRES") or rec.get("TRES")) if state.is_active else {},
            )
        )
    return jobs
