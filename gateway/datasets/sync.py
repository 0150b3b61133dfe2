"""Sync tasks: copying a ready version's files from one store to another, incrementally, resumably, by workers
that hold a lease on the task.

**What is compared.** A file is where it should be when the target holds its key with the manifest's size and
our SHA-256 in its metadata (``x-amz-meta-sha256``), never by ETag (ETags differ by upload method). Checking that
costs a HEAD per object, so the gateway remembers what it checked: a ``SyncObject`` row per file and store with
the ETag the store listed then. An incremental run lists the target's prefix once (1,000 keys a request) and
HEADs only the objects the gateway has not checked before; an object whose listing changed since (another size
or ETag: someone rewrote it) is copied again without asking its metadata, which a rewrite may have kept. A full
run copies every file (but those an earlier attempt of the same task copied).

**How it copies.** Objects under ``small_limit`` (16 MiB): GET from the source, SHA-256 of the bytes checked
against the manifest (a corrupt source copy is not spread), PUT to the target with that SHA-256 as the signed
payload hash (the store refuses a body that arrived otherwise) and in the metadata; many at once. Bigger ones: a
multipart upload on the target, its parts read by ranged GETs from the source, several at once, each finished
part's ETag committed as it lands, so a resumed task sends only the others. Every object is checked afterwards
(a HEAD: size and checksum metadata as the manifest says). When every file is there the target's replica is
``ready``.

**Who runs it.** ``run_due_tasks`` (the worker's sync loop) claims due tasks with a conditional UPDATE (only a
queued task that is due, or a running one whose lease expired, matches: on PostgreSQL the second of two racing
UPDATEs re-reads the row and no longer matches; SQLite runs them one after the other), renews the lease while it
runs, and stops when its lease is lost or the task cancelled. A failed attempt (a store down, refusing, or holding
something else than the manifest says) releases the lease and is retried after 30 s, then 60 s; the third failure
fails the task. A worker that dies leaves its lease to expire; the next claim resumes where it stopped.

**Policies.** ``realtime``: queued to every other enabled store when a version becomes ready
(:func:`queue_realtime`, from ``DatasetService.finish``); ``scheduled``: a task that waits for ``not_before``;
``manual``: made through the admin API (gateway.datasets.sync_controller). **Two-way** between stores A and B is
two one-way incremental tasks, A to B and B to A: a ready version never changes, so there is nothing to merge;
each direction copies what its target lacks (a version present only on B comes back to A), and a file the
target already holds is never read from the source, which may lack it.

The data plane (GET, PUT, HEAD, UploadPart, and listings) is plain HTTP (http.client) signed by botocore's SigV4
signer: a boto3 call costs about 1.3 ms of CPU around the request, which made 2,000 small objects 1.3-2x slower
than rclone on two cores, and boto3 parsed a listing of 2,000 keys in 3x the time ElementTree takes
(bench/sync.py). Multipart bookkeeping (create, list parts, complete, abort), a few calls a file, is boto3's.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import http.client
import math
import os
import socket
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import msgspec
import structlog
from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Gauge
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.actor import Actor
from gateway.audit.writer import AUDIT_LOG, audit_row, record
from gateway.config import Settings
from gateway.datasets import sources
from gateway.datasets.models import (
    CANCELLED,
    COPYING,
    DONE,
    ERROR,
    FAILED,
    FULL,
    INCREMENTAL,
    ONE_WAY,
    QUEUED,
    READY,
    REALTIME,
    RUNNING,
    SYNCING,
    VERIFIED,
    Dataset,
    DatasetFile,
    DatasetVersion,
    Replica,
    StorageSource,
    SyncObject,
    SyncTask,
)
from gateway.db.base import utcnow
from gateway.db.session import Database

log = structlog.get_logger("gateway.datasets.sync")
T = TypeVar("T")

MIB = 1024 * 1024
MAX_ATTEMPTS = 3
MAX_PARTS = 10_000
OPEN_STATUSES = (QUEUED, RUNNING)
SYSTEM = Actor.system("sync")

SYNC_BYTES = Counter("remotegpu_sync_bytes_total", "Bytes copied between storage sources", ["target"])
SYNC_OBJECTS = Counter(
    "remotegpu_sync_objects_total", "Files by what a sync did: copied, or found in place", ["target", "outcome"]
)
SYNC_PARTS = Counter("remotegpu_sync_parts_total", "Multipart parts copied between storage sources", ["target"])
SYNC_ATTEMPTS = Counter(
    "remotegpu_sync_attempts_total", "Ends of sync task attempts: done, retry, failed, cancelled, lost", ["outcome"]
)
SYNC_RUNNING = Gauge("remotegpu_sync_tasks_running", "Sync tasks running in this process")


class SyncOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How the engine copies (the defaults suit a LAN; tests and the bench change the sizes)."""

    small_limit: int = 16 * MIB
    """Objects below this many bytes are copied with one GET and one PUT, the others as multipart."""
    part_size: int = 16 * MIB
    """Part size of multipart copies (larger when a file would need more than 10,000 parts). 16 MiB copied
    500 MiB fastest on SeaweedFS (8 and 64 MiB alike, 32 MiB 15-25% slower: bench/sync.py)."""
    workers: int = 16
    """Small objects copied at once (per task): each holds its bytes in memory (below ``small_limit``)."""
    part_workers: int = 4
    """Parts of big objects copied at once (per task): each holds one part in memory."""
    lease_seconds: float = 60.0
    """A claim's length; renewed every third of it while the task runs."""
    backoff_seconds: float = 30.0
    """Wait before the second attempt; doubled for each further one."""
    tasks_at_once: int = 2
    """Tasks one process runs at a time."""
    flush_seconds: float = 0.5
    """Progress of small objects is committed at least this often (and every finished part at once)."""


DEFAULT_OPTIONS = SyncOptions()


class StoreFailed(Exception):
    """A store did not do what was asked: down, refusing, or holding something else than the manifest says."""


class SourceMismatch(StoreFailed):
    """The source lacks a file of the manifest, or holds another size or checksum: the others are copied all
    the same (the attempt fails at the end), where a store that fails stops the attempt at once."""


class NotThere(StoreFailed):
    """The store answered 404."""


class _Stopped(Exception):
    """The task is no longer this worker's to run (cancelled, or its lease lost)."""


# --- the data plane ------------------------------------------------------------------------------------------


class _Signer(S3SigV4Auth):
    """SigV4 with the payload hash given by the caller: the SHA-256 of a small object's bytes, which the sync
    computed anyway (it is the manifest's checksum); else unsigned, as over HTTPS (botocore would hash the body
    again on plain HTTP)."""

    def payload(self, request: AWSRequest) -> str:
        given = request.context.get("payload_sha256")
        return str(given) if given else UNSIGNED_PAYLOAD


class Head(msgspec.Struct, frozen=True):
    size: int
    sha256: str | None
    etag: str


def _error_code(body: bytes) -> str:
    try:
        found = ET.fromstring(body).findtext("Code")  # noqa: S314 (a store's error document, no entities)
    except ET.ParseError:
        return ""
    return found or ""


class _Answer(msgspec.Struct, frozen=True):
    status: int
    headers: http.client.HTTPMessage
    data: bytes


RETRIED = frozenset({500, 502, 503, 504})


class Objects:
    """GET, PUT, HEAD, UploadPart and listings on one store's bucket, as signed HTTP requests, each thread on a
    kept-alive connection of its own (http.client: urllib3's pool cost 0.4 ms of CPU a request more, as much as
    the rest of a HEAD). A call whose connection fails, or that gets a 5xx, is tried twice more within about a
    second (each request here is idempotent: the same key, the same bytes); a store that is down fails the call
    after that, and the task's attempt with it."""

    def __init__(self, source: StorageSource, credentials: sources.Credentials, *, timeout: float) -> None:
        self.name = source.name
        endpoint = urlsplit(source.endpoint)
        self.scheme, self.netloc = endpoint.scheme, endpoint.netloc
        self.host, self.port = endpoint.hostname or "", endpoint.port
        self.root = f"{endpoint.path.rstrip('/')}/{source.bucket}/"
        self.timeout = timeout
        self.signer = _Signer(
            BotoCredentials(credentials.access_key, credentials.secret_key), "s3", source.region or "us-east-1"
        )
        self.tls = (
            ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            if self.scheme == "https"
            else None
        )
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[http.client.HTTPConnection] = []

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self.local, "connection", None)
        if connection is None:
            if self.tls is not None:
                connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.tls)
            else:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.local.connection = connection
            with self.lock:
                self.opened.append(connection)
        return connection

    def close(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
        for connection in opened:
            connection.close()

    def _call(
        self,
        method: str,
        key: str,
        *,
        query: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        payload_sha256: str | None = None,
        ok: Iterable[int] = (200,),
    ) -> _Answer:
        path = self.root + quote(key, safe="/~") + (f"?{query}" if query else "")
        failure = ""
        for attempt in range(3):
            if attempt:
                time.sleep(0.25 * 2 ** (attempt - 1))
            request = AWSRequest(
                method=method, url=f"{self.scheme}://{self.netloc}{path}", data=body, headers=headers or {}
            )
            if payload_sha256:
                request.context["payload_sha256"] = payload_sha256
            self.signer.add_auth(request)
            connection = self._connection()
            try:
                connection.request(method, path, body=body or None, headers=dict(request.headers.items()))
                response = connection.getresponse()
                answer = _Answer(response.status, response.headers, response.read())
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, closed while idle
                connection.close()
                failure = f"did not answer {method} {key}: {type(exc).__name__}: {exc}"
                continue
            if response.will_close:
                connection.close()
            if answer.status in RETRIED and attempt < 2:
                failure = f"answered {method} {key} with {answer.status}"
                continue
            if answer.status not in tuple(ok):
                code = _error_code(answer.data) if answer.data else ""
                failed = NotThere if answer.status == 404 else StoreFailed
                raise failed(f"storage source {self.name!r} answered {method} {key} with {answer.status} {code}")
            return answer
        raise StoreFailed(f"storage source {self.name!r} {failure}")

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or those of ``[start, end)``."""
        if start is None or end is None:
            return bytes(self._call("GET", key).data)
        answer = self._call("GET", key, headers={"Range": f"bytes={start}-{end - 1}"}, ok=(200, 206))
        data = bytes(answer.data)
        if answer.status == 200:
            data = data[start:end]  # a store that ignores Range: the whole object
        return data

    def put(self, key: str, body: bytes, sha256: str) -> None:
        self._call(
            "PUT",
            key,
            body=body,
            headers={"x-amz-meta-sha256": sha256, "Content-Type": "application/octet-stream"},
            payload_sha256=sha256,
        )

    def head(self, key: str) -> Head | None:
        """Size, checksum metadata and ETag; None when there is no such object."""
        answer = self._call("HEAD", key, ok=(200, 404))
        if answer.status == 404:
            return None
        headers = answer.headers
        return Head(
            size=int(headers.get("Content-Length", "-1")),
            sha256=headers.get("x-amz-meta-sha256"),
            etag=str(headers.get("ETag", "")).strip('"'),
        )

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every object under ``prefix`` (ListObjectsV2, 1,000 a page): its key after the prefix -> (size, ETag)."""
        found: dict[str, tuple[int, str]] = {}
        token: str | None = None
        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='-_.~')}"
            if token:
                query += f"&continuation-token={quote(token, safe='-_.~')}"
            try:
                root = ET.fromstring(self._call("GET", "", query=query).data)  # noqa: S314 (the store's listing)
            except ET.ParseError as exc:
                raise StoreFailed(f"storage source {self.name!r} sent a listing that is not XML: {exc}") from None
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                key = item.findtext(f"{ns}Key") or ""
                size = int(item.findtext(f"{ns}Size") or -1)
                found[key[len(prefix) :]] = (size, (item.findtext(f"{ns}ETag") or "").strip('"'))
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return found

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        answer = self._call("PUT", key, query=query, body=body)
        etag = str(answer.headers.get("ETag", "")).strip('"')
        if not etag:
            raise StoreFailed(f"storage source {self.name!r} gave no ETag for part {number} of {key}")
        return etag


def _boto(what: str, source: StorageSource, call: Callable[..., T], /, **kwargs: Any) -> T:
    """A boto3 call; its failure as StoreFailed naming the store and what was asked."""
    try:
        return call(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise StoreFailed(f"storage source {source.name!r} failed to {what}: {code}") from exc
    except BotoCoreError as exc:
        raise StoreFailed(f"storage source {source.name!r} failed to {what}: {exc}") from exc


def part_plan(size: int, part_size: int) -> tuple[int, int]:
    """(part size, part count): ``part_size``, or whole MiB large enough for 10,000 parts."""
    part = max(part_size, math.ceil(size / MAX_PARTS / MIB) * MIB)
    return part, max(1, math.ceil(size / part))


# --- the task's rows ----------------------------------------------------------------------------------------


class _File(msgspec.Struct, frozen=True):
    path: str
    size: int
    sha256: str


class _Known(msgspec.Struct, frozen=True):
    """A SyncObject row as the run starts."""

    id: int
    status: str
    task_id: int | None
    size: int
    etag: str | None
    upload_id: str | None
    part_size: int | None
    parts: dict[str, str]
    parts_copied: int


class _Loaded(msgspec.Struct, frozen=True):
    task: SyncTask
    version: DatasetVersion
    workspace_id: int
    source: StorageSource
    target: StorageSource
    files: list[_File]
    known: dict[str, _Known]


class _Verified(msgspec.Struct, frozen=True):
    """A file now known to be on the target as the manifest says (to be committed)."""

    path: str
    size: int
    etag: str
    row_id: int | None = None
    """Its multipart row, updated in place (None: a row is written)."""


def _backoff(options: SyncOptions, attempts: int) -> timedelta:
    return timedelta(seconds=options.backoff_seconds * 2 ** max(0, attempts - 1))


def _owned(task_id: int, owner: str) -> Any:
    return and_(SyncTask.id == task_id, SyncTask.lease_owner == owner, SyncTask.status == RUNNING)


def default_owner() -> str:
    """This process's name for its leases: host, PID and a random part (a PID can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _audit(session: Session, task: SyncTask, action: str, workspace_id: int | None, **details: Any) -> None:
    session.execute(
        AUDIT_LOG.insert(),
        audit_row(
            SYSTEM,
            f"sync_task.{action}",
            target_type="sync_task",
            target=str(task.id),
            workspace_id=workspace_id,
            details={"version_id": task.version_id, **details},
        ),
    )


def _workspace_of(session: Session, version_id: int) -> int | None:
    return session.scalar(
        select(Dataset.workspace_id)
        .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .where(DatasetVersion.id == version_id)
    )


def claim(session: Session, task_id: int, owner: str, lease_seconds: float) -> bool:
    """Take the task if it is due (queued and its time has come) or its lease expired, and attempts are left:
    one conditional UPDATE, so of two workers racing for it exactly one gets it."""
    now = utcnow()
    result = session.execute(
        update(SyncTask)
        .where(
            SyncTask.id == task_id,
            SyncTask.attempts < MAX_ATTEMPTS,
            or_(
                and_(SyncTask.status == QUEUED, SyncTask.next_attempt_at <= now),
                and_(SyncTask.status == RUNNING, SyncTask.lease_until < now),
            ),
        )
        .values(
            status=RUNNING,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=SyncTask.attempts + 1,
            started_at=func.coalesce(SyncTask.started_at, now),
            finished_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _claim_due(session: Session, owner: str, limit: int, lease_seconds: float) -> list[int]:
    now = utcnow()
    for task in session.scalars(
        select(SyncTask).where(
            SyncTask.status == RUNNING, SyncTask.lease_until < now, SyncTask.attempts >= MAX_ATTEMPTS
        )
    ).all():  # its worker died on its last attempt: nobody will run it again
        result = session.execute(
            update(SyncTask)
            .where(SyncTask.id == task.id, SyncTask.status == RUNNING, SyncTask.lease_until < now)
            .values(
                status=FAILED,
                finished_at=now,
                lease_owner=None,
                lease_until=None,
                last_error=f"its worker stopped during attempt {task.attempts} of {MAX_ATTEMPTS} (lease expired)",
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            _audit(session, task, "failed", _workspace_of(session, task.version_id), error="lease expired")
            SYNC_ATTEMPTS.labels("failed").inc()
    candidates = session.scalars(
        select(SyncTask.id)
        .where(
            SyncTask.attempts < MAX_ATTEMPTS,
            or_(
                and_(SyncTask.status == QUEUED, SyncTask.next_attempt_at <= now),
                and_(SyncTask.status == RUNNING, SyncTask.lease_until < now),
            ),
        )
        .order_by(SyncTask.next_attempt_at, SyncTask.id)
        .limit(limit * 4)
    ).all()
    claimed: list[int] = []
    for task_id in candidates:
        if len(claimed) == limit:
            break
        if claim(session, task_id, owner, lease_seconds):
            claimed.append(task_id)
    return claimed


def _load(session: Session, task_id: int, owner: str) -> _Loaded | None:
    task = session.scalar(select(SyncTask).where(_owned(task_id, owner)))
    if task is None:
        return None
    version = session.get_one(DatasetVersion, task.version_id)
    workspace_id = session.scalar(select(Dataset.workspace_id).where(Dataset.id == version.dataset_id))
    files = [
        _File(path, size, sha)
        for path, size, sha in session.execute(
            select(DatasetFile.path, DatasetFile.size, DatasetFile.sha256)
            .where(DatasetFile.version_id == version.id)
            .order_by(DatasetFile.path)
        )
    ]
    columns = (
        SyncObject.path,
        SyncObject.id,
        SyncObject.status,
        SyncObject.task_id,
        SyncObject.size,
        SyncObject.etag,
        SyncObject.upload_id,
        SyncObject.part_size,
        SyncObject.parts,
        SyncObject.parts_copied,
    )
    rows = session.execute(
        select(*columns).where(SyncObject.version_id == version.id, SyncObject.target_id == task.target_id)
    )  # (no ORM objects: thousands of rows per task)
    known = {
        path: _Known(
            id=row_id,
            status=status,
            task_id=task_id,
            size=size,
            etag=etag,
            upload_id=upload_id,
            part_size=part_size,
            parts=dict(parts or {}),
            parts_copied=parts_copied,
        )
        for path, row_id, status, task_id, size, etag, upload_id, part_size, parts, parts_copied in rows
    }
    return _Loaded(
        task=task,
        version=version,
        workspace_id=int(workspace_id or 0),
        source=session.get_one(StorageSource, task.source_id),
        target=session.get_one(StorageSource, task.target_id),
        files=files,
        known=known,
    )


# --- one attempt ------------------------------------------------------------------------------------------


class _Run:
    """One attempt at one task, by the worker holding its lease."""

    def __init__(
        self, database: Database, settings: Settings, loaded: _Loaded, owner: str, options: SyncOptions
    ) -> None:
        self.database = database
        self.settings = settings
        self.loaded = loaded
        self.task = loaded.task
        self.owner = owner
        self.options = options
        self.source, self.target = loaded.source, loaded.target
        self.src_prefix = f"{self.source.prefix}{loaded.version.prefix}"
        self.dst_prefix = f"{self.target.prefix}{loaded.version.prefix}"
        keys = sources.keyring(settings)
        self.src_client = sources.client(self.source, keys, settings)
        self.dst_client = sources.client(self.target, keys, settings)
        size = options.workers + options.part_workers + 2  # (+2: a big file's multipart bookkeeping)
        timeout = settings.storage_timeout_seconds
        self.src = Objects(self.source, sources.credentials(self.source, keys), timeout=timeout)
        self.dst = Objects(self.target, sources.credentials(self.target, keys), timeout=timeout)
        self.pool = ThreadPoolExecutor(size, thread_name_prefix=f"sync-{self.task.id}")
        self.stop = asyncio.Event()
        self.small_slots = asyncio.Semaphore(options.workers)
        self.part_slots = asyncio.Semaphore(options.part_workers)
        self.pending: list[_Verified] = []
        self.mismatches: list[SourceMismatch] = []
        """Files the source does not hold as the manifest says (the others are copied; the attempt fails)."""
        self.objects_done = self.bytes_done = 0
        self.objects_copied, self.bytes_copied = self.task.objects_copied, self.task.bytes_copied
        """What the task copied in all its attempts (the earlier ones' from its row)."""
        self.copied_before = self.task.bytes_copied
        self.partial: dict[str, int] = {}
        """Bytes of finished parts of files being copied (in bytes_done)."""
        self.started = time.monotonic()
        self.flushed = time.monotonic()
        self.commit_lock = asyncio.Lock()

    async def _thread(self, call: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(call, *args))

    def _check(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    async def execute(self) -> None:
        if self.loaded.version.status != READY:  # (the API and realtime tasks only queue ready ones)
            raise RuntimeError(f"version {self.loaded.version.version} is {self.loaded.version.status}, not ready")
        files, known = self.loaded.files, self.loaded.known
        listing = await self._thread(self.dst.list, self.dst_prefix)
        to_copy: list[_File] = []
        to_head: list[_File] = []
        for f in files:
            seen, listed = known.get(f.path), listing.get(f.path)
            checked = seen is not None and seen.status == VERIFIED and seen.size == f.size
            unchanged = checked and listed is not None and seen is not None and listed == (seen.size, seen.etag)
            if self.task.mode == FULL:
                if unchanged and seen is not None and seen.task_id == self.task.id:
                    self._skip(f, None)  # an earlier attempt of this task copied it
                else:
                    to_copy.append(f)
            elif unchanged:
                self._skip(f, None)
            elif listed is not None and listed[0] == f.size and not checked:
                to_head.append(f)  # there, never checked by us (the uploader's own copy, another tool's): ask
            else:
                to_copy.append(f)  # missing, another size, or rewritten since we checked it
        if to_head:
            found = await asyncio.gather(*(self._head_one(f) for f in to_head))
            to_copy.extend(f for f, ok in zip(to_head, found, strict=True) if not ok)
        if to_copy:  # (else the commit below and the finish say it all)
            await self._commit(replica=SYNCING)
        big = [f for f in to_copy if f.size >= self.options.small_limit]
        small = [f for f in to_copy if f.size < self.options.small_limit]
        log.info(
            "sync_start",
            task=self.task.id,
            source=self.source.name,
            target=self.target.name,
            mode=self.task.mode,
            files=len(files),
            copy=len(to_copy),
            checked=len(to_head),
            attempt=self.task.attempts,
        )
        async with asyncio.TaskGroup() as group:
            for f in big:
                group.create_task(self._big_or_mismatch(f, known.get(f.path)))
            if small:
                group.create_task(self._copy_smalls(small))
        await self._commit()
        if self.mismatches:
            more = f" (and {len(self.mismatches) - 1} more such files)" if len(self.mismatches) > 1 else ""
            raise StoreFailed(f"{self.mismatches[0]}{more}")

    async def _big_or_mismatch(self, f: _File, seen: _Known | None) -> None:
        try:
            await self._copy_big(f, seen)
        except SourceMismatch as exc:
            self.mismatches.append(exc)

    def _skip(self, f: _File, verified: _Verified | None) -> None:
        self.objects_done += 1
        self.bytes_done += f.size
        SYNC_OBJECTS.labels(self.target.name, "in_place").inc()
        if verified is not None:
            self.pending.append(verified)

    async def _head_one(self, f: _File) -> bool:
        async with self.small_slots:
            head = await self._thread(self.dst.head, self.dst_prefix + f.path)
        if head is None or head.size != f.size or head.sha256 != f.sha256:
            return False
        self._skip(f, _Verified(f.path, f.size, head.etag))
        return True

    def _copy_small_blocking(self, f: _File) -> str:
        try:
            data = self.src.get(self.src_prefix + f.path)
        except NotThere:
            raise SourceMismatch(f"storage source {self.source.name!r} has no {f.path}") from None
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            raise SourceMismatch(
                f"storage source {self.source.name!r} holds {f.path} with another size or checksum than the manifest"
            )
        self.dst.put(self.dst_prefix + f.path, data, f.sha256)
        return self._verify(f)

    def _verify(self, f: _File) -> str:
        """The target's ETag of the file, once a HEAD shows its size and checksum metadata as the manifest says."""
        head = self.dst.head(self.dst_prefix + f.path)
        if head is None or head.size != f.size or head.sha256 != f.sha256:
            got = "no object" if head is None else f"{head.size} bytes, sha256 {head.sha256}"
            raise StoreFailed(f"storage source {self.target.name!r} holds {f.path} as {got} after the copy")
        return head.etag

    async def _copy_smalls(self, files: list[_File]) -> None:
        """The small files, by ``workers`` threads that each take the next one until none is left (no hand-off to
        the event loop per file, which cost a tenth of the CPU at 2,000 files); what they copied is committed every
        ``flush_seconds``. The first failure stops the others after their current file."""
        todo = collections.deque(files)
        finished: collections.deque[tuple[_File, str]] = collections.deque()
        halt = threading.Event()

        def work() -> None:
            while not (halt.is_set() or self.stop.is_set()):
                try:
                    f = todo.popleft()
                except IndexError:
                    return
                try:
                    finished.append((f, self._copy_small_blocking(f)))
                except SourceMismatch as exc:
                    self.mismatches.append(exc)
                except BaseException:
                    halt.set()
                    raise

        loop = asyncio.get_running_loop()
        threads = [loop.run_in_executor(self.pool, work) for _ in range(min(self.options.workers, len(files)))]
        try:
            waiting: set[asyncio.Future[None]] = set(threads)
            while waiting:
                _, waiting = await asyncio.wait(
                    waiting, timeout=self.options.flush_seconds, return_when=asyncio.FIRST_EXCEPTION
                )
                while finished:
                    f, etag = finished.popleft()
                    self._copied(f, _Verified(f.path, f.size, etag))
                failure = next((t.exception() for t in threads if t.done() and t.exception()), None)
                if failure is not None:
                    raise failure
                self._check()
                await self._commit()
        finally:
            halt.set()  # (also when cancelled: a big file's copy failed)

    def _copied(self, f: _File, verified: _Verified) -> None:
        self.objects_done += 1
        self.objects_copied += 1
        self.bytes_done += f.size - self.partial.pop(f.path, 0)
        self.bytes_copied += f.size if verified.row_id is None else 0  # a big one's parts were counted as sent
        self.pending.append(verified)
        SYNC_OBJECTS.labels(self.target.name, "copied").inc()
        if verified.row_id is None:
            SYNC_BYTES.labels(self.target.name).inc(f.size)

    async def _copy_big(self, f: _File, seen: _Known | None) -> None:
        key = self.dst_prefix + f.path
        part_size, count = part_plan(f.size, self.options.part_size)
        upload_id, parts, row_id = await self._resumable(f, seen, part_size)
        if upload_id is None:
            head = await self._thread(self.src.head, self.src_prefix + f.path)
            if head is None or head.size != f.size or head.sha256 != f.sha256:
                raise SourceMismatch(
                    f"storage source {self.source.name!r} has no {f.path}"
                    if head is None
                    else f"storage source {self.source.name!r} holds {f.path} with another size or checksum than the "
                    "manifest"
                )
            created = await self._thread(
                partial(
                    _boto,
                    "start a multipart upload",
                    self.target,
                    self.dst_client.create_multipart_upload,
                    Bucket=self.target.bucket,
                    Key=key,
                    Metadata={"sha256": f.sha256},
                    ContentType="application/octet-stream",
                )
            )
            upload_id, parts = str(created["UploadId"]), {}
            row_id = await self.database.run(partial(self._start_row, f, upload_id, part_size, seen))
        assert row_id is not None
        self.partial[f.path] = sum(_part_bytes(f.size, part_size, count, int(n)) for n in parts)
        self.bytes_done += self.partial[f.path]

        async def one(number: int) -> None:
            start = (number - 1) * part_size
            end = min(f.size, start + part_size)
            async with self.part_slots:
                self._check()
                etag = await self._thread(self._copy_part, f, upload_id, number, start, end)
            parts[str(number)] = etag
            self.partial[f.path] = self.partial.get(f.path, 0) + end - start
            self.bytes_done += end - start
            self.bytes_copied += end - start
            SYNC_BYTES.labels(self.target.name).inc(end - start)
            SYNC_PARTS.labels(self.target.name).inc()
            await self._commit(part=(row_id, dict(parts)))

        async with asyncio.TaskGroup() as group:
            for number in range(1, count + 1):
                if str(number) not in parts:
                    group.create_task(one(number))
        self._check()
        await self._thread(
            partial(
                _boto,
                "complete the multipart upload",
                self.target,
                self.dst_client.complete_multipart_upload,
                Bucket=self.target.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": f'"{parts[str(n)]}"'} for n in range(1, count + 1)]
                },
            )
        )
        etag = await self._thread(self._verify, f)
        self._copied(f, _Verified(f.path, f.size, etag, row_id))
        await self._commit()

    def _copy_part(self, f: _File, upload_id: str, number: int, start: int, end: int) -> str:
        data = self.src.get(self.src_prefix + f.path, start, end)
        if len(data) != end - start:
            raise StoreFailed(f"storage source {self.source.name!r} gave {len(data)} bytes of {f.path}'s range")
        return self.dst.upload_part(self.dst_prefix + f.path, upload_id, number, data)

    async def _resumable(
        self, f: _File, seen: _Known | None, part_size: int
    ) -> tuple[str | None, dict[str, str], int | None]:
        """(upload id, finished parts, row id) of an earlier attempt's multipart copy the store still has, with the
        parts it lists as they were committed; (None, {}, None) when there is none to resume."""
        if seen is None or seen.status != COPYING or not seen.upload_id:
            return None, {}, None
        upload_id = seen.upload_id
        if seen.part_size != part_size:  # copied in other parts before (other options): start again
            await self._abort(f.path, upload_id)
            return None, {}, None

        def listed() -> dict[str, str] | None:
            found: dict[str, str] = {}
            try:
                pages = self.dst_client.get_paginator("list_parts").paginate(
                    Bucket=self.target.bucket, Key=self.dst_prefix + f.path, UploadId=upload_id
                )
                for page in pages:
                    for p in page.get("Parts", []):
                        found[str(p["PartNumber"])] = str(p["ETag"]).strip('"')
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return None  # completed, aborted or expired: start again
                raise StoreFailed(f"storage source {self.target.name!r} failed to list parts: {exc}") from exc
            except BotoCoreError as exc:
                raise StoreFailed(f"storage source {self.target.name!r} failed to list parts: {exc}") from exc
            return found

        held = await self._thread(listed)
        if held is None:
            return None, {}, None
        parts = {n: etag for n, etag in seen.parts.items() if held.get(n) == etag}
        log.info("sync_resume", task=self.task.id, path=f.path, parts=len(parts), upload_id=upload_id)
        return upload_id, parts, seen.id

    async def _abort(self, path: str, upload_id: str) -> None:
        """Abort a multipart upload on the target; one that fails to is left to the store's lifecycle rules."""
        try:
            await self._thread(
                partial(
                    self.dst_client.abort_multipart_upload,
                    Bucket=self.target.bucket,
                    Key=self.dst_prefix + path,
                    UploadId=upload_id,
                )
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("sync_abort_failed", task=self.task.id, path=path, error=str(exc)[:300])

    def _start_row(self, f: _File, upload_id: str, part_size: int, seen: _Known | None, session: Session) -> int:
        """A new multipart copy's row (replacing what was known of the file); its id."""
        session.execute(
            delete(SyncObject).where(
                SyncObject.version_id == self.task.version_id,
                SyncObject.target_id == self.target.id,
                SyncObject.path == f.path,
            )
        )
        return int(
            session.execute(
                insert(SyncObject)
                .values(
                    version_id=self.task.version_id,
                    target_id=self.target.id,
                    path=f.path,
                    status=COPYING,
                    task_id=self.task.id,
                    size=f.size,
                    upload_id=upload_id,
                    part_size=part_size,
                    parts={},
                    parts_copied=seen.parts_copied if seen is not None else 0,
                    updated_at=utcnow(),
                )
                .returning(SyncObject.id)
            ).scalar_one()
        )

    async def _commit(self, *, part: tuple[int, dict[str, str]] | None = None, replica: str | None = None) -> None:
        """Write the progress (and the files verified since the last commit, and a finished part) while this
        worker holds the lease; stop if it no longer does."""
        async with self.commit_lock:
            rows, self.pending = self.pending, []
            self.flushed = time.monotonic()
            owned = await self.database.run(partial(self._write, rows, part, replica))
        if not owned:
            self.stop.set()
            raise _Stopped

    def _write(
        self, rows: list[_Verified], part: tuple[int, dict[str, str]] | None, replica: str | None, session: Session
    ) -> bool:
        now = utcnow()
        elapsed = max(1e-3, time.monotonic() - self.started)
        owned = session.execute(
            update(SyncTask)
            .where(_owned(self.task.id, self.owner))
            .values(
                objects_total=len(self.loaded.files),
                bytes_total=self.loaded.version.size_bytes,
                objects_done=self.objects_done,
                objects_copied=self.objects_copied,
                bytes_done=self.bytes_done,
                bytes_copied=self.bytes_copied,
                bytes_per_second=round((self.bytes_copied - self.copied_before) / elapsed, 1),
                lease_until=now + timedelta(seconds=self.options.lease_seconds),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        # what the target holds is a fact whoever holds the lease: written either way
        fresh = [r for r in rows if r.row_id is None]
        for chunk in range(0, len(fresh), 500):
            paths = [r.path for r in fresh[chunk : chunk + 500]]
            session.execute(
                delete(SyncObject).where(
                    SyncObject.version_id == self.task.version_id,
                    SyncObject.target_id == self.target.id,
                    SyncObject.path.in_(paths),
                )
            )
        if fresh:
            session.execute(
                insert(SyncObject),
                [
                    {
                        "version_id": self.task.version_id,
                        "target_id": self.target.id,
                        "path": r.path,
                        "status": VERIFIED,
                        "task_id": self.task.id,
                        "size": r.size,
                        "etag": r.etag,
                        "parts": {},
                        "parts_copied": 0,
                        "updated_at": now,
                    }
                    for r in fresh
                ],
            )
        for r in rows:
            if r.row_id is not None:
                session.execute(
                    update(SyncObject)
                    .where(SyncObject.id == r.row_id)
                    .values(
                        status=VERIFIED, etag=r.etag, upload_id=None, parts={}, task_id=self.task.id, updated_at=now
                    )
                )
        if part is not None:
            row_id, parts = part
            session.execute(
                update(SyncObject)
                .where(SyncObject.id == row_id)
                .values(parts=parts, parts_copied=SyncObject.parts_copied + 1, task_id=self.task.id, updated_at=now)
            )
        if replica is not None and owned:
            _set_replica(session, self.task.version_id, self.target.id, replica, now)
        return bool(owned)

    async def heartbeat(self) -> None:
        """Renew the lease every third of it; a lost one (cancelled, or taken after it expired) stops the run."""
        every = self.options.lease_seconds / 3
        while not self.stop.is_set():
            await asyncio.sleep(every)
            owned = await self.database.run(partial(self._renew))
            if not owned:
                self.stop.set()

    def _renew(self, session: Session) -> bool:
        until = utcnow() + timedelta(seconds=self.options.lease_seconds)
        result = session.execute(
            update(SyncTask)
            .where(_owned(self.task.id, self.owner))
            .values(lease_until=until)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.src.close()
        self.dst.close()


def _part_bytes(size: int, part_size: int, count: int, number: int) -> int:
    return part_size if number < count else size - part_size * (count - 1)


def _set_replica(session: Session, version_id: int, target_id: int, status: str, now: datetime) -> None:
    """The target's replica row: made (``syncing``) if missing; ``syncing`` only replaces ``ready`` when the
    sync found files missing (its caller says so); ``ready`` with the version's size when done."""
    replica = session.scalar(select(Replica).where(Replica.version_id == version_id, Replica.source_id == target_id))
    if replica is None:
        replica = Replica(version_id=version_id, source_id=target_id, status=status, bytes=0)
        session.add(replica)
    if status == READY:
        size = session.scalar(select(DatasetVersion.size_bytes).where(DatasetVersion.id == version_id)) or 0
        replica.status, replica.bytes, replica.synced_at = READY, int(size), now
    elif status == ERROR:
        if replica.status != READY:
            replica.status = ERROR
    else:
        replica.status = status


def _finish(run: _Run, session: Session) -> bool:
    now = utcnow()
    task = run.task
    elapsed = max(1e-3, time.monotonic() - run.started)
    owned = session.execute(
        update(SyncTask)
        .where(_owned(task.id, run.owner))
        .values(
            status=DONE,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
            last_error=None,
            objects_total=len(run.loaded.files),
            bytes_total=run.loaded.version.size_bytes,
            objects_done=run.objects_done,
            objects_copied=run.objects_copied,
            bytes_done=run.bytes_done,
            bytes_copied=run.bytes_copied,
            bytes_per_second=round((run.bytes_copied - run.copied_before) / elapsed, 1),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not owned:
        return False
    _set_replica(session, task.version_id, task.target_id, READY, now)
    _audit(
        session,
        task,
        "done",
        run.loaded.workspace_id,
        source=run.source.name,
        target=run.target.name,
        attempt=task.attempts,
        objects_copied=run.objects_copied,
        bytes_copied=run.bytes_copied,
    )
    return True


def _fail(task_id: int, owner: str, error: str, options: SyncOptions, session: Session) -> str | None:
    """The attempt failed: retried later, or the task failed after its last attempt; which (None: not ours)."""
    task = session.scalar(select(SyncTask).where(_owned(task_id, owner)))
    if task is None:
        return None
    now = utcnow()
    last = task.attempts >= MAX_ATTEMPTS
    values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "last_error": error[:2000], "updated_at": now}
    if last:
        values.update(status=FAILED, finished_at=now)
    else:
        values.update(status=QUEUED, next_attempt_at=now + _backoff(options, task.attempts))
    session.execute(
        update(SyncTask).where(_owned(task_id, owner)).values(**values).execution_options(synchronize_session=False)
    )
    if last:
        _set_replica(session, task.version_id, task.target_id, ERROR, now)
        _audit(session, task, "failed", _workspace_of(session, task.version_id), error=error[:500])
    return FAILED if last else "retry"


def _abort_cancelled(session: Session, task_id: int) -> list[tuple[str, str]]:
    """A cancelled task's unfinished multipart copies: their rows dropped, their (key path, upload id) returned."""
    rows = session.scalars(select(SyncObject).where(SyncObject.task_id == task_id, SyncObject.status == COPYING)).all()
    found = [(r.path, r.upload_id) for r in rows if r.upload_id]
    session.execute(delete(SyncObject).where(SyncObject.task_id == task_id, SyncObject.status == COPYING))
    return found


async def run_task(
    database: Database, settings: Settings, task_id: int, owner: str, options: SyncOptions = DEFAULT_OPTIONS
) -> str:
    """Run one claimed task's attempt to its end; what became of it: done, retry, failed, cancelled or lost."""
    loaded = await database.run(partial(_load, task_id=task_id, owner=owner))
    if loaded is None:
        return "lost"
    SYNC_RUNNING.inc()
    run: _Run | None = None
    heartbeat: asyncio.Task[None] | None = None
    outcome: str
    try:
        run = _Run(database, settings, loaded, owner, options)
        heartbeat = asyncio.create_task(run.heartbeat())
        await run.execute()
    except BaseExceptionGroup as group:
        outcome = await _after_error(database, task_id, owner, options, run, _first(group))
    except Exception as exc:  # a store down, refusing or inconsistent; no secret keys; the database away
        outcome = await _after_error(database, task_id, owner, options, run, exc)
    else:
        outcome = DONE if await database.run(partial(_finish, run)) else "lost"
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        if run is not None:
            await asyncio.get_running_loop().run_in_executor(None, run.close)
        SYNC_RUNNING.dec()
    SYNC_ATTEMPTS.labels(outcome).inc()
    log.info(
        "sync_attempt",
        task=task_id,
        outcome=outcome,
        attempt=loaded.task.attempts,
        source=loaded.source.name,
        target=loaded.target.name,
        objects_copied=run.objects_copied if run else 0,
        bytes_copied=run.bytes_copied if run else 0,
    )
    return outcome


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that failed a TaskGroup (the first that is not the cancellation of the others)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def _after_error(
    database: Database, task_id: int, owner: str, options: SyncOptions, run: _Run | None, exc: BaseException
) -> str:
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, _Stopped):
        status = await database.run(lambda s: s.scalar(select(SyncTask.status).where(SyncTask.id == task_id)))
        if status != CANCELLED:
            return "lost"
        uploads = await database.run(partial(_abort_cancelled, task_id=task_id))
        if run is not None:
            for path, upload_id in uploads:
                await run._abort(path, upload_id)
        return CANCELLED
    error = str(exc) or type(exc).__name__
    if not isinstance(exc, StoreFailed):
        log.warning("sync_attempt_error", task=task_id, error=error[:500], kind=type(exc).__name__)
    if run is not None and run.pending:  # what it verified before failing still counts next time
        try:
            await database.run(partial(run._write, run.pending, None, None))
        except Exception as write_error:  # the database away too: the next attempt checks those files again
            log.warning("sync_progress_lost", task=task_id, error=str(write_error)[:300])
    outcome = await database.run(partial(_fail, task_id, owner, error, options))
    return outcome or "lost"


_RUNNING: set[asyncio.Task[str]] = set()
"""Tasks this process runs in the background (``run_due_tasks(wait=False)``)."""


async def run_due_tasks(
    database: Database,
    settings: Settings,
    *,
    options: SyncOptions = DEFAULT_OPTIONS,
    owner: str | None = None,
    wait: bool = True,
) -> list[int]:
    """The worker's sync step: fail the tasks whose worker died on their last attempt, claim due tasks (as many as
    ``tasks_at_once`` less those this process runs) and run them; the ids claimed. ``wait``: return when they
    have ended (``remotegpu worker --once``, tests); else they run on in the background and the next step
    claims more as they end."""
    _RUNNING.difference_update([t for t in _RUNNING if t.done()])
    free = options.tasks_at_once - len(_RUNNING)
    if free <= 0:
        return []
    owner = owner or default_owner()
    claimed = await database.run(partial(_claim_due, owner=owner, limit=free, lease_seconds=options.lease_seconds))
    runs = [asyncio.create_task(run_task(database, settings, task_id, owner, options)) for task_id in claimed]
    if wait:
        await asyncio.gather(*runs)
    else:
        _RUNNING.update(runs)
        for run in runs:
            run.add_done_callback(_RUNNING.discard)
    return claimed


# --- creating tasks -----------------------------------------------------------------------------------------


async def queue_realtime(session: AsyncSession, actor: Actor, version: DatasetVersion) -> list[SyncTask]:
    """A version just became ready: a realtime task to each other enabled store (those without an open task for
    it), in the caller's transaction, each with its audit entry."""
    targets = (
        await session.scalars(
            select(StorageSource)
            .where(StorageSource.enabled.is_(True), StorageSource.id != version.primary_source_id)
            .order_by(StorageSource.priority, StorageSource.id)
        )
    ).all()
    busy = set(
        (
            await session.scalars(
                select(SyncTask.target_id).where(SyncTask.version_id == version.id, SyncTask.status.in_(OPEN_STATUSES))
            )
        ).all()
    )
    now = utcnow()
    made = [
        SyncTask(
            version_id=version.id,
            source_id=version.primary_source_id,
            target_id=target.id,
            policy=REALTIME,
            direction=ONE_WAY,
            mode=INCREMENTAL,
            status=QUEUED,
            attempts=0,
            next_attempt_at=now,
            created_by=actor.user_id,
        )
        for target in targets
        if target.id not in busy
    ]
    if not made:
        return []
    session.add_all(made)
    await session.flush()
    workspace_id = await session.scalar(select(Dataset.workspace_id).where(Dataset.id == version.dataset_id))
    names = {t.id: t.name for t in targets}
    for task in made:
        record(
            session,
            actor,
            "sync_task.create",
            target_type="sync_task",
            target=str(task.id),
            workspace_id=workspace_id,
            details={"version_id": version.id, "policy": REALTIME, "target": names[task.target_id], "mode": task.mode},
        )
    return made
