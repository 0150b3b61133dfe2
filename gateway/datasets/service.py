"""Datasets and models: their versions, uploads straight to the stores through presigned multipart URLs, the
manifest of each version (our SHA-256 per file), downloads from the replica routing picks.

Who may do what: any member creates datasets and uploads to their own; admins and owners manage all of the
workspace's; workspaces a dataset is shared with read it (read-only); anyone else gets 404.

An upload of one file is one S3 multipart upload to the version's primary store, its parts PUT by the client
to presigned URLs (the bytes never pass through the gateway), its SHA-256 given at the start and stored in the
object's metadata (``x-amz-meta-sha256``). Completing it, the gateway lists the parts the store holds, checks
their number and sizes against the plan, completes the upload and HEADs the object (its size and checksum
metadata) before the file enters the manifest. A crash between the store's completion and our commit is
repaired by the next ``complete``: the upload is gone from the store, the object is there with its checksum.

S3 calls run in threads, outside any database transaction (a slow store must not hold SQLite's write lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.accounts.models import User
from gateway.audit.writer import record
from gateway.config import Settings
from gateway.datasets import routing, sources, sync
from gateway.datasets.models import (
    READY,
    UPLOADING,
    Dataset,
    DatasetFile,
    DatasetVersion,
    Replica,
    StorageSource,
    Upload,
)
from gateway.datasets.schemas import (
    DatasetCreate,
    DatasetOut,
    DatasetPatch,
    DownloadOut,
    FileOut,
    PartOut,
    UploadCreate,
    UploadOut,
    VersionCreate,
    VersionOut,
)
from gateway.db.base import utcnow
from gateway.errors import Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from gateway.schemas import Page, Pagination
from gateway.workspaces.access import WorkspaceAccess
from gateway.workspaces.models import Role, Workspace

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("gateway.datasets")
MIN_PART = 8 * 1024 * 1024
"""Smallest part but the last (S3's minimum is 5 MiB; 8 MiB as boto3 and rclone use)."""
MAX_PARTS = 10_000
URLS_PER_ANSWER = 1000
"""Presigned part URLs in one answer at most; the client asks again (GET the upload) for the rest."""
PRESIGN_SECONDS = 3600
DOWNLOAD_SECONDS = 900
UPLOADS = Counter("remotegpu_dataset_uploads_total", "File uploads by outcome", ["outcome"])
UPLOADED_BYTES = Counter("remotegpu_dataset_uploaded_bytes_total", "Bytes of completed file uploads")
ROUTED = Counter(
    "remotegpu_storage_routes_total", "Routing decisions by purpose and whether the first choice failed", ["purpose"]
)


class StoreError(GatewayError):
    """The store did not do what was asked (502: the request was right, the store failed)."""

    status, kind, title = 502, "store-error", "Storage source error"


class UploadLost(Conflict):
    """The store no longer has a multipart upload we recorded open."""


def part_plan(size: int) -> tuple[int, int]:
    """(part size, part count) of a file: parts of at least MIN_PART, whole MiB, at most MAX_PARTS of them."""
    mib = 1024 * 1024
    part = max(MIN_PART, math.ceil(size / MAX_PARTS / mib) * mib)
    return part, max(1, math.ceil(size / part))


def check_path(path: str) -> None:
    """A relative '/'-path with no empty, '.' or '..' segment (it becomes part of an object key and, at
    stage-in, of a path on the node: nothing may climb out)."""
    if path.startswith("/") or any(seg in ("", ".", "..") for seg in path.split("/")):
        raise InvalidInput("a relative path without empty, '.' or '..' segments", field="path")


def _store_failed(exc: Exception, source: StorageSource, what: str) -> StoreError:
    message = exc.response.get("Error", {}).get("Message", str(exc)) if isinstance(exc, ClientError) else str(exc)
    log.warning("store_call_failed", source=source.name, what=what, error=message[:300])
    return StoreError(f"storage source {source.name!r} failed to {what}: {message[:300]}")


async def _s3(source: StorageSource, what: str, call: Any, /, **kwargs: Any) -> Any:
    """A boto3 call in a thread; the store's failure as a 502 naming the source."""
    try:
        return await asyncio.to_thread(call, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise _store_failed(exc, source, what) from None


class DatasetService:
    """The datasets (``kind`` ``dataset``) or models (``model``) of workspaces."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.settings = settings
        self.kind = kind

    # --- datasets ----------------------------------------------------------------------------------------

    async def create(self, session: AsyncSession, access: WorkspaceAccess, data: DatasetCreate) -> DatasetOut:
        access.require(Role.MEMBER)
        if await self._by_name(session, access.workspace.id, data.name) is not None:
            raise Conflict(f"{self.kind} {data.name!r} already exists in this workspace", field="name")
        dataset = Dataset(
            workspace_id=access.workspace.id,
            kind=self.kind,
            name=data.name,
            description=data.description,
            tags=sorted(set(data.tags)),
            shared_with=[],
            created_by=access.actor.user_id,
        )
        session.add(dataset)
        await session.flush()
        self._audit(session, access, "create", dataset)
        await session.commit()
        return await self._out(session, dataset)

    async def list_page(
        self, session: AsyncSession, access: WorkspaceAccess, page: Pagination, name: str | None = None
    ) -> Page[DatasetOut]:
        """The workspace's own and those shared with it, by name."""
        access.require(Role.MEMBER)
        query = select(Dataset).where(Dataset.kind == self.kind, Dataset.deleted_at.is_(None))
        if name is not None:
            query = query.where(Dataset.name == name)
        rows = [
            d
            for d in (await session.scalars(query.order_by(Dataset.name, Dataset.id))).all()
            if self._readable(d, access)
        ]
        items = [await self._out(session, d) for d in rows[page.offset : page.offset + page.limit]]
        return Page(items=items, total=len(rows), limit=page.limit, offset=page.offset)

    async def get(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str) -> DatasetOut:
        return await self._out(session, await self._readable_dataset(session, access, dataset_id))

    async def update(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, data: DatasetPatch
    ) -> DatasetOut:
        dataset = await self._writable_dataset(session, access, dataset_id)
        if data.description is not None:
            dataset.description = data.description
        if data.tags is not None:
            dataset.tags = sorted(set(data.tags))
        if data.shared_with is not None:
            access.require(Role.ADMIN)
            slugs = sorted(set(data.shared_with) - {access.workspace.slug})
            rows = await session.execute(select(Workspace.slug, Workspace.id).where(Workspace.slug.in_(slugs)))
            found = {slug: workspace_id for slug, workspace_id in rows}
            missing = [s for s in slugs if s not in found]
            if missing:
                raise InvalidInput(f"no workspace {missing[0]!r}", field="shared_with")
            dataset.shared_with = [found[s] for s in slugs]
        self._audit(session, access, "update", dataset)
        await session.commit()
        return await self._out(session, dataset)

    async def delete(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str) -> None:
        """Marked deleted (its objects stay in the stores until an admin purges them: nothing is lost by a slip)."""
        dataset = await self._writable_dataset(session, access, dataset_id)
        dataset.deleted_at = utcnow()
        self._audit(session, access, "delete", dataset)
        await session.commit()

    # --- versions ----------------------------------------------------------------------------------------

    async def create_version(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, data: VersionCreate
    ) -> VersionOut:
        dataset = await self._writable_dataset(session, access, dataset_id)
        versions = (await session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id))).all()
        open_one = next((v for v in versions if v.status == UPLOADING), None)
        if open_one is not None:
            raise Conflict(f"version {open_one.version} is still uploading: finish it first", field="version")
        user = await session.get(User, access.actor.user_id) if access.actor.user_id else None
        source = await self._upload_source(session, access, user, data.source, dataset.id)
        number = max((v.version for v in versions), default=0) + 1
        version = DatasetVersion(
            dataset_id=dataset.id,
            version=number,
            primary_source_id=source.id,
            prefix=f"{access.workspace.slug}/{self.kind}s/{dataset.id}/v{number}/",
        )
        session.add(version)
        await session.flush()
        session.add(Replica(version_id=version.id, source_id=source.id, status=UPLOADING))
        self._audit(session, access, "version.create", dataset, version=number, source=source.name)
        await session.commit()
        return await self._version_out(session, version)

    async def versions(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str) -> list[VersionOut]:
        dataset = await self._readable_dataset(session, access, dataset_id)
        rows = (
            await session.scalars(
                select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id).order_by(DatasetVersion.version)
            )
        ).all()
        return [await self._version_out(session, v) for v in rows]

    async def version(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int) -> VersionOut:
        _, version = await self._readable_version(session, access, dataset_id, number)
        return await self._version_out(session, version)

    async def finish(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int) -> VersionOut:
        """The version is ready (immutable from now on) once no upload of it is open and it has a file."""
        dataset, version = await self._writable_version(session, access, dataset_id, number)
        if version.status == READY:
            return await self._version_out(session, version)
        open_paths = (
            await session.scalars(
                select(Upload.path).where(Upload.version_id == version.id, Upload.status == "open").limit(5)
            )
        ).all()
        if open_paths:
            raise Conflict(f"uploads still open: {', '.join(open_paths)} (complete or abort them)", field="version")
        size, count = (
            await session.execute(
                select(func.coalesce(func.sum(DatasetFile.size), 0), func.count()).where(
                    DatasetFile.version_id == version.id
                )
            )
        ).one()
        if not count:
            raise Conflict("the version has no files yet", field="version")
        now = utcnow()
        version.status, version.size_bytes, version.file_count, version.ready_at = READY, int(size), int(count), now
        replica = await session.scalar(
            select(Replica).where(Replica.version_id == version.id, Replica.source_id == version.primary_source_id)
        )
        if replica is not None:
            replica.status, replica.bytes, replica.synced_at = READY, int(size), now
        self._audit(session, access, "version.ready", dataset, version=number, size_bytes=int(size), files=int(count))
        await sync.queue_realtime(session, access.actor, version)  # copies to every other enabled store
        await session.commit()
        return await self._version_out(session, version)

    async def files(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int
    ) -> list[FileOut]:
        _, version = await self._readable_version(session, access, dataset_id, number)
        rows = (
            await session.scalars(
                select(DatasetFile).where(DatasetFile.version_id == version.id).order_by(DatasetFile.path)
            )
        ).all()
        return [FileOut(path=f.path, size=f.size, sha256=f.sha256) for f in rows]

    # --- uploads -----------------------------------------------------------------------------------------

    async def start_upload(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int, data: UploadCreate
    ) -> tuple[UploadOut, bool]:
        """(the upload, whether it is new). The same path, size and checksum again resumes the open upload (or
        answers that the file is done); another file at that path replaces it."""
        _, version = await self._writable_version(session, access, dataset_id, number)
        check_path(data.path)
        self._require_uploading(version)
        done = await session.scalar(
            select(DatasetFile).where(DatasetFile.version_id == version.id, DatasetFile.path == data.path)
        )
        existing = await session.scalar(
            select(Upload).where(Upload.version_id == version.id, Upload.path == data.path, Upload.status == "open")
        )
        source = await self._source(session, version.primary_source_id)
        if done is not None and (done.size, done.sha256) == (data.size, data.sha256):
            last = await session.scalar(
                select(Upload)
                .where(Upload.version_id == version.id, Upload.path == data.path, Upload.status == "completed")
                .order_by(Upload.created_at.desc())
                .limit(1)
            )
            if last is not None:
                return self._upload_out(last, [], []), False
        if existing is not None and (existing.size, existing.sha256) == (data.size, data.sha256):
            with contextlib.suppress(UploadLost):  # the store dropped it (expired, aborted there): started again below
                return await self._resume(session, source, version, existing), False
        replaced = (done.size if done else 0) + (existing.size if existing else 0)  # counted now, not after
        await self._check_quota(session, access, data.size - replaced)
        if existing is not None:
            existing.status = "aborted"
        if done is not None:
            await session.delete(done)
        await session.commit()  # no transaction open while the store answers
        client = self._client(source)
        key = self._key(source, version, data.path)
        if existing is not None:
            await _abort_quietly(client, source.bucket, key, existing.s3_upload_id)
        created = await _s3(
            source,
            "start the upload",
            client.create_multipart_upload,
            Bucket=source.bucket,
            Key=key,
            Metadata={"sha256": data.sha256},
            ContentType="application/octet-stream",
        )
        part_size, _ = part_plan(data.size)
        upload = Upload(
            version_id=version.id,
            path=data.path,
            size=data.size,
            sha256=data.sha256,
            part_size=part_size,
            s3_upload_id=created["UploadId"],
            created_by=access.actor.user_id,
        )
        session.add(upload)
        await session.commit()
        return self._upload_out(upload, [], self._presign_parts(client, source, key, upload, set())), True

    async def get_upload(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int, upload_id: str
    ) -> UploadOut:
        _, version = await self._writable_version(session, access, dataset_id, number)
        upload = await self._upload(session, version, upload_id)
        if upload.status != "open":
            return self._upload_out(upload, [], [])
        source = await self._source(session, version.primary_source_id)
        return await self._resume(session, source, version, upload)

    async def uploads(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int
    ) -> list[UploadOut]:
        """The version's open uploads (no URLs: GET one for them)."""
        _, version = await self._writable_version(session, access, dataset_id, number)
        rows = (
            await session.scalars(
                select(Upload).where(Upload.version_id == version.id, Upload.status == "open").order_by(Upload.path)
            )
        ).all()
        return [self._upload_out(u, [], []) for u in rows]

    async def complete_upload(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int, upload_id: str
    ) -> UploadOut:
        _, version = await self._writable_version(session, access, dataset_id, number)
        upload = await self._upload(session, version, upload_id)
        if upload.status == "completed":
            return self._upload_out(upload, [], [])
        if upload.status != "open":
            raise Conflict("this upload was aborted", field="upload_id")
        self._require_uploading(version)
        source = await self._source(session, version.primary_source_id)
        await session.commit()
        client = self._client(source)
        key = self._key(source, version, upload.path)
        try:
            parts = await asyncio.to_thread(_list_parts, client, source.bucket, key, upload.s3_upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise _store_failed(exc, source, "list the parts") from None
            parts = None  # completed already (a crash before our commit), or aborted: the object says which
        except BotoCoreError as exc:
            raise _store_failed(exc, source, "list the parts") from None
        if parts is not None:
            _check_parts(upload, parts)
            await _s3(
                source,
                "complete the upload",
                client.complete_multipart_upload,
                Bucket=source.bucket,
                Key=key,
                UploadId=upload.s3_upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]},
            )
        head = await _head(client, source, key)
        if (
            head is None
            or head["ContentLength"] != upload.size
            or head.get("Metadata", {}).get("sha256") != upload.sha256
        ):
            UPLOADS.labels("failed").inc()
            raise Conflict(
                "the store does not hold this file as uploaded (no such object, or its size or checksum differs): "
                "start the upload again",
                field="upload_id",
            )
        upload.status = "completed"
        session.add(DatasetFile(version_id=version.id, path=upload.path, size=upload.size, sha256=upload.sha256))
        await session.commit()
        UPLOADS.labels("completed").inc()
        UPLOADED_BYTES.inc(upload.size)
        return self._upload_out(upload, [], [])

    async def abort_upload(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int, upload_id: str
    ) -> None:
        _, version = await self._writable_version(session, access, dataset_id, number)
        upload = await self._upload(session, version, upload_id)
        if upload.status != "open":
            return
        upload.status = "aborted"
        source = await self._source(session, version.primary_source_id)
        await session.commit()
        UPLOADS.labels("aborted").inc()
        await _abort_quietly(
            self._client(source), source.bucket, self._key(source, version, upload.path), upload.s3_upload_id
        )

    async def remove_file(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int, path: str
    ) -> None:
        """A file (and any open upload of its path) out of a version still uploading, and its object out of the
        store; a ready version never changes."""
        dataset, version = await self._writable_version(session, access, dataset_id, number)
        check_path(path)
        self._require_uploading(version)
        done = await session.scalar(
            select(DatasetFile).where(DatasetFile.version_id == version.id, DatasetFile.path == path)
        )
        open_upload = await session.scalar(
            select(Upload).where(Upload.version_id == version.id, Upload.path == path, Upload.status == "open")
        )
        if done is None and open_upload is None:
            raise NotFound(f"no file {path!r} in version {number}", field="path")
        if done is not None:
            await session.delete(done)
        if open_upload is not None:
            open_upload.status = "aborted"
        source = await self._source(session, version.primary_source_id)
        self._audit(session, access, "file_remove", dataset, version=number, path=path)
        await session.commit()  # the manifest first: an object left behind by a store failure is overwritten later
        client, key = self._client(source), self._key(source, version, path)
        if open_upload is not None:
            await _abort_quietly(client, source.bucket, key, open_upload.s3_upload_id)
        if done is not None:
            try:
                await asyncio.to_thread(client.delete_object, Bucket=source.bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:
                log.warning("file_object_left", source=source.name, key=key, error=str(exc))

    # --- downloads ---------------------------------------------------------------------------------------

    async def download_url(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int, path: str
    ) -> DownloadOut:
        """A presigned GET of one file from the replica routing picks for the caller (short-lived)."""
        dataset, version = await self._readable_version(session, access, dataset_id, number)
        check_path(path)
        if version.status != READY:
            raise Conflict(f"version {number} is not ready", field="version")
        if (
            await session.scalar(
                select(DatasetFile.id).where(DatasetFile.version_id == version.id, DatasetFile.path == path)
            )
            is None
        ):
            raise NotFound(f"no file {path!r} in version {number}", field="path")
        user = await session.get(User, access.actor.user_id) if access.actor.user_id else None
        source = await self._read_source(session, access, user, version)
        client = self._client(source)
        url = await _s3(
            source,
            "presign the download",
            client.generate_presigned_url,
            ClientMethod="get_object",
            Params={"Bucket": source.bucket, "Key": self._key(source, version, path)},
            ExpiresIn=DOWNLOAD_SECONDS,
        )
        log.info(
            "download_url", who=access.actor.name, dataset=dataset.id, version=number, path=path, source=source.name
        )
        return DownloadOut(url=url, expires_at=utcnow() + timedelta(seconds=DOWNLOAD_SECONDS), source=source.name)

    # --- helpers -----------------------------------------------------------------------------------------

    def _client(self, source: StorageSource) -> S3Client:
        return sources.client(source, sources.keyring(self.settings), self.settings)

    @staticmethod
    def _key(source: StorageSource, version: DatasetVersion, path: str) -> str:
        return f"{source.prefix}{version.prefix}{path}"

    async def _resume(
        self, session: AsyncSession, source: StorageSource, version: DatasetVersion, upload: Upload
    ) -> UploadOut:
        await session.commit()
        client = self._client(source)
        key = self._key(source, version, upload.path)
        try:
            parts = await asyncio.to_thread(_list_parts, client, source.bucket, key, upload.s3_upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                raise UploadLost(
                    "the store no longer has this upload: start it again (POST the upload)", field="upload_id"
                ) from None
            raise _store_failed(exc, source, "list the parts") from None
        except BotoCoreError as exc:
            raise _store_failed(exc, source, "list the parts") from None
        _, count = part_plan(upload.size)
        done = {p["PartNumber"] for p in parts if p["Size"] == _part_bytes(upload, p["PartNumber"], count)}
        return self._upload_out(upload, sorted(done), self._presign_parts(client, source, key, upload, done))

    def _presign_parts(
        self, client: S3Client, source: StorageSource, key: str, upload: Upload, done: set[int]
    ) -> list[PartOut]:
        _, count = part_plan(upload.size)
        missing = [n for n in range(1, count + 1) if n not in done][:URLS_PER_ANSWER]
        return [
            PartOut(
                number=n,
                size=_part_bytes(upload, n, count),
                url=client.generate_presigned_url(
                    ClientMethod="upload_part",
                    Params={"Bucket": source.bucket, "Key": key, "UploadId": upload.s3_upload_id, "PartNumber": n},
                    ExpiresIn=PRESIGN_SECONDS,
                ),
            )
            for n in missing
        ]

    @staticmethod
    def _upload_out(upload: Upload, done: list[int], parts: list[PartOut]) -> UploadOut:
        _, count = part_plan(upload.size)
        completed = list(range(1, count + 1)) if upload.status == "completed" else done
        return UploadOut(
            id=upload.id,
            path=upload.path,
            size=upload.size,
            sha256=upload.sha256,
            status=upload.status,  # type: ignore[arg-type]
            part_size=upload.part_size,
            part_count=count,
            completed_parts=completed,
            parts=parts,
            expires_at=utcnow() + timedelta(seconds=PRESIGN_SECONDS) if parts else None,
        )

    async def _check_quota(self, session: AsyncSession, access: WorkspaceAccess, adding: int) -> None:
        quota = access.workspace.quota
        limit = quota.storage_bytes if quota is not None else None
        if limit is None or adding <= 0:
            return
        used = await stored_bytes(session, access.workspace.id)
        if used + adding > limit:
            raise InvalidInput(
                f"{used + adding} bytes would be stored; the workspace quota allows {limit}", field="size"
            )

    async def _upload_source(
        self, session: AsyncSession, access: WorkspaceAccess, user: User | None, wanted: str | None, key: str
    ) -> StorageSource:
        rows = list((await session.scalars(select(StorageSource).where(StorageSource.enabled.is_(True)))).all())
        by_name = {s.name: s for s in rows}
        if wanted is not None and wanted not in by_name:
            raise InvalidInput(f"no enabled storage source {wanted!r}", field="source")
        request = routing.RouteRequest(
            user_type=_user_type(user),
            node_region=None,
            purpose="upload",
            preferred_source=by_name[wanted].id if wanted else None,
            key=key,
        )
        ordered = routed(rows, request, who=access.actor.name, what=f"{self.kind} {key} upload")
        if not ordered:
            raise Conflict("no storage source can take uploads now (none enabled and up): ask an admin", field="source")
        if wanted is not None and by_name[wanted].id != ordered[0].id:
            raise InvalidInput(f"storage source {wanted!r} is down", field="source")
        return ordered[0]

    async def _read_source(
        self, session: AsyncSession, access: WorkspaceAccess, user: User | None, version: DatasetVersion
    ) -> StorageSource:
        request = routing.RouteRequest(
            user_type=_user_type(user), node_region=None, purpose="read", key=f"{version.id}:{access.actor.name}"
        )
        what = f"version {version.id} download"
        ordered = routed(await ready_replicas(session, version.id), request, who=access.actor.name, what=what)
        if not ordered:
            raise Conflict("no replica of this version is in an enabled storage source: ask an admin", field="version")
        return ordered[0]

    async def _by_name(self, session: AsyncSession, workspace_id: int, name: str) -> Dataset | None:
        return await session.scalar(
            select(Dataset).where(
                Dataset.workspace_id == workspace_id,
                Dataset.kind == self.kind,
                Dataset.name == name,
                Dataset.deleted_at.is_(None),
            )
        )

    @staticmethod
    def _readable(dataset: Dataset, access: WorkspaceAccess) -> bool:
        return dataset.workspace_id == access.workspace.id or access.workspace.id in (dataset.shared_with or [])

    async def _readable_dataset(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str) -> Dataset:
        access.require(Role.MEMBER)
        dataset = await session.get(Dataset, dataset_id)
        if (
            dataset is None
            or dataset.kind != self.kind
            or dataset.deleted_at is not None
            or not self._readable(dataset, access)
        ):
            raise NotFound(f"{self.kind} {dataset_id!r} not found", field="dataset_id")
        return dataset

    async def _writable_dataset(self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str) -> Dataset:
        dataset = await self._readable_dataset(session, access, dataset_id)
        if dataset.workspace_id != access.workspace.id:
            raise Forbidden(f"this {self.kind} is shared with this workspace read-only")
        if dataset.created_by != access.actor.user_id and not access.allows(Role.ADMIN):
            raise Forbidden(f"only its creator, workspace admins and owners change this {self.kind}")
        return dataset

    async def _readable_version(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int
    ) -> tuple[Dataset, DatasetVersion]:
        dataset = await self._readable_dataset(session, access, dataset_id)
        return dataset, await self._version_row(session, dataset, number)

    async def _writable_version(
        self, session: AsyncSession, access: WorkspaceAccess, dataset_id: str, number: int
    ) -> tuple[Dataset, DatasetVersion]:
        dataset = await self._writable_dataset(session, access, dataset_id)
        return dataset, await self._version_row(session, dataset, number)

    @staticmethod
    async def _version_row(session: AsyncSession, dataset: Dataset, number: int) -> DatasetVersion:
        version = await session.scalar(
            select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == number)
        )
        if version is None:
            raise NotFound(f"no version {number}", field="version")
        return version

    @staticmethod
    def _require_uploading(version: DatasetVersion) -> None:
        if version.status != UPLOADING:
            raise Conflict(
                f"version {version.version} is {version.status}: a ready version never changes", field="version"
            )

    @staticmethod
    async def _upload(session: AsyncSession, version: DatasetVersion, upload_id: str) -> Upload:
        upload = await session.get(Upload, upload_id)
        if upload is None or upload.version_id != version.id:
            raise NotFound(f"no upload {upload_id!r} in version {version.version}", field="upload_id")
        return upload

    @staticmethod
    async def _source(session: AsyncSession, source_id: int) -> StorageSource:
        source = await session.get(StorageSource, source_id)
        if source is None:
            raise Conflict("the version's storage source was removed: ask an admin", field="version")
        return source

    async def _out(self, session: AsyncSession, dataset: Dataset) -> DatasetOut:
        versions = (
            await session.scalars(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == dataset.id)
                .order_by(DatasetVersion.version.desc())
            )
        ).all()
        latest = next((v for v in versions if v.status == READY), versions[0] if versions else None)
        names = await _names(session, [dataset.workspace_id, *dataset.shared_with])
        owner = await session.scalar(select(User.name).where(User.id == dataset.created_by))
        return DatasetOut(
            id=dataset.id,
            kind=dataset.kind,  # type: ignore[arg-type]
            workspace=names.get(dataset.workspace_id, "?"),
            name=dataset.name,
            description=dataset.description,
            tags=list(dataset.tags),
            shared_with=sorted(names[i] for i in dataset.shared_with if i in names),
            owner=owner or "?",
            created_at=dataset.created_at,
            latest=await self._version_out(session, latest) if latest is not None else None,
        )

    @staticmethod
    async def _version_out(session: AsyncSession, version: DatasetVersion) -> VersionOut:
        rows = (
            await session.execute(
                select(StorageSource.id, StorageSource.name, Replica.status)
                .join(Replica, Replica.source_id == StorageSource.id)
                .where(Replica.version_id == version.id)
            )
        ).all()
        primary = next((name for sid, name, _ in rows if sid == version.primary_source_id), "?")
        return VersionOut(
            version=version.version,
            status=version.status,  # type: ignore[arg-type]
            size_bytes=version.size_bytes,
            file_count=version.file_count,
            primary_source=primary,
            replicas=sorted(name for _, name, status in rows if status == READY),
            created_at=version.created_at,
            ready_at=version.ready_at,
            error=version.error,
        )

    def _audit(
        self, session: AsyncSession, access: WorkspaceAccess, action: str, dataset: Dataset, **details: Any
    ) -> None:
        record(
            session,
            access.actor,
            f"{self.kind}.{action}",
            target_type=self.kind,
            target=dataset.id,
            workspace_id=access.workspace.id,
            details={"name": dataset.name, **details},
        )


def routed(rows: Sequence[StorageSource], request: routing.RouteRequest, *, who: str, what: str) -> list[StorageSource]:
    """The sources in routing's order for ``request`` (what it left out dropped); the decision logged and counted."""
    decision = routing.route(request, [_candidate(s) for s in rows])
    routing.log_decision(log, who=who, what=what, request=request, decision=decision)
    ROUTED.labels(request.purpose).inc()
    by_id = {s.id: s for s in rows}
    return [by_id[c.source_id] for c in decision.order]


async def ready_replicas(session: AsyncSession, version_id: int) -> list[StorageSource]:
    """The sources holding a complete copy of the version."""
    found = await session.scalars(
        select(StorageSource)
        .join(Replica, Replica.source_id == StorageSource.id)
        .where(Replica.version_id == version_id, Replica.status == READY)
    )
    return list(found.all())


async def stored_bytes(session: AsyncSession, workspace_id: int) -> int:
    """What a workspace stores: its versions' files and its open uploads (once per version, the primary)."""
    files = await session.scalar(
        select(func.coalesce(func.sum(DatasetFile.size), 0))
        .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.workspace_id == workspace_id, Dataset.deleted_at.is_(None))
    )
    pending = await session.scalar(
        select(func.coalesce(func.sum(Upload.size), 0))
        .join(DatasetVersion, DatasetVersion.id == Upload.version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.workspace_id == workspace_id, Upload.status == "open")
    )
    return int(files or 0) + int(pending or 0)


def _user_type(user: User | None) -> Any:
    return str(user.user_type.value) if user is not None else "internal"


def _candidate(source: StorageSource) -> routing.Source:
    return routing.Source(
        id=source.id,
        name=source.name,
        region=source.region,
        public=source.public,
        priority=source.priority,
        weight=source.weight,
        health=source.health,  # type: ignore[arg-type]
        latency_ms=source.latency_ms,
        enabled=source.enabled,
    )


async def _names(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict((await session.execute(select(Workspace.id, Workspace.slug).where(Workspace.id.in_(ids)))).all())


def _part_bytes(upload: Upload, number: int, count: int) -> int:
    return upload.part_size if number < count else upload.size - upload.part_size * (count - 1)


def _list_parts(client: S3Client, bucket: str, key: str, upload_id: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    marker = 0
    while True:
        page = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker, MaxParts=1000)
        parts.extend(dict(p) for p in page.get("Parts", []))
        if not page.get("IsTruncated"):
            return parts
        marker = int(page["NextPartNumberMarker"])


def _check_parts(upload: Upload, parts: list[dict[str, Any]]) -> None:
    _, count = part_plan(upload.size)
    have = {p["PartNumber"]: p["Size"] for p in parts}
    missing = [n for n in range(1, count + 1) if n not in have]
    if missing:
        raise Conflict(f"parts not uploaded yet: {', '.join(map(str, missing[:10]))}", field="upload_id")
    wrong = [n for n in range(1, count + 1) if have[n] != _part_bytes(upload, n, count)]
    extra = [n for n in have if n > count]
    if wrong or extra:
        raise Conflict(
            f"parts of the wrong size: {', '.join(map(str, (wrong + extra)[:10]))} (send them again)", field="upload_id"
        )


async def _head(client: S3Client, source: StorageSource, key: str) -> dict[str, Any] | None:
    try:
        return dict(await asyncio.to_thread(client.head_object, Bucket=source.bucket, Key=key))
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise _store_failed(exc, source, "look at the object") from None
    except BotoCoreError as exc:
        raise _store_failed(exc, source, "look at the object") from None


async def _abort_quietly(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload; a store that fails to keeps its parts until its own lifecycle rules drop them."""
    try:
        await asyncio.to_thread(client.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        log.warning("abort_failed", key=key, error=str(exc)[:300])
