"""The accounting ingest: Slurm's accounting records (``sacct``/slurmdbd through the ``slurm/`` adapter) of the
cluster since the last watermark, minus an overlap, rated and charged to their workspaces' ledgers.

* One usage record per job allocation (an array task is a job of its own; steps are not billed apart: the
  allocation is what a workspace holds), keyed by (cluster, Slurm job id, submit time); AllocTRES only.
* The Slurm account names the workspace; the job is the gateway's training job or environment session where
  the gateway made it (its Slurm id and account), else ``other`` (submitted with ``sbatch -A`` by hand).
* Running jobs are charged as they run: each ingest rates the minutes so far and posts the difference to what
  was charged; the ended job's record settles it (``final``). So a job's entries add up to its final rating.
* Exactly once: a batch is one transaction (its usage records, its ledger entries and the balances they move);
  ledger keys are unique and a usage record moves only from the values it was read with. Re-running any window
  finds nothing new to charge. One ingest runs per cluster at a time (a lease in ``billing_ingest_cursors``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.billing.ledger import Moved, insert_rows, post
from gateway.billing.models import ENVIRONMENT, OTHER, TRAINING, USAGE, IngestCursor, Price, UsageRecord
from gateway.billing.money import ZERO
from gateway.billing.rating import Price as RatingPrice
from gateway.billing.rating import PriceBook, billing_minutes, gpu_type_of, gpus_of, rate
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.environments.models import EnvironmentSession
from gateway.jobs.models import ENVIRONMENT as ENVIRONMENT_JOB
from gateway.jobs.models import TrainingJob
from gateway.jobs.origin import parse_comment
from gateway.workspaces.models import Workspace
from slurm.client import SlurmClient
from slurm.records import AccountingRecord, JobState

log = structlog.get_logger("gateway.billing.ingest")
USAGE_RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
BATCH = 2000
"""Records per transaction."""

RECORDS_INGESTED = Counter("remotegpu_billing_records_ingested_total", "Accounting records ingested (new or changed)")
CHARGED = Counter(
    "remotegpu_billing_charged_total", "Usage charged, in the workspace's currency (by slug)", ["workspace"]
)
INGEST_LAG = Gauge("remotegpu_billing_ingest_lag_seconds", "Age of the accounting ingest's watermark", ["cluster"])


@dataclass
class IngestResult:
    records: int = 0
    """Accounting records read (allocations, not steps)."""
    charged: int = 0
    """Records that moved money (new or changed)."""
    entries: int = 0
    skipped: int = 0
    """Records not billed: pending, never started, or under an account no workspace has."""
    moved: dict[int, Moved] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Context:
    cluster: str
    workspaces: Mapping[str, tuple[int, str]]
    """Slurm account -> (workspace id, currency)."""
    slugs: Mapping[int, str]
    users: Mapping[str, int]
    books: Mapping[str, PriceBook]
    now: datetime


def usage_key(cluster: str, record: AccountingRecord) -> str:
    submitted = int(record.submit_time.timestamp()) if record.submit_time else 0
    return f"{cluster}:{record.job_id}:{submitted}"


def price_books(session: Session) -> dict[str, PriceBook]:
    """Every currency's prices, as rating reads them."""
    rows: dict[str, list[RatingPrice]] = {}
    for price in session.scalars(select(Price)):
        rows.setdefault(price.currency, []).append(
            RatingPrice(
                resource=price.resource, amount=price.amount, valid_from=price.valid_from, valid_until=price.valid_until
            )
        )
    return {currency: PriceBook(prices) for currency, prices in rows.items()}


def _context(session: Session, cluster: str, now: datetime) -> _Context:
    rows = session.execute(
        select(Workspace.id, Workspace.slurm_account, Workspace.currency, Workspace.slug).order_by(
            Workspace.deleted_at.is_(None), Workspace.id
        )
    ).all()  # deleted workspaces too (their last jobs still cost), a live one winning an account name it reused
    workspaces = {account: (ws_id, currency) for ws_id, account, currency, _ in rows}
    slugs = {ws_id: slug for ws_id, _, _, slug in rows}
    users = dict(session.execute(select(User.posix_name, User.id)).all())
    return _Context(
        cluster=cluster, workspaces=workspaces, slugs=slugs, users=users, books=price_books(session), now=now
    )


def billable(records: Iterable[AccountingRecord]) -> list[AccountingRecord]:
    """Allocations that ran: steps, pending jobs and jobs that never started hold nothing to bill."""
    return [
        r
        for r in records
        if r.step is None and r.start_time is not None and r.state is not JobState.PENDING and r.allocated
    ]


def _gateway_jobs(session: Session, batch: Sequence[AccountingRecord], ctx: _Context) -> dict[int, list[Any]]:
    """The gateway's jobs under the batch's Slurm ids (an array's by its array id), with their environment."""
    ids = {r.array_job_id or r.job_id for r in batch}
    found: dict[int, list[Any]] = {}
    for chunk in _chunks_for(session, sorted(ids)):
        rows = session.execute(
            select(
                TrainingJob.slurm_job_id,
                TrainingJob.id,
                TrainingJob.workspace_id,
                TrainingJob.kind,
                TrainingJob.submitted_at,
                TrainingJob.created_at,
                EnvironmentSession.environment_id,
            )
            .outerjoin(EnvironmentSession, EnvironmentSession.job_id == TrainingJob.id)
            .where(_among(session, TrainingJob.slurm_job_id, chunk))
        ).all()
        for row in rows:
            found.setdefault(row[0] or 0, []).append(row)
    return found


def _resource(
    record: AccountingRecord, workspace_id: int, jobs: Mapping[int, list[Any]]
) -> tuple[str, str | None, str | None]:
    """(resource type, resource id, gateway job id) of a record."""
    origin = parse_comment(record.comment)
    candidates = [
        row
        for row in jobs.get(record.array_job_id or record.job_id, ())
        if row.workspace_id == workspace_id
        and (origin is None or origin.job_id == row.id)
        and (record.submit_time is None or row.created_at <= record.submit_time + timedelta(minutes=5))
    ]  # Slurm ids repeat (a wiped cluster, MaxJobId): the newest job made before Slurm's submit time is it
    if not candidates:
        return OTHER, None, None
    row = max(candidates, key=lambda r: r.created_at)
    if row.kind == ENVIRONMENT_JOB:
        return ENVIRONMENT, row.environment_id, row.id
    return TRAINING, row.id, row.id


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _chunks_for(session: Session, items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    """``items`` in pieces one ``IN`` can hold (PostgreSQL: all at once, as one array)."""
    return [items] if session.get_bind().dialect.name == "postgresql" else _chunks(items, 500)


def _among(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values``; on PostgreSQL ``column IN (SELECT unnest(array))``: one parameter, not one per value
    (psycopg rewrites each placeholder in Python, and a query with hundreds of them is never in its cache), and
    a semi-join whatever the plan: ``= ANY(array)`` under a generic plan made while the table looked empty
    scans it comparing each row with each value (2,000 x 20,000 a batch: 11 of 14 s)."""
    if session.get_bind().dialect.name == "postgresql":
        return column.in_(select(func.unnest(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))))
    return column.in_(values)


def _existing(session: Session, keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for chunk in _chunks_for(session, keys):
        for row in session.execute(
            select(UsageRecord.id, UsageRecord.key, UsageRecord.minutes, UsageRecord.amount, UsageRecord.final).where(
                _among(session, UsageRecord.key, chunk)
            )
        ).all():
            out[row.key] = row
    return out


def _charged_until(record: AccountingRecord, minutes: int) -> datetime:
    assert record.start_time is not None
    end = record.start_time + timedelta(minutes=minutes)
    return min(end, record.end_time) if record.end_time and record.state.is_terminal else end


def ingest_batch(session: Session, batch: Sequence[AccountingRecord], ctx: _Context, result: IngestResult) -> None:
    """Rate and charge one batch of billable records, in the caller's transaction."""
    known = [r for r in batch if r.account in ctx.workspaces]
    result.skipped += len(batch) - len(known)
    if not known:
        return
    jobs = _gateway_jobs(session, known, ctx)
    keys = {id(r): usage_key(ctx.cluster, r) for r in known}
    existing = _existing(session, list(keys.values()))
    new_rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    pending_entries: dict[str, dict[str, Any]] = {}  # by usage key, for records inserted in this batch
    empty = PriceBook(())
    for record in known:
        key = keys[id(record)]
        before = existing.get(key)
        if before is not None and before.final:
            continue
        workspace_id, currency = ctx.workspaces[record.account]
        final = record.state.is_terminal or record.state is JobState.REQUEUED  # a requeued run has ended
        minutes = billing_minutes(record.elapsed_seconds)
        assert record.start_time is not None
        rating = rate(record.allocated, record.start_time, minutes, ctx.books.get(currency, empty))
        gpus = gpus_of(record.allocated)
        old_minutes, old_amount = (before.minutes, before.amount) if before is not None else (0, ZERO)
        if before is not None and (minutes, rating.amount) == (old_minutes, old_amount) and not final:
            continue
        values = {
            "state": record.state.value,
            "end_time": record.end_time if final else None,
            "elapsed_seconds": record.elapsed_seconds,
            "minutes": minutes,
            "amount": rating.amount,
            "final": final,
            "tres": dict(record.allocated),
            "updated_at": ctx.now,
        }
        entry = None
        if (minutes, rating.amount) != (old_minutes, old_amount):
            entry = {
                "workspace_id": workspace_id,
                "key": f"{USAGE}:{key}:{'final' if final else minutes}",
                "kind": USAGE,
                "amount": old_amount - rating.amount,
                "currency": currency,
                "at": _charged_until(record, minutes),
                "minutes": minutes - old_minutes,
                "gpu_minutes": gpus * (minutes - old_minutes),
            }
        if before is None:
            resource_type, resource_id, job_id = _resource(record, workspace_id, jobs)
            new_rows.append(
                {
                    **values,
                    "key": key,
                    "cluster": ctx.cluster,
                    "slurm_job_id": record.job_id,
                    "array_job_id": record.array_job_id,
                    "array_task_id": record.array_task_id,
                    "workspace_id": workspace_id,
                    "user_id": ctx.users.get(record.user),
                    "posix_user": record.user,
                    "account": record.account,
                    "resource_type": resource_type,
                    "resource_id": resource_id,
                    "job_id": job_id,
                    "name": record.name[:200],
                    "partition": record.partition,
                    "gpu_type": gpu_type_of(record.allocated),
                    "gpus": gpus,
                    "cpus": record.allocated.get("cpu", 0),
                    "memory_mib": record.allocated.get("mem", 0),
                    "submit_time": record.submit_time,
                    "start_time": record.start_time,
                    "currency": currency,
                }
            )
            if entry is not None:
                pending_entries[key] = entry
        else:
            moved = session.execute(
                update(UsageRecord)
                .where(
                    UsageRecord.id == before.id,
                    UsageRecord.final.is_(False),
                    UsageRecord.minutes == old_minutes,
                    UsageRecord.amount == old_amount,
                )
                .values(values)
            ).rowcount  # type: ignore[attr-defined]
            if moved != 1:  # another writer moved it since it was read: this batch is retried as a whole
                raise StaleUsage(key)
            if entry is not None:
                entries.append({**entry, "usage_id": before.id})
        result.charged += 1
        CHARGED.labels(ctx.slugs[workspace_id])  # the series exists from the first record
    for usage_id, key in insert_rows(session, USAGE_RECORDS, new_rows, returning=("id", "key")):
        if key in pending_entries:
            entries.append({**pending_entries[key], "usage_id": usage_id})
    moved = post(session, entries, now=ctx.now)
    result.entries += len(entries)
    for workspace_id, change in moved.items():
        previous = result.moved.get(workspace_id)
        result.moved[workspace_id] = (
            change
            if previous is None
            else Moved(workspace_id, previous.amount + change.amount, change.balance, previous.before)
        )


class StaleUsage(Exception):
    """A usage record changed between its read and its update (two ingests at once, which the lease prevents)."""


async def ingest(
    database: Database,
    records: Sequence[AccountingRecord],
    *,
    cluster: str,
    now: datetime | None = None,
    batch_size: int = BATCH,
    after_batch: Callable[[int], None] | None = None,
) -> IngestResult:
    """Rate and charge ``records`` (one sacct answer), a transaction per ``batch_size`` records."""
    now = now or utcnow()
    todo = billable(records)
    result = IngestResult(records=len(todo), skipped=0)
    ctx = await database.run(lambda s: _context(s, cluster, now), write=False)
    for number, batch in enumerate(_chunks(todo, batch_size)):
        await database.run(lambda s, b=batch: ingest_batch(s, b, ctx, result))  # type: ignore[misc]
        if after_batch is not None:
            after_batch(number)
    RECORDS_INGESTED.inc(result.charged)
    for workspace_id, change in result.moved.items():
        CHARGED.labels(ctx.slugs[workspace_id]).inc(float(-change.amount) if change.amount < 0 else 0.0)
    return result


# --- the worker's cycle: lease, sacct since the watermark, ingest, watermark ---------------------------------


class Ingest:
    """The worker's accounting ingest for the cluster ``slurm`` talks to."""

    def __init__(
        self,
        database: Database,
        slurm: SlurmClient,
        *,
        overlap: timedelta = timedelta(minutes=10),
        lookback: timedelta = timedelta(days=2),
        lease: timedelta = timedelta(minutes=10),
    ) -> None:
        self.database = database
        self.slurm = slurm
        self.overlap = overlap
        self.lookback = lookback
        """How far back the first ingest of a cluster reads."""
        self.lease = lease
        self.owner = uuid.uuid4().hex[:16]
        self._cluster: str | None = None

    async def cluster(self) -> str:
        if self._cluster is None:
            self._cluster = await self.slurm.cluster_name() or "cluster"
        return self._cluster

    async def run_once(self) -> IngestResult | None:
        """One ingest; None when another worker holds the lease."""
        cluster = await self.cluster()
        asked_at = utcnow()
        claimed = await self.database.run(lambda s: _claim(s, cluster, self.owner, asked_at, self.lease))
        if claimed is False:
            return None
        watermark = claimed if isinstance(claimed, datetime) else None
        if watermark is not None:
            INGEST_LAG.labels(cluster).set(max(0.0, (asked_at - watermark).total_seconds()))
        accounts, first = await self.database.run(_accounts, write=False)
        # the first read goes back to the first workspace (nothing before it is a workspace's), at most lookback
        since = (watermark or max(first or asked_at, asked_at - self.lookback)) - self.overlap
        try:
            records = await self.slurm.accounting(since, accounts=accounts)
            result = await ingest(self.database, records, cluster=cluster, now=asked_at)
        except Exception as exc:
            error = repr(exc)
            await self.database.run(lambda s: _release(s, cluster, self.owner, None, 0, error))
            raise
        await self.database.run(lambda s: _release(s, cluster, self.owner, asked_at, result.charged, None))
        INGEST_LAG.labels(cluster).set(max(0.0, (utcnow() - asked_at).total_seconds()))
        return result

    async def lag_seconds(self) -> float | None:
        cluster = await self.cluster()
        watermark = await self.database.run(
            lambda s: s.scalar(select(IngestCursor.watermark).where(IngestCursor.cluster == cluster)), write=False
        )
        return None if watermark is None else (utcnow() - watermark).total_seconds()


def _accounts(session: Session) -> tuple[list[str], datetime | None]:
    """The Slurm accounts of every workspace (deleted ones too), and when the first workspace was made."""
    accounts = sorted(set(session.scalars(select(Workspace.slurm_account))))
    return accounts, session.scalar(select(func.min(Workspace.created_at)))


def _claim(session: Session, cluster: str, owner: str, now: datetime, lease: timedelta) -> datetime | bool | None:
    """Take the cluster's lease (making its cursor on first use): its watermark, or False when held by another."""
    if session.get(IngestCursor, cluster) is None:
        session.add(IngestCursor(cluster=cluster))
        session.flush()
    taken = session.execute(
        update(IngestCursor)
        .where(
            IngestCursor.cluster == cluster,
            or_(
                IngestCursor.lease_owner.is_(None),
                IngestCursor.lease_owner == owner,
                and_(IngestCursor.lease_until.is_not(None), IngestCursor.lease_until < now),
            ),
        )
        .values(lease_owner=owner, lease_until=now + lease)
    ).rowcount  # type: ignore[attr-defined]
    if taken != 1:
        return False
    return session.scalar(select(IngestCursor.watermark).where(IngestCursor.cluster == cluster))


def _release(
    session: Session, cluster: str, owner: str, watermark: datetime | None, records: int, error: str | None
) -> None:
    values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "last_run_at": utcnow(), "last_error": error}
    if watermark is not None:
        values["watermark"] = watermark
        values["records"] = IngestCursor.records + records
    session.execute(
        update(IngestCursor).where(IngestCursor.cluster == cluster, IngestCursor.lease_owner == owner).values(values)
    )


__all__ = ["Decimal", "Ingest", "IngestResult", "ingest", "usage_key"]
