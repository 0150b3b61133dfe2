"""The nodes service: registration, the list merged with the poller's cluster snapshot (never a Slurm call per
request), bootstrap tokens and their one exchange for Salt keys, provision runs (queued here, run by the worker:
gateway.nodes.runs), drain and resume through Slurm, removal. Every admin action is audited, and so is every
refused bootstrap.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import Counter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.cluster import service as cluster_service
from gateway.cluster.models import ClusterSnapshot
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.errors import Conflict, InvalidInput, NotFound, Unauthorized, Unavailable
from gateway.jobs.models import TrainingJob
from gateway.nodes import tokens
from gateway.nodes.models import (
    BOOTSTRAPPED,
    QUEUED,
    RUNNING,
    BootstrapToken,
    Node,
    ProvisionRun,
    RunTarget,
    StateResult,
)
from gateway.nodes.salt_api import SaltApi, SaltApiError
from gateway.nodes.schemas import (
    BootstrapCommandOut,
    BootstrapExchange,
    BootstrapFile,
    BootstrapOut,
    BootstrapTokenOut,
    GpuSpec,
    LastRunOut,
    NodeCreate,
    NodeGpusOut,
    NodeOut,
    NodesOut,
    ProvisionCreate,
    ProvisionManyCreate,
    RunOut,
    SlurmGpusOut,
    SlurmNodeOut,
    StateResultOut,
    TargetOut,
)
from slurm.client import SlurmClient
from slurm.errors import SlurmError
from slurm.records import Node as SlurmNode

log = structlog.get_logger("gateway.nodes")
BOOTSTRAPS = Counter("remotegpu_node_bootstraps_total", "Bootstrap token exchanges", ["outcome"])
BOOTSTRAP = Actor.system("bootstrap")
SCRIPT_PATH = "/api/v1/nodes/bootstrap.sh"


def salt_api(settings: Settings) -> SaltApi | None:
    """The settings' salt-api client; None when no salt-api is configured."""
    if not settings.salt_api_url or settings.salt_api_password is None:
        return None
    return SaltApi(
        settings.salt_api_url,
        username=settings.salt_api_username,
        password=settings.salt_api_password,
        eauth=settings.salt_api_eauth,
        timeout=settings.salt_api_timeout_seconds,
    )


def master_host(settings: Settings) -> str:
    if settings.salt_master_host:
        return settings.salt_master_host
    host = urlsplit(settings.salt_api_url or "").hostname
    return host or "salt"


# --- reading ---------------------------------------------------------------------------------------------


def _slurm_view(node: SlurmNode | None) -> SlurmNodeOut | None:
    if node is None:
        return None
    return SlurmNodeOut(
        state=node.state,
        reason=node.reason,
        partitions=list(node.partitions),
        cpus=node.cpus,
        cpus_allocated=node.cpus_allocated,
        memory_mib=node.memory_mib,
        memory_allocated_mib=node.memory_allocated_mib,
        gpus=[SlurmGpusOut(type=g.type, total=g.total, allocated=g.allocated) for g in node.gpus],
    )


def _out(node: Any, slurm: SlurmNode | None, jobs: Sequence[int], last: Any | None) -> NodeOut:
    """``node``: a Node or a row of its columns; ``last``: a row of :data:`_LAST_RUN`'s columns."""
    last_run = None
    if last is not None:
        last_run = LastRunOut(
            id=last.id,
            status=last.status,
            test=last.test,
            states_changed=last.states_changed,
            states_failed=last.states_failed,
            finished_at=last.finished_at,
        )
    return NodeOut(
        name=node.name,
        address=node.address,
        region=node.region,
        gpus=NodeGpusOut(type=node.gpu_type, count=node.gpu_count, detect=node.gpu_detect),
        key_state=node.key_state,
        bootstrapped_at=node.bootstrapped_at,
        slurm=_slurm_view(slurm),
        jobs=sorted(jobs),
        last_run=last_run,
        created_at=node.created_at,
    )


_NODE_COLUMNS = (
    Node.id,
    Node.name,
    Node.address,
    Node.region,
    Node.gpu_type,
    Node.gpu_count,
    Node.gpu_detect,
    Node.key_state,
    Node.bootstrapped_at,
    Node.created_at,
)
_LAST_RUN = (
    RunTarget.node_id,
    ProvisionRun.id,
    RunTarget.status,
    ProvisionRun.test,
    RunTarget.states_changed,
    RunTarget.states_failed,
    RunTarget.finished_at,
)


async def _jobs_by_node(session: AsyncSession, names: Iterable[str] | None = None) -> dict[str, list[int]]:
    wanted = set(names) if names is not None else None
    found: dict[str, list[int]] = {}
    rows = await session.execute(
        select(TrainingJob.slurm_job_id, TrainingJob.nodes).where(
            TrainingJob.state == "RUNNING", TrainingJob.slurm_job_id.is_not(None)
        )
    )
    for job_id, nodes in rows:
        if job_id is None:
            continue
        for name in nodes or ():
            if wanted is None or name in wanted:
                found.setdefault(name, []).append(int(job_id))
    return found


async def _last_runs(session: AsyncSession, node_ids: Sequence[int] | None) -> dict[int, Any]:
    """Each node's newest run, as rows of :data:`_LAST_RUN` (plain rows: 500 ORM objects cost milliseconds)."""
    newest = select(RunTarget.node_id, func.max(RunTarget.run_id).label("run_id")).group_by(RunTarget.node_id)
    if node_ids is not None:
        newest = newest.where(RunTarget.node_id.in_(node_ids))
    sub = newest.subquery()
    rows = await session.execute(
        select(*_LAST_RUN)
        .join(sub, sub.c.run_id == ProvisionRun.id)
        .join(RunTarget, (RunTarget.run_id == ProvisionRun.id) & (RunTarget.node_id == sub.c.node_id))
    )
    return {row.node_id: row for row in rows if row.node_id is not None}


def _newest(column: Any, *where: Any) -> Any:
    return select(func.max(column)).where(*where).scalar_subquery()


def _count(column: Any, *where: Any) -> Any:
    return select(func.count(column)).where(*where).scalar_subquery()


_VERSION = select(
    _count(Node.id),
    _newest(Node.id),
    _newest(Node.updated_at),
    _newest(RunTarget.id),
    _newest(RunTarget.submitted_at),
    _newest(RunTarget.finished_at),
    _count(TrainingJob.id, TrainingJob.state == "RUNNING"),
    _newest(TrainingJob.updated_at, TrainingJob.state == "RUNNING"),
    select(ClusterSnapshot.updated_at).where(ClusterSnapshot.singleton == 1).scalar_subquery(),
    select(ClusterSnapshot.error).where(ClusterSnapshot.singleton == 1).scalar_subquery(),
)
"""What the list is made of, in one indexed query: nodes (added, changed, removed), the newest run's targets
(made, submitted, ended), the running jobs, the snapshot. The same answer: the same list."""


class _Listed:
    """This process's last list, as JSON, and what it was made of."""

    version: tuple[Any, ...] | None = None
    items: bytes = b"[]"


async def list_nodes_json(database: Database, session: AsyncSession, settings: Settings) -> bytes:
    """``NodesOut`` as JSON: the items made again only when what they are made of changed (500 nodes cost ten
    milliseconds and more to read and build; the version query, a hot read, a fraction of one), ``stale``
    always of now."""
    version = tuple((await database.rows(_VERSION, {}))[0])
    snapshot_at, error = version[-2], version[-1]
    if isinstance(snapshot_at, datetime):
        snapshot_at = snapshot_at.replace(tzinfo=UTC) if snapshot_at.tzinfo is None else snapshot_at.astimezone(UTC)
    if version != _Listed.version:
        out = await list_nodes(session, settings)
        _Listed.items, _Listed.version = msgspec.json.encode(out.items), version
    stale = snapshot_at is None or error is not None or _stale_at(snapshot_at, settings)
    return b"".join(
        (b'{"items":', _Listed.items, b',"snapshot_at":', msgspec.json.encode(snapshot_at), b',"stale":',
         b"true" if stale else b"false", b"}")
    )  # fmt: skip


async def list_nodes(session: AsyncSession, settings: Settings) -> NodesOut:
    """Every node by name, each with Slurm's view of it from the last snapshot, its running jobs, its last run."""
    nodes = (await session.execute(select(*_NODE_COLUMNS).order_by(Node.name))).all()
    row, slurm_nodes, _ = await cluster_service.load(session)
    by_name = {n.name: n for n in slurm_nodes}
    jobs = await _jobs_by_node(session)
    last = await _last_runs(session, None)
    return NodesOut(
        items=[_out(n, by_name.get(n.name), jobs.get(n.name, ()), last.get(n.id)) for n in nodes],
        snapshot_at=row.updated_at if row is not None else None,
        stale=_stale(row, settings),
    )


def _stale(row: ClusterSnapshot | None, settings: Settings) -> bool:
    if row is None or row.updated_at is None or row.error is not None:
        return True
    return _stale_at(row.updated_at, settings)


def _stale_at(updated_at: datetime, settings: Settings) -> bool:
    limit = timedelta(seconds=cluster_service.STALE_AFTER_INTERVALS * settings.poll_interval_seconds)
    return utcnow() - updated_at > limit


async def node_named(session: AsyncSession, name: str, *, for_update: bool = False) -> Node:
    query = select(Node).where(Node.name == name)
    if for_update:
        query = query.with_for_update()
    node = await session.scalar(query)
    if node is None:
        raise NotFound(f"no node {name!r}", field="name")
    return node


async def get_node(session: AsyncSession, name: str) -> NodeOut:
    node = await node_named(session, name)
    _, slurm_nodes, _ = await cluster_service.load(session)
    slurm = next((n for n in slurm_nodes if n.name == name), None)
    jobs = await _jobs_by_node(session, [name])
    last = await _last_runs(session, [node.id])
    return _out(node, slurm, jobs.get(name, ()), last.get(node.id))


# --- registration and bootstrap tokens -------------------------------------------------------------------


def bootstrap_command(settings: Settings, node: str, token: str) -> str:
    """What a person runs as root on the node: fetch the gateway's script (no secret in it or in the URL) and
    run it with the node's name and token in its environment."""
    base = settings.gateway_url
    env = " ".join(
        f"{key}={shlex.quote(value)}"
        for key, value in (("REMOTEGPU_URL", base), ("REMOTEGPU_NODE", node), ("REMOTEGPU_TOKEN", token))
    )
    return f"curl -fsS {shlex.quote(base + SCRIPT_PATH)} | env {env} sh"


def can_bootstrap(settings: Settings) -> bool:
    """Tokens are issued only where they can be spent: a secret to sign them, a salt-api to make the keys."""
    return bool(settings.node_bootstrap_secret and settings.salt_api_url and settings.salt_api_password is not None)


async def _issue(session: AsyncSession, settings: Settings, node: Node) -> BootstrapTokenOut | None:
    secret = settings.node_bootstrap_secret
    if not secret or not can_bootstrap(settings):
        return None
    now = utcnow()
    token, claims = tokens.issue(secret, node.name, now)
    expires = datetime.fromtimestamp(claims.expires, UTC)
    session.add(BootstrapToken(node_id=node.id, nonce=claims.nonce, issued_at=now, expires_at=expires))
    return BootstrapTokenOut(token=token, expires_at=expires, command=bootstrap_command(settings, node.name, token))


def _gpu_fields(gpus: GpuSpec | str | None) -> dict[str, Any]:
    if isinstance(gpus, GpuSpec):
        return {"gpu_type": gpus.type, "gpu_count": gpus.count, "gpu_detect": False}
    if gpus == "detect":
        return {"gpu_type": None, "gpu_count": 0, "gpu_detect": True}
    return {"gpu_type": None, "gpu_count": 0, "gpu_detect": False}


async def register(
    session: AsyncSession, admin: Actor, settings: Settings, data: NodeCreate
) -> tuple[NodeOut, BootstrapTokenOut | None]:
    node = Node(name=data.name, address=data.address, region=data.region, created_by=admin.user_id,
                **_gpu_fields(data.gpus))  # fmt: skip
    session.add(node)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"node {data.name!r} is registered already", field="name") from None
    issued = await _issue(session, settings, node)
    record(session, admin, "node.register", target_type="node", target=node.name,
           details={"address": data.address, "region": data.region, "gpus": _gpu_fields(data.gpus),
                    "token_expires_at": issued.expires_at.isoformat() if issued else None})  # fmt: skip
    await session.commit()
    return await get_node(session, node.name), issued


async def new_bootstrap_command(
    session: AsyncSession, admin: Actor, settings: Settings, name: str
) -> BootstrapCommandOut:
    """A fresh token (the one made at registration is not kept), and the command that spends it."""
    node = await node_named(session, name)
    issued = await _issue(session, settings, node)
    if issued is None:  # configuration, not a failure: 409, as for other states that refuse a request
        raise Conflict("the gateway bootstraps no node: it needs node_bootstrap_secret and salt_api_url", field="name")
    record(session, admin, "node.bootstrap_token", target_type="node", target=node.name,
           details={"expires_at": issued.expires_at.isoformat()})  # fmt: skip
    await session.commit()
    return BootstrapCommandOut(node=node.name, command=issued.command, expires_at=issued.expires_at)


async def _refuse(database: Database, node: str, reason: str, claims: tokens.Claims | None) -> Unauthorized:
    """The audit entry of a refused exchange, committed on its own (the request fails), and the 401 to raise."""
    BOOTSTRAPS.labels(reason).inc()
    log.warning("node_bootstrap_refused", node=node, reason=reason)
    async with database.session() as session:
        record(session, BOOTSTRAP, "node.bootstrap_refused", target_type="node", target=node,
               details={"reason": reason, "token_node": claims.node if claims else None})  # fmt: skip
        await session.commit()
    return Unauthorized("the bootstrap token is not valid (expired, used, or not this node's)")


def check_minion_keys(private_pem: str, public_pem: str) -> None:
    """The pair salt-api made is an RSA key of at least 2048 bits whose public half is ``public_pem``."""
    try:
        private = serialization.load_pem_private_key(private_pem.encode(), password=None)
        public = serialization.load_pem_public_key(public_pem.encode())
    except ValueError as exc:
        raise SaltApiError(f"salt-api's minion key is not a PEM key: {type(exc).__name__}") from None
    if not isinstance(private, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey):
        raise SaltApiError("salt-api's minion key is not RSA")
    if private.key_size < 2048 or private.public_key().public_numbers() != public.public_numbers():
        raise SaltApiError("salt-api's minion key pair does not match or is too small")


def minion_config(settings: Settings, node: str, master_finger: str) -> str:
    return (
        "# Written by the RemoteGPU gateway's bootstrap.\n"
        f"id: {node}\n"
        f"master: {master_host(settings)}\n"
        f"master_port: {settings.salt_master_port}\n"
        f"publish_port: {settings.salt_publish_port}\n"
        # the minion's own hash of master.pub (salt-key -F prints another: saltstack/salt#69970)
        f"master_finger: '{master_finger}'\n"
    )


async def exchange(
    database: Database, settings: Settings, salt: SaltApi | None, data: BootstrapExchange
) -> BootstrapOut:
    """Spend a token once for the master's key and a pre-accepted minion key pair. The token is spent before
    Salt is asked (two racing exchanges cannot both make keys); a Salt failure then costs the token (503)."""
    secret = settings.node_bootstrap_secret
    if not secret:
        raise await _refuse(database, data.node, "no-secret", None)
    now = utcnow()
    try:
        claims = tokens.verify(secret, data.token, data.node, now)
    except tokens.TokenRefused as refused:
        raise await _refuse(database, data.node, refused.reason.value, refused.claims) from None
    async with database.session() as session:
        node = await session.scalar(select(Node).where(Node.name == data.node))
        issued = (
            await session.scalar(
                select(BootstrapToken).where(BootstrapToken.nonce == claims.nonce, BootstrapToken.node_id == node.id)
            )
            if node is not None
            else None
        )
        if node is None or issued is None:
            reason = tokens.Refusal.UNKNOWN.value
        else:
            spent = await session.execute(
                update(BootstrapToken)
                .where(BootstrapToken.id == issued.id, BootstrapToken.used_at.is_(None))
                .values(used_at=now)
                .execution_options(synchronize_session=False)
            )
            reason = "" if spent.rowcount else tokens.Refusal.REPLAYED.value  # type: ignore[attr-defined]
        await session.commit()
    if reason:
        raise await _refuse(database, data.node, reason, claims)
    if salt is None:
        raise Unavailable("the gateway has no salt-api (salt_api_url, salt_api_password)")
    try:
        master_pub = await salt.master_public_key()
        minion_pem, minion_pub = await salt.gen_accept(data.node)
        check_minion_keys(minion_pem, minion_pub)
        finger = tokens.minion_finger(master_pub)
    except (SaltApiError, ValueError) as exc:
        BOOTSTRAPS.labels("salt-failed").inc()
        log.warning("node_bootstrap_salt_failed", node=data.node, error=str(exc))
        raise Unavailable(f"Salt could not make the node's keys: {exc}") from None
    async with database.session() as session:
        await session.execute(
            update(Node).where(Node.name == data.node).values(key_state=BOOTSTRAPPED, bootstrapped_at=now)
        )
        record(session, BOOTSTRAP, "node.bootstrap", target_type="node", target=data.node,
               details={"master_finger": finger, "minion_finger": tokens.minion_finger(minion_pub)})  # fmt: skip
        await session.commit()
    BOOTSTRAPS.labels("ok").inc()
    files = [
        BootstrapFile(path="pki/minion/minion.pem", mode="0400", content=minion_pem),
        BootstrapFile(path="pki/minion/minion.pub", mode="0644", content=minion_pub),
        BootstrapFile(path="pki/minion/minion_master.pub", mode="0644", content=master_pub),
        BootstrapFile(path="minion.d/remotegpu.conf", mode="0644", content=minion_config(settings, data.node, finger)),
    ]
    return BootstrapOut(
        minion_id=data.node,
        master=master_host(settings),
        master_port=settings.salt_master_port,
        publish_port=settings.salt_publish_port,
        master_pub=master_pub,
        master_finger=finger,
        minion_pub=minion_pub,
        minion_pem=minion_pem,
        files=files,
    )


# --- runs ------------------------------------------------------------------------------------------------


async def provision(
    session: AsyncSession, admin: Actor, data: ProvisionCreate | ProvisionManyCreate, names: Sequence[str] | None
) -> ProvisionRun:
    """A queued run of ``data.states`` on the nodes named (every node when None); one open run per node."""
    query = select(Node).order_by(Node.name)
    if names is not None:
        query = query.where(Node.name.in_(names))
    nodes = (await session.scalars(query)).all()
    if names is not None:
        missing = sorted(set(names) - {n.name for n in nodes})
        if missing:
            raise NotFound(f"no node {', '.join(missing)}", field="nodes")
    if not nodes:
        raise Conflict("no node is registered", field="nodes")
    states = list(dict.fromkeys(data.states))
    if "remotegpu" in states:
        states = ["remotegpu"]  # it includes every other
    now = utcnow()
    run = ProvisionRun(states=states, test=not data.apply, status=QUEUED, next_attempt_at=now,
                       created_by=admin.user_id)  # fmt: skip
    session.add(run)
    await session.flush()
    session.add_all(RunTarget(run_id=run.id, node_id=n.id, node_name=n.name, status=QUEUED) for n in nodes)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise Conflict("a run is queued or running on one of these nodes already", field="nodes") from None
    for n in nodes:
        record(session, admin, "node.provision", target_type="node", target=n.name,
               details={"run_id": run.id, "states": states, "test": run.test})  # fmt: skip
    await session.commit()
    return run


def _target_out(t: RunTarget) -> TargetOut:
    return TargetOut(
        node=t.node_name,
        status=cast(Any, t.status),
        jid=t.jid,
        retcode=t.retcode,
        states_total=t.states_total,
        states_changed=t.states_changed,
        states_failed=t.states_failed,
        error=t.error,
        submitted_at=t.submitted_at,
        finished_at=t.finished_at,
    )


def _run_out(run: ProvisionRun, targets: Sequence[RunTarget]) -> RunOut:
    return RunOut(
        id=run.id,
        states=list(run.states),
        test=run.test,
        status=cast(Any, run.status),
        attempts=run.attempts,
        error=run.error,
        targets=[_target_out(t) for t in sorted(targets, key=lambda t: t.node_name)],
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


async def run_out(session: AsyncSession, run_id: int) -> RunOut:
    run = await session.get(ProvisionRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"no provision run {run_id}", field="run_id")
    targets = (
        await session.scalars(
            select(RunTarget).where(RunTarget.run_id == run_id).execution_options(populate_existing=True)
        )
    ).all()
    return _run_out(run, targets)


async def list_runs(session: AsyncSession, node: str | None, limit: int, offset: int) -> list[RunOut]:
    """Newest first; ``node``: only the runs that included it."""
    query = select(ProvisionRun).order_by(ProvisionRun.id.desc()).limit(limit).offset(offset)
    if node is not None:
        found = await node_named(session, node)
        query = query.where(ProvisionRun.id.in_(select(RunTarget.run_id).where(RunTarget.node_id == found.id)))
    runs = (await session.scalars(query)).all()
    targets = (await session.scalars(select(RunTarget).where(RunTarget.run_id.in_([r.id for r in runs])))).all()
    by_run: dict[int, list[RunTarget]] = {}
    for t in targets:
        by_run.setdefault(t.run_id, []).append(t)
    return [_run_out(r, by_run.get(r.id, [])) for r in runs]


async def run_results(session: AsyncSession, run_id: int, node: str | None) -> list[StateResultOut]:
    if await session.get(ProvisionRun, run_id) is None:
        raise NotFound(f"no provision run {run_id}", field="run_id")
    query = (
        select(RunTarget.node_name, StateResult)
        .join(StateResult, StateResult.target_id == RunTarget.id)
        .where(RunTarget.run_id == run_id)
        .order_by(RunTarget.node_name, StateResult.run_num, StateResult.id)
    )
    if node is not None:
        query = query.where(RunTarget.node_name == node)
    return [
        StateResultOut(
            node=name,
            state_id=r.state_id,
            sls=r.sls,
            function=r.function,
            name=r.name,
            result=r.result,
            changed=r.changed,
            comment=r.comment,
            changes=r.changes,
            duration_ms=r.duration_ms,
            run_num=r.run_num,
        )
        for name, r in await session.execute(query)
    ]


# --- drain, resume, remove -------------------------------------------------------------------------------


async def set_slurm_state(
    session: AsyncSession,
    database: Database,
    admin: Actor,
    slurm: SlurmClient,
    name: str,
    state: str,
    reason: str | None,
) -> NodeOut:
    """``scontrol update nodename=NAME state=drain|resume [reason=...]``, audited, then the snapshot read again
    (one ``sinfo``) so the list shows Slurm's answer at once."""
    node = await node_named(session, name)
    try:
        await slurm.update_node(node.name, state=state, reason=reason)
    except ValueError as exc:  # slurm.cli's own check of the argv (the schema refuses such input first)
        raise InvalidInput(str(exc), field="reason") from None
    except SlurmError as exc:
        raise Conflict(f"Slurm refused to {state} {node.name}: {exc.message}", field="name") from None
    record(session, admin, f"node.{state}", target_type="node", target=node.name, details={"reason": reason})
    await session.commit()
    await cluster_service.ClusterReader(database, slurm).refresh()
    session.expire_all()
    return await get_node(session, name)


async def remove(session: AsyncSession, admin: Actor, salt: SaltApi | None, name: str) -> None:
    """The node's rows go (its runs stay, naming it); its minion key is deleted from the master when salt-api
    is configured. A node with a queued or running run is refused (409)."""
    node = await node_named(session, name, for_update=True)
    busy = await session.scalar(
        select(RunTarget.id).where(RunTarget.node_id == node.id, RunTarget.status.in_((QUEUED, RUNNING))).limit(1)
    )
    if busy is not None:
        raise Conflict(f"a provision run is queued or running on {name}", field="name")
    key_deleted: bool | None = None
    if salt is not None:
        try:
            await salt.delete_key(name)
            key_deleted = True
        except SaltApiError as exc:
            log.warning("node_key_delete_failed", node=name, error=str(exc))
            key_deleted = False
    await session.execute(update(RunTarget).where(RunTarget.node_id == node.id).values(node_id=None))
    await session.delete(node)
    record(session, admin, "node.remove", target_type="node", target=name, details={"salt_key_deleted": key_deleted})
    await session.commit()
