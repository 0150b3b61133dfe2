"""Storage sources: the admin's S3 stores, their sealed keys, and the worker's health checks.

Keys are sealed with the settings' ``secret_keys`` (gateway.crypto) for the row's id and field, and never leave
the gateway except inside signed requests and presigned URLs. A health check is one ``HEAD`` of the bucket with
the source's own keys: ``ok`` when it answers within ``SLOW``, ``degraded`` when slowly or with a server error
(5xx: the store is there but struggling), ``down`` when it does not answer or refuses the keys or the bucket
(reads and uploads would fail alike). Checks run in threads, all sources at once, each bounded by
``storage_timeout_seconds``; one slow store does not delay the others' results.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Gauge
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.config import Settings
from gateway.crypto import KeyRing, SecretKeyError
from gateway.datasets import s3
from gateway.datasets.models import StorageSource
from gateway.datasets.schemas import StorageSourceCreate, StorageSourcePatch
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("gateway.datasets.sources")
SLOW = 1.0
"""Seconds: a bucket HEAD slower than this makes a source ``degraded``."""
HEALTH_VALUES = {"ok": 1.0, "degraded": 0.5, "down": 0.0, "unknown": -1.0}
SOURCE_HEALTH = Gauge(
    "remotegpu_storage_source_health", "Last health check: 1 ok, 0.5 degraded, 0 down, -1 unknown", ["source"]
)
SOURCE_LATENCY = Gauge("remotegpu_storage_source_latency_seconds", "Last health check's round trip", ["source"])
HEALTH_CHANGES = Counter("remotegpu_storage_source_health_changes_total", "Health transitions", ["source", "health"])


class Credentials(msgspec.Struct, frozen=True):
    access_key: str
    secret_key: str


def keyring(settings: Settings) -> KeyRing:
    """The settings' keys, or 503 naming the setting when there are none (or they are malformed)."""
    try:
        return KeyRing.parse(settings.secret_keys)
    except SecretKeyError as exc:
        raise Unavailable(f"{exc}; storage sources' keys are only ever stored encrypted") from None


def context(source_id: int, field: str) -> str:
    return f"storage-source:{source_id}:{field}"


def credentials(source: StorageSource, keys: KeyRing) -> Credentials:
    return Credentials(
        access_key=keys.unseal(source.access_key_sealed, context(source.id, "access_key")),
        secret_key=keys.unseal(source.secret_key_sealed, context(source.id, "secret_key")),
    )


def client(source: StorageSource, keys: KeyRing, settings: Settings) -> S3Client:
    c = credentials(source, keys)
    return s3.make_client(
        source.endpoint, source.region, c.access_key, c.secret_key, timeout=settings.storage_timeout_seconds
    )


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("only platform admins manage storage sources")


def _check_bucket(bucket: str) -> None:
    """S3's rules beyond the schema's pattern."""
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidInput("a bucket name has no '..', '.-' or '-.'", field="bucket")
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        return
    raise InvalidInput("a bucket name is not an IP address", field="bucket")


def _seal(source: StorageSource, keys: KeyRing, access_key: str | None, secret_key: str | None) -> None:
    if access_key is not None:
        source.access_key_sealed = keys.seal(access_key, context(source.id, "access_key"))
    if secret_key is not None:
        source.secret_key_sealed = keys.seal(secret_key, context(source.id, "secret_key"))


async def create(session: AsyncSession, actor: Actor, settings: Settings, data: StorageSourceCreate) -> StorageSource:
    _require_admin(actor)
    _check_bucket(data.bucket)
    keys = keyring(settings)
    if await session.scalar(select(StorageSource.id).where(StorageSource.name == data.name)) is not None:
        raise Conflict(f"storage source {data.name!r} already exists", field="name")
    source = StorageSource(
        name=data.name,
        type=data.type,
        endpoint=data.endpoint.rstrip("/"),
        bucket=data.bucket,
        region=data.region,
        prefix=data.prefix,
        public=data.public,
        priority=data.priority,
        weight=data.weight,
        enabled=data.enabled,
        access_key_sealed="",
        secret_key_sealed="",
    )
    session.add(source)
    try:
        await session.flush()  # its id: the keys are sealed for it
    except IntegrityError:
        raise Conflict(f"storage source {data.name!r} already exists", field="name") from None
    _seal(source, keys, data.access_key, data.secret_key)
    record(
        session, actor, "storage_source.create", target_type="storage_source", target=source.name, details=_shown(data)
    )
    await session.commit()
    return source


def _shown(data: StorageSourceCreate | StorageSourcePatch) -> dict[str, object]:
    """What the audit trail keeps of a request: everything but the keys (only whether they changed)."""
    shown = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
    for key in ("access_key", "secret_key"):
        if key in shown:
            shown[key] = "(set)"
    return shown


async def list_sources(session: AsyncSession, actor: Actor) -> Sequence[StorageSource]:
    _require_admin(actor)
    return (await session.scalars(select(StorageSource).order_by(StorageSource.priority, StorageSource.id))).all()


async def get(session: AsyncSession, actor: Actor, name: str) -> StorageSource:
    _require_admin(actor)
    source = await session.scalar(select(StorageSource).where(StorageSource.name == name))
    if source is None:
        raise NotFound(f"storage source {name!r} not found", field="name")
    return source


async def update(
    session: AsyncSession, actor: Actor, settings: Settings, name: str, data: StorageSourcePatch
) -> StorageSource:
    source = await get(session, actor, name)
    if data.access_key is not None or data.secret_key is not None:
        _seal(source, keyring(settings), data.access_key, data.secret_key)
    for field in ("endpoint", "region", "public", "priority", "weight", "enabled"):
        value = getattr(data, field)
        if value is not None:
            setattr(source, field, value.rstrip("/") if field == "endpoint" else value)
    if {"endpoint", "access_key", "secret_key"} & set(_shown(data)):
        source.health, source.latency_ms, source.checked_at = "unknown", None, None  # checked again
    record(session, actor, "storage_source.update", target_type="storage_source", target=name, details=_shown(data))
    await session.commit()
    return source


async def delete(session: AsyncSession, actor: Actor, name: str) -> None:
    source = await get(session, actor, name)
    await session.delete(source)
    record(session, actor, "storage_source.delete", target_type="storage_source", target=name)
    await session.commit()


# --- health -----------------------------------------------------------------------------------------------


class Health(msgspec.Struct, frozen=True):
    health: str
    latency_ms: float | None
    error: str | None


def probe(source: StorageSource, keys: KeyRing, settings: Settings) -> Health:
    """One HEAD of the bucket (blocking: run in a thread)."""
    try:
        store = client(source, keys, settings)  # made once per key version: not part of the round trip
    except SecretKeyError as exc:
        return Health("down", None, f"its keys cannot be read: {exc}")
    started = time.perf_counter()
    try:
        store.head_bucket(Bucket=source.bucket)
    except ClientError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = exc.response.get("Error", {}).get("Code", "?")
        health = "degraded" if status >= 500 else "down"
        return Health(health, round(elapsed, 2), f"HTTP {status} {code} for bucket {source.bucket!r}")
    except BotoCoreError as exc:
        return Health("down", None, str(exc)[:500])
    elapsed = (time.perf_counter() - started) * 1000
    return Health("degraded" if elapsed > SLOW * 1000 else "ok", round(elapsed, 2), None)


async def check(database: Database, settings: Settings, only: str | None = None) -> list[StorageSource]:
    """Check every enabled source (or the one named), at once; record and export the results."""
    async with database.session() as session:
        query = select(StorageSource).where(StorageSource.enabled.is_(True))
        if only is not None:
            query = select(StorageSource).where(StorageSource.name == only)
        sources = list((await session.scalars(query)).all())
        if not sources:
            return []
        try:
            keys = KeyRing.parse(settings.secret_keys)
        except SecretKeyError as exc:
            results = [Health("down", None, str(exc)) for _ in sources]
        else:
            results = list(await asyncio.gather(*(_bounded_probe(source, keys, settings) for source in sources)))
        now = utcnow()
        for source, result in zip(sources, results, strict=True):
            _record_health(session, source, result, now)
        await session.commit()
        return sources


async def _bounded_probe(source: StorageSource, keys: KeyRing, settings: Settings) -> Health:
    """``probe`` in a thread, its answer awaited for ``storage_timeout_seconds`` at most (the SDK's own timeouts
    apply per attempt and connection; a store that takes longer is down for this check)."""
    limit = settings.storage_timeout_seconds
    try:
        return await asyncio.wait_for(asyncio.to_thread(probe, source, keys, settings), timeout=limit)
    except TimeoutError:
        return Health("down", None, f"no answer within {limit:g} s")


def _record_health(session: AsyncSession, source: StorageSource, result: Health, now: datetime) -> None:
    """The check's result on the source's row and in the metrics; a change of health also in the audit trail."""
    if result.health != source.health:
        log.info("storage_source_health", source=source.name, health=result.health, error=result.error)
        HEALTH_CHANGES.labels(source.name, result.health).inc()
        record(
            session,
            Actor.system("health-check"),
            "storage_source.health",
            target_type="storage_source",
            target=source.name,
            details={"from": source.health, "to": result.health, "error": result.error},
        )
    source.health, source.latency_ms, source.last_error, source.checked_at = (
        result.health,
        result.latency_ms,
        result.error,
        now,
    )
    SOURCE_HEALTH.labels(source.name).set(HEALTH_VALUES[result.health])
    if result.latency_ms is not None:
        SOURCE_LATENCY.labels(source.name).set(result.latency_ms / 1000)


async def rotate_secrets(database: Database, settings: Settings) -> int:
    """Seal every key again with the current key (the first of ``secret_keys``); how many sources changed."""
    keys = KeyRing.parse(settings.secret_keys)
    async with database.session() as session:
        changed = 0
        for source in (await session.scalars(select(StorageSource).with_for_update())).all():
            if keys.is_current(source.access_key_sealed) and keys.is_current(source.secret_key_sealed):
                continue
            c = credentials(source, keys)
            _seal(source, keys, c.access_key, c.secret_key)
            changed += 1
        await session.commit()
        return changed
