"""``sacct --parsable2`` and ``sacctmgr --parsable2`` text, the same in every release we know.

Text is the fallback where JSON is missing or wrong: sacctmgr has no ``--json`` in 22.05, and 22.05's
``sacct --json`` reports every exit code as 0 while the text ``ExitCode`` column is right.

Columns are found by name (from the header, or from ``fields`` when the command ran with ``--noheader``),
so the order of ``--format`` does not matter and absent columns take defaults. ``--parsable2`` does not
escape its delimiter: run with ``--delimiter`` set to a character job names cannot hold in practice (e.g.
``\\x1f``) and pass the same ``delimiter`` here; a line with the wrong number of columns raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from slurm.records import AccountingRecord, Association, JobState
from slurm.tres import parse_tres
from slurm.units import duration_minutes, duration_seconds

SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "User",
    "Account",
    "Partition",
    "QOS",
    "State",
    "ExitCode",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "Timelimit",
    "AllocTRES",
    "ReqTRES",
    "NodeList",
    "Comment",
)
"""What to ask ``sacct --format`` for: everything an AccountingRecord holds."""
ASSOCIATION_FIELDS = ("Cluster", "Account", "User", "Partition", "GrpTRES", "QOS")
"""What to ask ``sacctmgr list assoc format=`` for."""

# sacct's JobID: 446, 446.batch, 7_1, 7_1.batch, 7_[2-3%2] (pending tasks), 8+0 (heterogeneous)
_JOB_ID = re.compile(r"^(?P<base>\d+)(?:_(?P<task>\d+|\[[^\]]*\]))?(?:\+\d+)?(?:\.(?P<step>[^.]+))?$")
_NO_TIME = frozenset({"", "Unknown", "None", "N/A"})


def _rows(text: str, fields: Sequence[str] | None, delimiter: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if fields is None:
        if not lines:
            return []
        header, *lines = lines
        fields = header.split(delimiter)
    names = [f.strip().lower() for f in fields]
    rows = []
    for number, line in enumerate(lines, 1):
        cells = line.split(delimiter)
        if len(cells) != len(names):
            raise ValueError(f"line {number}: {len(cells)} columns where {len(names)} were expected: {line!r}")
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def _time(text: str, tz: tzinfo) -> datetime | None:
    """sacct prints local time without an offset: ``tz`` says which (run sacct with ``TZ=UTC`` and keep UTC)."""
    return None if text in _NO_TIME else datetime.fromisoformat(text).replace(tzinfo=tz)


def _exit_status(text: str) -> tuple[int | None, int | None]:
    """``3:0`` -> exit code 3, signal 0; ``0:15`` -> killed by signal 15."""
    code, sep, signal = text.partition(":")
    if not sep or not code.isdigit() or not signal.isdigit():
        return None, None
    return int(code), int(signal)


def _elapsed(row: dict[str, str]) -> int:
    if raw := row.get("elapsedraw"):
        return int(raw)
    text = row.get("elapsed")
    return (duration_seconds(text) or 0) if text else 0


def _record(row: dict[str, str], tz: tzinfo) -> AccountingRecord:
    shown = row.get("jobid") or row.get("jobidraw") or ""
    match = _JOB_ID.fullmatch(shown)
    if not match:
        raise ValueError(f"not a sacct job id: {shown!r}")
    raw = row.get("jobidraw") or shown
    job_id = int(raw.split(".", 1)[0].split("_", 1)[0].split("+", 1)[0])
    task = match["task"]
    exit_code, signal = _exit_status(row.get("exitcode", ""))
    limit = row.get("timelimit") or ""
    return AccountingRecord(
        job_id=job_id,
        step=match["step"],
        array_job_id=int(match["base"]) if task is not None else None,
        array_task_id=int(task) if task is not None and task.isdigit() else None,
        name=row.get("jobname", ""),
        user=row.get("user", ""),
        account=row.get("account", ""),
        partition=row.get("partition", ""),
        qos=row.get("qos") or None,
        state=JobState.parse(row.get("state")),
        elapsed_seconds=_elapsed(row),
        exit_code=exit_code,
        signal=signal,
        time_limit_minutes=duration_minutes(limit) if limit else None,
        submit_time=_time(row.get("submit", ""), tz),
        start_time=_time(row.get("start", ""), tz),
        end_time=_time(row.get("end", ""), tz),
        nodes="" if row.get("nodelist") == "None assigned" else row.get("nodelist", ""),
        comment=row.get("comment", ""),
        allocated=parse_tres(row.get("alloctres")),
        requested=parse_tres(row.get("reqtres")),
    )


def parse_sacct_parsable(
    text: str,
    *,
    fields: Sequence[str] | None = None,
    delimiter: str = "|",
    tz: tzinfo = UTC,
    steps: bool = True,
) -> list[AccountingRecord]:
    """Records of ``sacct --parsable2 [--noheader] --format=...``; ``steps=False`` keeps only job lines."""
    records = [_record(row, tz) for row in _rows(text, fields, delimiter)]
    return records if steps else [r for r in records if r.step is None]


def parse_associations(
    text: str, *, fields: Sequence[str] | None = ASSOCIATION_FIELDS, delimiter: str = "|"
) -> list[Association]:
    """``sacctmgr --noheader --parsable2 list assoc format=...`` (``fields=None``: the text has a header)."""
    return [
        Association(
            cluster=row.get("cluster", ""),
            account=row.get("account", ""),
            user=row.get("user") or None,
            partition=row.get("partition") or None,
            grp_tres=parse_tres(row.get("grptres")),
            qos=tuple(q for q in row.get("qos", "").split(",") if q),
        )
        for row in _rows(text, fields, delimiter)
    ]
