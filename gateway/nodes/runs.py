"""Provision runs as durable jobs: the worker claims a queued run with a lease, submits one ``state.apply`` per
batch of up to ``BATCH`` nodes through salt-api (``local_async`` with a list target; the jid is committed for
each of the batch's nodes as soon as Salt gives it), asks ``GET /jobs/<jid>`` (once per job, whatever its number
of nodes) until every node has returned or ``node_run_timeout_seconds`` is over, and stores each node's
per-state results as they arrive. The job's pillar holds what its nodes share under ``remotegpu`` and each node's
own facts under ``remotegpu_nodes:<id>``, which the formula's map.jinja merges over the rest.

**Crashes.** The lease (``lease_until``) is renewed while the run goes on; a worker that dies leaves it to
expire and the next claim takes the run over: nodes whose jid is recorded are *not* submitted again, their job
is looked up where the dead worker left it; only nodes without a jid are submitted. So a run is neither lost
nor applied twice (the one window: a worker killed between salt-api's answer and the jid's commit, which a
state run survives, being idempotent). Claims are one conditional UPDATE (queued and due, or running with an
expired lease), so of two racing workers one wins.

**Failures.** salt-api unreachable before any node was submitted: the attempt is retried after 10 s, then
20 s; the third failure fails the run. A run taken over ``MAX_CLAIMS`` times (its workers keep dying) fails.
Once submitted, a run ends ``done`` when every node returned with every state succeeded, else ``failed`` (its
nodes say why).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import grp
import os
import pwd
import socket
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.actor import Actor
from gateway.audit.writer import AUDIT_LOG, audit_row
from gateway.cluster.models import ClusterSnapshot
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.nodes import pillar as pillars
from gateway.nodes.models import DONE, FAILED, QUEUED, RUNNING, Node, ProvisionRun, RunTarget, StateResult
from gateway.nodes.salt_api import SaltApi, SaltApiError
from gateway.nodes.salt_results import MinionOutcome, detected_gpus, job_minions, job_returns, minion_outcome
from gateway.nodes.service import salt_api

log = structlog.get_logger("gateway.nodes.runs")
SYSTEM = Actor.system("provision")
MAX_ATTEMPTS = 3
"""Attempts that fail before any node has its job (salt-api away): then the run fails."""
MAX_CLAIMS = 6
"""Claims in all, takeovers of a dead worker's run included: a run that keeps killing its workers fails."""
AT_ONCE = 16
"""salt-api requests a run makes at once (GPU detections, job lookups)."""
BATCH = 200
"""Nodes per Salt job: one job's lookup answers for all of them (a lookup costs the master a runner)."""
RUNS = Counter("remotegpu_node_runs_total", "Provision runs ended, by outcome", ["outcome", "mode"])
RUN_SECONDS = Histogram(
    "remotegpu_node_run_seconds",
    "Wall time of provision runs, claim to end",
    ["mode"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
RUNNING_RUNS = Gauge("remotegpu_node_runs_running", "Provision runs this process runs")


class RunOptions(msgspec.Struct, frozen=True, kw_only=True):
    lease_seconds: float = 60.0
    backoff_seconds: float = 10.0
    runs_at_once: int = 4


DEFAULT_OPTIONS = RunOptions()


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owned(run_id: int, owner: str) -> Any:
    return and_(ProvisionRun.id == run_id, ProvisionRun.lease_owner == owner, ProvisionRun.status == RUNNING)


def _due(now: datetime) -> Any:
    return or_(
        and_(ProvisionRun.status == QUEUED, ProvisionRun.next_attempt_at <= now),
        and_(ProvisionRun.status == RUNNING, ProvisionRun.lease_until < now),
    )


def claim(session: Session, run_id: int, owner: str, lease_seconds: float) -> bool:
    now = utcnow()
    result = session.execute(
        update(ProvisionRun)
        .where(ProvisionRun.id == run_id, _due(now))
        .values(
            status=RUNNING,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=ProvisionRun.attempts + 1,
            started_at=func.coalesce(ProvisionRun.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _claim_due(session: Session, owner: str, limit: int, lease_seconds: float) -> list[int]:
    now = utcnow()
    for run_id in session.scalars(
        select(ProvisionRun.id).where(
            ProvisionRun.status == RUNNING, ProvisionRun.lease_until < now, ProvisionRun.attempts >= MAX_CLAIMS
        )
    ).all():  # its workers keep dying on it: no more takeovers
        _give_up(session, run_id, f"its worker stopped {MAX_CLAIMS} times (lease expired)", now)
    candidates = session.scalars(
        select(ProvisionRun.id)
        .where(_due(now))
        .order_by(ProvisionRun.next_attempt_at, ProvisionRun.id)
        .limit(limit * 4)
    ).all()
    claimed: list[int] = []
    for run_id in candidates:
        if len(claimed) == limit:
            break
        if claim(session, run_id, owner, lease_seconds):
            claimed.append(run_id)
    return claimed


def _give_up(session: Session, run_id: int, error: str, now: datetime) -> None:
    done = session.execute(
        update(ProvisionRun)
        .where(ProvisionRun.id == run_id, ProvisionRun.status == RUNNING, ProvisionRun.lease_until < now)
        .values(status=FAILED, finished_at=now, lease_owner=None, lease_until=None, error=error, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if done:
        session.execute(
            update(RunTarget)
            .where(RunTarget.run_id == run_id, RunTarget.status.in_((QUEUED, RUNNING)))
            .values(status=FAILED, finished_at=now, error=error)
        )
        RUNS.labels(FAILED, "unknown").inc()


def _audit(session: Session, run_id: int, action: str, node: str, **details: Any) -> None:
    session.execute(
        AUDIT_LOG.insert(),
        audit_row(SYSTEM, f"node.run_{action}", target_type="node", target=node, details={"run_id": run_id, **details}),
    )


class _Target(msgspec.Struct, kw_only=True):
    id: int
    node_id: int | None
    node: str
    jid: str | None
    submitted_at: datetime | None
    status: str


class _Loaded(msgspec.Struct, kw_only=True):
    run_id: int
    states: list[str]
    test: bool
    attempts: int
    targets: list[_Target]
    facts: dict[str, pillars.NodeFacts]
    users: list[pillars.PosixUser]
    cluster: str | None


def _load(session: Session, run_id: int, owner: str) -> _Loaded | None:
    run = session.scalar(select(ProvisionRun).where(_owned(run_id, owner)))
    if run is None:
        return None
    targets = session.scalars(select(RunTarget).where(RunTarget.run_id == run_id).order_by(RunTarget.id)).all()
    ids = [t.node_id for t in targets if t.node_id is not None]
    nodes = session.scalars(select(Node).where(Node.id.in_(ids))).all()
    users = session.scalars(
        select(User).where(User.deleted_at.is_(None), User.disabled.is_(False)).order_by(User.posix_name)
    ).all()
    cluster = session.scalar(select(ClusterSnapshot.cluster).where(ClusterSnapshot.singleton == 1))
    return _Loaded(
        run_id=run.id,
        states=list(run.states),
        test=run.test,
        attempts=run.attempts,
        targets=[
            _Target(
                id=t.id, node_id=t.node_id, node=t.node_name, jid=t.jid, submitted_at=t.submitted_at, status=t.status
            )
            for t in targets
        ],
        facts={
            n.name: pillars.NodeFacts(
                name=n.name, region=n.region, gpu_type=n.gpu_type, gpu_count=n.gpu_count, gpu_detect=n.gpu_detect
            )
            for n in nodes
        },
        users=[_posix(u.posix_name) for u in users],
        cluster=cluster,
    )


def _posix(name: str) -> pillars.PosixUser:
    """The user with their uid and gid where the gateway host knows the account (a shared directory)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return pillars.PosixUser(name=name)
    return pillars.PosixUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _users_gid() -> int | None:
    try:
        return grp.getgrnam(pillars.USERS_GROUP).gr_gid
    except KeyError:
        return None


def _redact(value: Any, secret: str | None) -> Any:
    """The munge key never reaches the database through a state's comment or diff."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "***")
    if isinstance(value, list):
        return [_redact(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, secret) for k, v in value.items()}
    return value


class _Run:
    def __init__(
        self, database: Database, settings: Settings, salt: SaltApi, loaded: _Loaded, owner: str, options: RunOptions
    ) -> None:
        self.database, self.settings, self.salt = database, settings, salt
        self.loaded, self.owner, self.options = loaded, owner, options
        self.lost = False
        self.secret: str | None = None

    # -- database steps (units of work) --

    def _renew(self, session: Session) -> bool:
        result = session.execute(
            update(ProvisionRun)
            .where(_owned(self.loaded.run_id, self.owner))
            .values(lease_until=utcnow() + timedelta(seconds=self.options.lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def renew(self) -> None:
        if not await self.database.run(self._renew):
            self.lost = True

    def _submitted(self, target: _Target, jid: str, session: Session) -> None:
        now = utcnow()
        session.execute(
            update(RunTarget).where(RunTarget.id == target.id).values(jid=jid, submitted_at=now, status=RUNNING)
        )
        _audit(session, self.loaded.run_id, "submitted", target.node, jid=jid, test=self.loaded.test)

    def _ended(self, target: _Target, outcome: MinionOutcome, session: Session) -> None:
        """The node's results, stored once (a run taken over after a crash may see the same job again)."""
        session.execute(delete(StateResult).where(StateResult.target_id == target.id))
        for s in outcome.states:
            session.add(
                StateResult(
                    target_id=target.id,
                    state_id=s.state_id[:255],
                    sls=s.sls[:255] if s.sls else None,
                    function=s.function[:128],
                    name=_redact(s.name, self.secret),
                    result=s.result,
                    changed=s.changed,
                    comment=_redact(s.comment, self.secret)[:20000],
                    changes=_redact(s.changes, self.secret),
                    duration_ms=s.duration_ms,
                    run_num=s.run_num,
                )
            )
        session.execute(
            update(RunTarget)
            .where(RunTarget.id == target.id)
            .values(
                status=DONE if outcome.ok else FAILED,
                finished_at=utcnow(),
                retcode=outcome.retcode,
                states_total=len(outcome.states),
                states_changed=outcome.changed,
                states_failed=outcome.failed,
                error=_redact(outcome.error, self.secret),
            )
        )
        _audit(session, self.loaded.run_id, "node_ended", target.node, ok=outcome.ok, failed=outcome.failed,
               changed=outcome.changed, test=self.loaded.test)  # fmt: skip

    def _gpus_found(self, node: str, kind: str | None, count: int, session: Session) -> None:
        session.execute(update(Node).where(Node.name == node).values(gpu_type=kind, gpu_count=count))

    # -- the run --

    def _pillar(self, node: str, munge: bytes | None, site: Mapping[str, Any]) -> dict[str, Any]:
        facts = self.loaded.facts[node]
        return pillars.build(facts, root=self.settings.node_pillar_root, munge_key=munge, users=self.loaded.users,
                             cluster=self.loaded.cluster, site=site, users_gid=_users_gid())  # fmt: skip

    def _needs_munge(self) -> bool:
        return any(s in ("remotegpu", "remotegpu.munge") for s in self.loaded.states)

    async def _detect(self, node: str) -> None:
        facts = self.loaded.facts[node]
        if not facts.gpu_detect:
            return
        grains = await self.salt.grains(node, "gpus")
        if grains is None:
            return
        kind, count = detected_gpus(grains.get("gpus"))
        self.loaded.facts[node] = msgspec.structs.replace(facts, gpu_type=kind, gpu_count=count)
        await self.database.run(partial(self._gpus_found, node, kind, count))

    async def submit(self) -> None:
        """Every node without a jid gets its job (a node removed since the run was made fails at once)."""
        pending = [t for t in self.loaded.targets if t.jid is None and t.status in (QUEUED, RUNNING)]
        if not pending:
            return
        munge = (
            await asyncio.to_thread(pillars.read_munge_key, self.settings.munge_key_path)
            if self._needs_munge() and self.settings.munge_key_path
            else None
        )
        if munge is not None:
            self.secret = base64.b64encode(munge).decode()
            if self.settings.salt_secrets_pillar:  # the master's pillar holds it: not in the jobs' arguments
                await asyncio.to_thread(pillars.write_secrets, self.settings.salt_secrets_pillar, munge)
                munge = None
        site = await asyncio.to_thread(pillars.read_site, self.settings.node_pillar_file)
        last_renew = time.monotonic()
        for start in range(0, len(pending), BATCH):  # one Salt job per batch; its jid committed as it comes
            if time.monotonic() - last_renew > self.options.lease_seconds / 3:
                await self.renew()
                last_renew = time.monotonic()
            if self.lost:
                return
            await self._submit_batch(pending[start : start + BATCH], munge, site)

    async def _submit_batch(self, batch: list[_Target], munge: bytes | None, site: Mapping[str, Any]) -> None:
        present = []
        for target in batch:
            if target.node in self.loaded.facts:
                present.append(target)
                continue
            gone = MinionOutcome(states=[], retcode=None, error="the node was removed before its job started")
            await self.database.run(partial(self._ended, target, gone))
            target.status = FAILED
        if not present:
            return
        nodes = [t.node for t in present]
        for start in range(0, len(nodes), AT_ONCE):
            await asyncio.gather(*(self._detect(node) for node in nodes[start : start + AT_ONCE]))
        jid, _ = await self.salt.state_apply_async(
            nodes, self.loaded.states, test=self.loaded.test, pillar=self._batch_pillar(nodes, munge, site)
        )  # a node Salt did not send it to is found out when the job is looked up (follow)
        await self.database.run(partial(self._submitted_all, present, jid))
        now = utcnow()
        for target in present:
            target.jid, target.status, target.submitted_at = jid, RUNNING, now

    def _submitted_all(self, targets: list[_Target], jid: str, session: Session) -> None:
        for target in targets:
            self._submitted(target, jid, session)

    def _batch_pillar(self, nodes: list[str], munge: bytes | None, site: Mapping[str, Any]) -> dict[str, Any]:
        """One pillar for the batch's job: what all its nodes share under ``remotegpu``, each node's own facts
        under ``remotegpu_nodes:<minion id>`` (map.jinja merges its own over the rest)."""
        pillar = {node: self._pillar(node, munge, site)["remotegpu"] for node in nodes}
        common = {k: v for k, v in pillar[nodes[0]].items() if k != "node"}
        return {"remotegpu": common, "remotegpu_nodes": {node: {"node": pillar[node]["node"]} for node in nodes}}

    async def _look_up(self, jid: str) -> dict[str, Any]:
        try:
            return await self.salt.job(jid)
        except SaltApiError as exc:  # salt-api away for a moment: the lease stays, ask again
            log.warning("node_job_lookup_failed", run=self.loaded.run_id, jid=jid, error=str(exc))
            return {}

    async def follow(self) -> None:
        """Ask for each open job until it returned or timed out; results stored as they come."""
        if self.secret is None and self._needs_munge():
            # a run taken over: what to redact from results still comes from the key (none readable: none to redact)
            with contextlib.suppress(pillars.PillarError):
                key = await asyncio.to_thread(pillars.read_munge_key, self.settings.munge_key_path)
                self.secret = base64.b64encode(key).decode()
        timeout = timedelta(seconds=self.settings.node_run_timeout_seconds)
        last_renew = time.monotonic()
        rounds = 0
        while not self.lost:
            open_targets = [t for t in self.loaded.targets if t.status == RUNNING and t.jid is not None]
            if not open_targets:
                return
            jids = sorted({str(t.jid) for t in open_targets})  # a batch's nodes share their job
            jobs: dict[str, dict[str, Any]] = {}
            for start in range(0, len(jids), AT_ONCE):
                chunk = jids[start : start + AT_ONCE]
                jobs |= zip(chunk, await asyncio.gather(*(self._look_up(jid) for jid in chunk)), strict=True)
            for target in open_targets:
                job = jobs[str(target.jid)]
                outcome = job_returns(job).get(target.node)
                if outcome is None:
                    minions = job_minions(job)
                    if minions is not None and target.node not in minions:
                        outcome = minion_outcome(f"Salt did not send the job to {target.node} (is its key accepted?)")
                    elif target.submitted_at is not None and utcnow() - target.submitted_at > timeout:
                        outcome = minion_outcome(
                            f"{target.node} did not return within {self.settings.node_run_timeout_seconds:.0f} s"
                        )
                if outcome is not None:
                    await self.database.run(partial(self._ended, target, outcome))
                    target.status = DONE if outcome.ok else FAILED
            if time.monotonic() - last_renew > self.options.lease_seconds / 3:
                await self.renew()
                last_renew = time.monotonic()
            if any(t.status == RUNNING for t in self.loaded.targets):
                # soon at first (a dry run returns in a second or two), then every node_poll_seconds
                await asyncio.sleep(min(self.settings.node_poll_seconds, 0.1 * 2**rounds))
                rounds += 1


def _finish(run_id: int, owner: str, session: Session) -> str | None:
    targets = session.scalars(select(RunTarget.status).where(RunTarget.run_id == run_id)).all()
    status = DONE if targets and all(t == DONE for t in targets) else FAILED
    failed = sum(1 for t in targets if t != DONE)
    now = utcnow()
    owned = session.execute(
        update(ProvisionRun)
        .where(_owned(run_id, owner))
        .values(
            status=status,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
            updated_at=now,
            error=None if status == DONE else f"{failed} of {len(targets)} nodes failed",
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return status if owned else None


def _fail(run_id: int, owner: str, error: str, options: RunOptions, session: Session) -> str | None:
    """An attempt failed before every node had its job: retried later, or the run failed (its open nodes too)."""
    run = session.scalar(select(ProvisionRun).where(_owned(run_id, owner)))
    if run is None:
        return None
    now = utcnow()
    last = run.attempts >= MAX_ATTEMPTS
    values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "error": error[:2000], "updated_at": now}
    if last:
        values.update(status=FAILED, finished_at=now)
        session.execute(
            update(RunTarget)
            .where(RunTarget.run_id == run_id, RunTarget.status.in_((QUEUED, RUNNING)), RunTarget.jid.is_(None))
            .values(status=FAILED, finished_at=now, error=error[:2000])
        )
    else:
        values.update(
            status=QUEUED, next_attempt_at=now + timedelta(seconds=options.backoff_seconds * 2 ** (run.attempts - 1))
        )
    session.execute(update(ProvisionRun).where(_owned(run_id, owner)).values(**values))
    return FAILED if last else "retry"


async def run_one(
    database: Database,
    settings: Settings,
    salt: SaltApi,
    run_id: int,
    owner: str,
    options: RunOptions = DEFAULT_OPTIONS,
) -> str:
    """One claimed run to its end (or to a retry); what became of it: done, failed, retry or lost."""
    loaded = await database.run(partial(_load, run_id=run_id, owner=owner))
    if loaded is None:
        return "lost"
    mode = "test" if loaded.test else "apply"
    started = time.monotonic()
    RUNNING_RUNS.inc()
    run = _Run(database, settings, salt, loaded, owner, options)
    outcome: str
    try:
        try:
            await run.submit()
        except (SaltApiError, pillars.PillarError) as exc:
            if any(t.jid for t in loaded.targets):
                log.warning("node_run_submit_failed", run=run_id, error=str(exc))
                for t in loaded.targets:  # those not submitted fail; the others are followed to their end
                    if t.jid is None and t.status in (QUEUED, RUNNING):
                        await database.run(partial(run._ended, t, minion_outcome(str(exc))))
                        t.status = FAILED
            else:
                failed: str | None = await database.run(partial(_fail, run_id, owner, str(exc), options))
                log.warning("node_run_attempt_failed", run=run_id, outcome=failed or "lost", error=str(exc))
                return failed or "lost"
        await run.follow()
        if run.lost:
            return "lost"
        finished: str | None = await database.run(partial(_finish, run_id, owner))
        outcome = finished or "lost"
    finally:
        RUNNING_RUNS.dec()
    if outcome in (DONE, FAILED):
        RUNS.labels(outcome, mode).inc()
        RUN_SECONDS.labels(mode).observe(time.monotonic() - started)
    log.info("node_run", run=run_id, outcome=outcome, test=loaded.test, nodes=len(loaded.targets))
    return outcome


_RUNNING: set[asyncio.Task[str]] = set()


async def run_due(
    database: Database,
    settings: Settings,
    *,
    salt: SaltApi | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    owner: str | None = None,
    wait: bool = True,
) -> list[int]:
    """The worker's provision step: claim due runs (up to ``runs_at_once`` less those running here) and run
    them; the ids claimed. Without salt-api configured nothing is claimed (queued runs wait for one)."""
    _RUNNING.difference_update([t for t in _RUNNING if t.done()])
    free = options.runs_at_once - len(_RUNNING)
    client = salt or salt_api(settings)
    if free <= 0 or client is None:
        return []
    owner = owner or default_owner()
    claimed = await database.run(partial(_claim_due, owner=owner, limit=free, lease_seconds=options.lease_seconds))
    if not claimed:
        if salt is None:
            await client.close()
        return []
    tasks = [asyncio.create_task(run_one(database, settings, client, run_id, owner, options)) for run_id in claimed]

    async def close_after() -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        if salt is None:
            await client.close()

    closer = asyncio.create_task(close_after())
    if wait:
        await asyncio.gather(*tasks)
        await closer
    else:
        _RUNNING.update(tasks)
        for task in tasks:
            task.add_done_callback(_RUNNING.discard)
        _CLOSERS.add(closer)
        closer.add_done_callback(_CLOSERS.discard)
    return claimed


_CLOSERS: set[asyncio.Task[None]] = set()
