"""Stage-in: the datasets and models a job or environment names, fetched onto its node when it starts.

At submission the references among a job's mounts (``imagenet``, ``imagenet:3``, ``vision/imagenet:3`` for one
shared with the workspace) are resolved to ready versions the submitter may read (or refused with 400 naming
the item) and become ``JobSpec.stage_in``; the batch script runs ``remotegpu-stage-in`` for each before the
program (slurm.script). That program, on the node, asks the gateway for the version's manifest with a token only
that job has (``REMOTEGPU_STAGE_TOKEN``, made like a session's callback token for the purpose ``stage-in``), gets
for each file the presigned URLs of every ready replica in routing's order for the node's user (so a failed
store falls back to the next), and fills the slot from a node-local cache by checksum
(gateway.datasets.stagein_client). Presigned URLs are made when the job starts, not when it is submitted: a job
may wait in the queue for longer than a URL lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import structlog
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.accounts.models import User
from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.config import Settings
from gateway.datasets import routing, sources
from gateway.datasets.models import DATASET, MODEL, READY, Dataset, DatasetFile, DatasetVersion
from gateway.datasets.service import _user_type, ready_replicas, routed
from gateway.db.session import Database
from gateway.environments import tokens
from gateway.errors import InvalidInput, NotFound, Unauthorized
from gateway.jobs.models import STAGE_IN_EVENT, JobEvent, TrainingJob
from gateway.jobs.service import FINAL_STATES, STAGE_IN, JobService
from gateway.nodes.models import Node
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Workspace
from slurm.script import DATASET_SLOTS, MODEL_SLOTS, StageIn

log = structlog.get_logger("gateway.datasets.stagein")
VARIABLE = "REMOTEGPU_STAGE_TOKEN"
PURPOSE = "stage-in"
URL_SECONDS = 6 * 3600
"""How long the URLs a starting job gets stay good: the whole fetch, however large."""
STAGE_INS = Counter("remotegpu_stage_ins_total", "Stage-ins reported by jobs' nodes", ["kind", "outcome"])
FAILOVERS = Counter(
    "remotegpu_routing_failovers_total", "Files a node fetched from a later replica after a store failed", ["source"]
)


class StageFile(msgspec.Struct, kw_only=True):
    path: str
    size: int
    sha256: str
    urls: list[str]
    """Presigned GETs, one per ready replica, in routing's order: try the next when one fails."""


class StageManifest(msgspec.Struct, kw_only=True):
    slot: str
    reference: str
    files: list[StageFile]
    sources: list[str]
    """The storage sources behind ``urls``, in the same order."""


class StageFailover(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    source: Annotated[str, msgspec.Meta(max_length=128)]
    """The storage source that failed (one of the manifest's)."""
    path: Annotated[str, msgspec.Meta(max_length=1024)]
    error: Annotated[str, msgspec.Meta(max_length=500)]


class StageReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a node's stage-in did, sent once at its end (success or not): the job's history shows it, the
    failovers are counted and audited."""

    ok: bool
    message: Annotated[str, msgspec.Meta(max_length=2000)]
    failovers: Annotated[list[StageFailover], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    files: Annotated[int, msgspec.Meta(ge=0)] = 0
    bytes_fetched: Annotated[int, msgspec.Meta(ge=0)] = 0
    cache_hits: Annotated[int, msgspec.Meta(ge=0)] = 0


class StageInService:
    """Registers itself with the jobs: what resolves references at submission, and the jobs' stage-in token."""

    def __init__(self, database: Database, settings: Settings, jobs: JobService) -> None:
        self.database = database
        self.settings = settings
        self.key = tokens.SessionKey(database)
        jobs.references = self.resolve
        jobs.secrets[STAGE_IN] = self.token

    async def token(self, job_id: str) -> dict[str, str]:
        return {VARIABLE: tokens.make(await self.key.get(), job_id, PURPOSE)}

    async def resolve(self, access: WorkspaceAccess, datasets: Sequence[str], models: Sequence[str]) -> list[StageIn]:
        found: list[StageIn] = []
        async with self.database.session(write=False) as session:
            for kind, field, refs, slots in (
                (DATASET, "datasets", datasets, DATASET_SLOTS),
                (MODEL, "models", models, MODEL_SLOTS),
            ):
                for i, ref in enumerate(refs):
                    if ref.startswith("/"):
                        continue
                    version = await _resolve_one(session, access, kind, ref, f"{field}[{i}]")
                    found.append(StageIn(slot=slots[i][0], reference=ref, version_id=version.id))
        return found

    async def _item(self, session: AsyncSession, token: str, slot: str) -> tuple[TrainingJob, dict[str, Any]]:
        """The job whose token this is (while it has not ended) and what it fetches into ``slot``."""
        job_id = tokens.verified_job_id(await self.key.get(), token, PURPOSE)
        if job_id is None:
            raise Unauthorized("not a stage-in token of this gateway")
        job = await session.get(TrainingJob, job_id)
        if job is None or job.state in FINAL_STATES:
            raise Unauthorized("this job has ended (or is unknown): its stage-in token is spent")
        item = next((s for s in job.spec.get("stage_in", []) if s["slot"] == slot), None)
        if item is None:
            raise NotFound(f"the job fetches nothing into {slot!r}", field="slot")
        return job, item

    async def report(self, session: AsyncSession, token: str, slot: str, data: StageReport) -> None:
        """A node's stage-in ended: one job event (its history) and an audit entry per replica that failed."""
        job, item = await self._item(session, token, slot)
        what = f"{item['reference']} into /gemini/{slot}"
        session.add(
            JobEvent(
                job_id=job.id,
                workspace_id=job.workspace_id,
                old_state=job.state,
                new_state=job.state,
                kind=STAGE_IN_EVENT,
                reason=f"{what}: {data.message}" if data.ok else f"could not fetch {what}: {data.message}",
            )
        )
        STAGE_INS.labels(kind=job.kind, outcome="ok" if data.ok else "failed").inc()
        for failed in data.failovers:
            FAILOVERS.labels(source=failed.source).inc()
        if data.failovers:
            record(
                session,
                Actor.system("stage-in"),
                "routing.failover",
                target_type="job",
                target=job.id,
                workspace_id=job.workspace_id,
                details={
                    "slot": slot,
                    "reference": item["reference"],
                    "failed": sorted({f.source for f in data.failovers}),
                    "files": len(data.failovers),
                    "first_error": data.failovers[0].error,
                },
            )
        await session.commit()
        log.info("stage_in_report", job_id=job.id, slot=slot, ok=data.ok, failovers=len(data.failovers))

    async def manifest(self, session: AsyncSession, token: str, slot: str, node: str | None = None) -> StageManifest:
        """The slot's files and their URLs, for the job whose token this is (while it has not ended), in routing's
        order for the region of ``node`` (where the stage-in runs, as it says; else the job's first node as the
        poller saw it) when that node is registered (gateway.nodes)."""
        job, item = await self._item(session, token, slot)
        job_id = job.id
        user = await session.get(User, job.user_id) if job.user_id else None
        where = node or (job.nodes[0] if job.nodes else None)
        region = await session.scalar(select(Node.region).where(Node.name == where)) if where else None
        request = routing.RouteRequest(
            user_type=_user_type(user), node_region=region, purpose="read", key=f"{item['version_id']}:{job_id}"
        )
        ordered = routed(
            await ready_replicas(session, item["version_id"]),
            request,
            who=user.name if user else "?",
            what=f"job {job_id} stage-in {slot}",
        )
        version = await session.get_one(DatasetVersion, item["version_id"])
        files = (
            await session.scalars(
                select(DatasetFile).where(DatasetFile.version_id == version.id).order_by(DatasetFile.path)
            )
        ).all()
        keys = sources.keyring(self.settings)
        clients = [sources.client(s, keys, self.settings) for s in ordered]
        return StageManifest(
            slot=slot,
            reference=item["reference"],
            sources=[s.name for s in ordered],
            files=[
                StageFile(
                    path=f.path,
                    size=f.size,
                    sha256=f.sha256,
                    urls=[
                        c.generate_presigned_url(
                            "get_object",
                            Params={"Bucket": s.bucket, "Key": f"{s.prefix}{version.prefix}{f.path}"},
                            ExpiresIn=URL_SECONDS,
                        )
                        for s, c in zip(ordered, clients, strict=True)
                    ],
                )
                for f in files
            ],
        )


async def _resolve_one(
    session: AsyncSession, access: WorkspaceAccess, kind: str, ref: str, field: str
) -> DatasetVersion:
    """``[WORKSPACE/]NAME[:VERSION]`` -> a ready version the workspace may read (its newest without VERSION)."""
    owner_slug, _, rest = ref.rpartition("/")
    name, _, number = rest.partition(":")
    owner_id = access.workspace.id
    if owner_slug and owner_slug != access.workspace.slug:
        found = await session.scalar(select(Workspace.id).where(Workspace.slug == owner_slug))
        if found is None:
            raise InvalidInput(f"no {kind} {ref!r}: no workspace {owner_slug!r}", field=field)
        owner_id = found
    dataset = await session.scalar(
        select(Dataset).where(
            Dataset.workspace_id == owner_id, Dataset.kind == kind, Dataset.name == name, Dataset.deleted_at.is_(None)
        )
    )
    if dataset is None or (owner_id != access.workspace.id and access.workspace.id not in (dataset.shared_with or [])):
        raise InvalidInput(f"no {kind} {name!r} in {owner_slug or 'this workspace'}", field=field)
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.status == READY)
    if number:
        query = query.where(DatasetVersion.version == int(number))
    version = await session.scalar(query.order_by(DatasetVersion.version.desc()).limit(1))
    if version is None:
        which = f"version {number}" if number else "a ready version"
        raise InvalidInput(f"{kind} {name!r} has no {which}", field=field)
    return version
