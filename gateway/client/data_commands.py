"""``remotegpu dataset ...`` and ``remotegpu model ...``: one implementation, parametrised by the kind.

An upload sends each file's parts straight to the store, through the presigned multipart URLs the gateway hands
out (the bytes never pass through the gateway), a pool of ``--workers`` threads each reading its part from the
file at its offset. Every step can be repeated: the newest version still ``uploading`` is resumed, the gateway
answers a file it already has as ``completed`` and an open upload with the parts the store holds, so running the
same command again after an interruption (Ctrl-C, a lost connection, a killed process) sends only what is
missing. Downloads skip files already there with the right checksum.

The pure parts (the walk of a directory, which names the gateway refuses, the part plan, which version to resume,
retries, tables) are functions of their own, tested without a gateway (tests/unit/test_data_cli.py); the HTTP
pieces are :class:`DataApi` (the gateway) and :class:`Store` (presigned URLs). Failures are :class:`ClientError`,
printed by the top-level group as one line (exit 1).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
import httpx
from tqdm import tqdm  # type: ignore[import-untyped]

from gateway.client.api import ApiError, ClientError, GatewayClient
from gateway.client.billing_commands import collect, json_option, limit_option, workspace_option
from gateway.client.env_commands import _echo_json, render_table

KINDS = ("dataset", "model")
MIB = 1024 * 1024
HASH_CHUNK = 8 * MIB
"""Bytes read at a time to hash a file (never the whole file in memory)."""
SEND_CHUNK = 1 * MIB
"""Bytes a part is streamed in (and the progress bar moves by)."""
PART_RETRIES = 3
"""A failed part PUT (or file GET) is tried this many times more."""
MAX_PATH = 1024
"""The longest path (characters) the gateway takes, as its ObjectPath."""
ENDED = "run the same command again to resume"

T = TypeVar("T")


# --- pure parts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    """A file to upload: its path inside the version, where it is read from, its size and mtime at the walk."""

    path: str
    source: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Walk:
    files: list[LocalFile]
    skipped: list[str]
    """What was left out, each ``path (why)``: symlinks leading outside, to a directory, broken; special files."""


def walk(roots: Sequence[Path]) -> Walk:
    """The regular files to upload from ``roots``, sorted by path: a FILE as its own name, a DIR's files as their
    paths relative to it ('/'-separated). Symlinks are followed only to a regular file inside the DIR given
    (a symlink given on the command line is followed); the same path from two roots is refused."""
    files: dict[str, LocalFile] = {}
    skipped: list[str] = []

    def add(path: str, source: Path, info: os.stat_result) -> None:
        if path in files:
            raise ClientError(f"{path!r} comes from both {files[path].source} and {source}: upload them separately")
        files[path] = LocalFile(path, source, info.st_size, info.st_mtime_ns)

    for root in roots:
        try:
            info = root.stat()
        except OSError as exc:
            raise ClientError(f"cannot read {root}: {exc.strerror}") from None
        if stat.S_ISREG(info.st_mode):
            add(root.name, root, info)
        elif stat.S_ISDIR(info.st_mode):
            for relative, source, found in _walk_dir(root, skipped):
                add(relative, source, found)
        else:
            raise ClientError(f"{root} is neither a regular file nor a directory")
    if not files:
        raise ClientError("nothing to upload: no regular files in " + ", ".join(map(str, roots)))
    return Walk([files[p] for p in sorted(files)], skipped)


def _walk_dir(root: Path, skipped: list[str]) -> Iterator[tuple[str, Path, os.stat_result]]:
    real_root = Path(os.path.realpath(root))

    def failed(exc: OSError) -> None:
        raise ClientError(f"cannot read {exc.filename}: {exc.strerror}")

    for folder, dirs, names in os.walk(root, onerror=failed):
        here = Path(folder)
        for name in sorted(dirs):
            if (here / name).is_symlink():  # os.walk does not descend into it: say so
                skipped.append(f"{_relative(here / name, root)} (symlink to a directory)")
        for name in names:
            source = here / name
            relative = _relative(source, root)
            try:
                info = source.lstat()
                if stat.S_ISLNK(info.st_mode):
                    target = Path(os.path.realpath(source))
                    if not target.is_relative_to(real_root):
                        skipped.append(f"{relative} (symlink leading outside {root})")
                        continue
                    info = source.stat()
            except FileNotFoundError:
                skipped.append(f"{relative} (broken symlink, or gone)")
                continue
            except OSError as exc:
                raise ClientError(f"cannot read {source}: {exc.strerror}") from None
            if not stat.S_ISREG(info.st_mode):
                skipped.append(f"{relative} (not a regular file)")
                continue
            yield relative, source, info


def _relative(path: Path, root: Path) -> str:
    return "/".join(path.relative_to(root).parts)


def path_problem(path: str) -> str | None:
    """Why the gateway would refuse ``path`` as a file's path in a version (its ObjectPath), or None."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if not path or len(path) > MAX_PATH:
        return f"empty or longer than {MAX_PATH} characters"
    if any(c < " " or c == "\x7f" for c in path):
        return "a control character"
    if "\\" in path:
        return "a backslash"
    if path.startswith("/") or any(seg in ("", ".", "..") for seg in path.split("/")):
        return "an empty, '.' or '..' segment"
    return None


def check_names(files: Iterable[LocalFile]) -> None:
    """Refuse, before anything is sent, names the gateway would refuse (one line naming the first)."""
    bad = [(f.path, why) for f in files if (why := path_problem(f.path)) is not None]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ClientError(f"refusing to upload {bad[0][0]!r}{more}: the gateway takes no name with {bad[0][1]}")


@dataclass(frozen=True)
class PartJob:
    """One part to send: bytes [offset, offset + length) of the file."""

    number: int
    offset: int
    length: int


def part_bytes(size: int, part_size: int, number: int) -> int:
    """The length of part ``number`` (1-based) of a file of ``size`` bytes: the last one holds what is left."""
    return max(0, min(part_size, size - (number - 1) * part_size))


def part_jobs(upload: Mapping[str, Any]) -> list[PartJob]:
    """The parts of an upload (UploadOut) the store does not hold yet, in order."""
    size, part_size, count = int(upload["size"]), int(upload["part_size"]), int(upload["part_count"])
    if part_size <= 0 or count < 1 or (count - 1) * part_size >= max(size, 1) or count * part_size < size:
        raise ClientError(f"the gateway planned {count} parts of {part_size} bytes for {size} bytes: cannot send that")
    done = set(upload.get("completed_parts") or [])
    return [
        PartJob(n, (n - 1) * part_size, part_bytes(size, part_size, n)) for n in range(1, count + 1) if n not in done
    ]


def version_to_resume(versions: Sequence[Mapping[str, Any]], source: str | None) -> int | None:
    """The version an upload goes on with: the newest one still ``uploading`` (an interrupted upload), or None
    for a new one. One on another source than ``--source`` is refused (the gateway keeps one uploading)."""
    uploading = [v for v in versions if v["status"] == "uploading"]
    if not uploading:
        return None
    newest = max(uploading, key=lambda v: int(v["version"]))
    if source is not None and newest["primary_source"] != source:
        raise ClientError(
            f"version {newest['version']} is still being uploaded to storage source {newest['primary_source']}: "
            f"resume it without --source (or with --source {newest['primary_source']})"
        )
    return int(newest["version"])


def parse_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` (a number, or ``latest``): (name, version or None for the latest)."""
    name, sep, version = text.rpartition(":")
    if not sep:
        return text, None
    if version == "latest":
        return name, None
    if not version.isdigit() or int(version) < 1 or not name:
        raise click.BadParameter(f"{text!r} is not NAME or NAME:VERSION (a version is a number, e.g. {name}:3)")
    return name, int(version)


def backoff(attempt: int, jitter: float | None = None) -> float:
    """Seconds to wait before try ``attempt + 1`` (0-based): 0.5, 1, 2, ... up to 8, each 50-100% of it."""
    share: float = random.uniform(0.5, 1.0) if jitter is None else jitter  # noqa: S311 - spreading retries, not secrets
    return min(8.0, 0.5 * 2.0**attempt) * share


class Failure(Exception):
    """A transfer to or from the store failed: ``kind`` says whether trying again can help."""

    def __init__(self, kind: Literal["retry", "refresh", "fatal"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Stopped(Exception):
    """The transfer was asked to stop (Ctrl-C, or another part failed)."""


_S3_FIELD = re.compile(r"<(Code|Message)>([^<]{0,300})</\1>")


def store_failure(status: int, body: str) -> Failure:
    """What an error answer of the store means: expired or refused URLs are asked for again (``refresh``),
    throttling and server errors are tried again (``retry``), the rest is ``fatal``."""
    fields = dict(_S3_FIELD.findall(body))
    said = ": ".join(v for v in (fields.get("Code"), fields.get("Message")) if v)
    message = f"the store answered HTTP {status}" + (f" {said}" if said else "")
    if status == 403:
        return Failure("refresh", message)
    if status >= 500 or status in (408, 429):
        return Failure("retry", message)
    return Failure("fatal", message)


def with_retries(
    attempt: Callable[[], T],
    *,
    refresh: Callable[[], None],
    stop: threading.Event,
    retries: int = PART_RETRIES,
    pause: Callable[[int], float] = backoff,
) -> T:
    """``attempt()``, tried ``retries`` times more after a retryable :class:`Failure` (``refresh()`` first when
    the URL is the problem), waiting ``pause(n)`` between; a fatal one, or the last, is raised. Stops when
    ``stop`` is set."""
    for tried in range(retries + 1):
        if stop.is_set():
            raise Stopped
        try:
            return attempt()
        except Failure as failure:
            if stop.is_set():
                raise Stopped from None
            if failure.kind == "fatal" or tried == retries:
                raise
            if stop.wait(pause(tried)):
                raise Stopped from None
            if failure.kind == "refresh":
                refresh()
    raise AssertionError("unreachable")


def human_bytes(count: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``70.0 MiB``, ``2.3 TiB``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def shown_time(value: str | None) -> str | None:
    """A gateway time as a table shows it: to the second, UTC (``2026-01-31T12:00:00Z``)."""
    if not value:
        return None
    return value[:19] + "Z" if len(value) >= 19 and value[10] == "T" else value


LIST_HEADERS = ["NAME", "LATEST", "STATUS", "FILES", "SIZE", "REPLICAS", "TAGS", "OWNER", "CREATED"]
VERSION_HEADERS = ["VERSION", "STATUS", "FILES", "SIZE", "PRIMARY", "REPLICAS", "CREATED", "READY", "ERROR"]
FILE_HEADERS = ["PATH", "SIZE", "SHA256"]


def list_rows(items: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for d in items:
        latest = d.get("latest") or {}
        yield [
            d["name"],
            latest.get("version"),
            latest.get("status"),
            latest.get("file_count"),
            human_bytes(latest["size_bytes"]) if latest else None,
            ",".join(latest.get("replicas") or []),
            ",".join(d.get("tags") or []),
            d.get("owner"),
            shown_time(d.get("created_at")),
        ]


def version_rows(versions: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for v in versions:
        yield [
            v["version"],
            v["status"],
            v["file_count"],
            human_bytes(v["size_bytes"]),
            v["primary_source"],
            ",".join(v.get("replicas") or []),
            shown_time(v.get("created_at")),
            shown_time(v.get("ready_at")),
            v.get("error"),
        ]


def show_lines(dataset: Mapping[str, Any], versions: Sequence[Mapping[str, Any]]) -> list[str]:
    """``show``: the dataset's fields, then its versions (sizes, where they are, their replicas)."""
    fields = [
        ("name", dataset["name"]),
        ("id", dataset["id"]),
        ("workspace", dataset["workspace"]),
        ("owner", dataset.get("owner")),
        ("description", dataset.get("description")),
        ("tags", ", ".join(dataset.get("tags") or [])),
        ("shared with", ", ".join(dataset.get("shared_with") or [])),
        ("created", shown_time(dataset.get("created_at"))),
    ]
    lines = [f"{label + ':':13} {value if value not in (None, '') else '-'}" for label, value in fields]
    if not versions:
        return [*lines, "", "no versions yet"]
    return [*lines, "", *render_table(VERSION_HEADERS, version_rows(versions))]


def file_rows(files: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for f in files:
        yield [f["path"], f["size"], f["sha256"]]


def select_files(files: Sequence[Mapping[str, Any]], path: str | None) -> list[Mapping[str, Any]]:
    """The files ``--path`` names: one file, or every file under a directory (all of them without it)."""
    if path is None:
        return list(files)
    wanted = path.strip("/")
    return [f for f in files if f["path"] == wanted or f["path"].startswith(wanted + "/")]


def download_target(dest: Path, path: str) -> Path:
    """Where a version's file goes under DEST; a path that would climb out of it is refused."""
    why = path_problem(path)
    if why is not None:
        raise ClientError(f"the gateway listed a file {path!r} with {why}: not writing it")
    return dest.joinpath(*path.split("/"))


def sha256_of(path: Path, stop: threading.Event | None = None) -> str:
    """The file's SHA-256, read ``HASH_CHUNK`` bytes at a time."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    try:
        with path.open("rb") as file:
            while count := file.readinto(buffer):
                if stop is not None and stop.is_set():
                    raise Stopped
                digest.update(view[:count])
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


# --- the HTTP pieces ---------------------------------------------------------------------------------------


class DataApi:
    """The gateway's routes of one kind (``datasets`` or ``models``) in one workspace."""

    def __init__(self, client: GatewayClient, kind: str, workspace: str) -> None:
        self.client, self.kind, self.workspace = client, kind, workspace
        self.base = f"/workspaces/{workspace}/{kind}s"

    def find(self, name: str) -> dict[str, Any]:
        found = self.client.request("GET", self.base, params={"name": name, "limit": 1})["items"]
        if not found:
            raise ClientError(
                f"no {self.kind} {name!r} in workspace {self.workspace} "
                f"(create it with `remotegpu {self.kind} create {name}`)"
            )
        one: dict[str, Any] = found[0]
        return one

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, self.base + path, **kwargs)

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        made: dict[str, Any] = self._call("POST", "", json=body)
        return made

    def page(self, limit: int) -> tuple[list[Any], int | None]:
        return collect(self.client, self.base, {}, limit)

    def versions(self, dataset: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", f"/{dataset}/versions")
        return found

    def new_version(self, dataset: str, source: str | None) -> dict[str, Any]:
        made: dict[str, Any] = self._call("POST", f"/{dataset}/versions", json={"source": source} if source else {})
        return made

    def start_upload(self, dataset: str, version: int, path: str, size: int, sha256: str) -> dict[str, Any]:
        body = {"path": path, "size": size, "sha256": sha256}
        upload: dict[str, Any] = self._call("POST", f"/{dataset}/versions/{version}/uploads", json=body)
        return upload

    def open_uploads(self, dataset: str, version: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", f"/{dataset}/versions/{version}/uploads")
        return found

    def abort(self, dataset: str, version: int, upload_id: str) -> None:
        self._call("DELETE", f"/{dataset}/versions/{version}/uploads/{upload_id}")

    def get_upload(self, dataset: str, version: int, upload_id: str) -> dict[str, Any]:
        upload: dict[str, Any] = self._call("GET", f"/{dataset}/versions/{version}/uploads/{upload_id}")
        return upload

    def complete(self, dataset: str, version: int, upload_id: str) -> dict[str, Any]:
        upload: dict[str, Any] = self._call("POST", f"/{dataset}/versions/{version}/uploads/{upload_id}/complete")
        return upload

    def finish(self, dataset: str, version: int) -> dict[str, Any]:
        done: dict[str, Any] = self._call("POST", f"/{dataset}/versions/{version}/finish")
        return done

    def files(self, dataset: str, version: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", f"/{dataset}/versions/{version}/files")
        return found

    def remove_file(self, dataset: str, version: int, path: str) -> None:
        self._call("DELETE", f"/{dataset}/versions/{version}/files", params={"path": path})

    def download_url(self, dataset: str, version: int, path: str) -> str:
        got = self._call("GET", f"/{dataset}/versions/{version}/download-url", params={"path": path})
        return str(got["url"])


class Store:
    """Transfers straight to and from presigned URLs (no gateway token goes there): one attempt each, a failure
    raised as :class:`Failure`; progress reported through ``moved(bytes)`` (negative when an attempt failed)."""

    def __init__(self, stop: threading.Event, workers: int, timeout: float) -> None:
        self.stop = stop
        limits = httpx.Limits(max_connections=workers + 2, max_keepalive_connections=workers + 2)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout), limits=limits, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def put_part(self, url: str, source: Path, job: PartJob, moved: Callable[[int], None]) -> None:
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            with source.open("rb") as file:
                file.seek(job.offset)
                left = job.length
                while left > 0:
                    if self.stop.is_set():
                        raise Stopped
                    chunk = file.read(min(SEND_CHUNK, left))
                    if not chunk:
                        raise Failure("fatal", f"{source} is shorter than when it was hashed")
                    left -= len(chunk)
                    sent += len(chunk)
                    moved(len(chunk))
                    yield chunk

        try:
            response = self.http.put(url, content=body(), headers={"Content-Length": str(job.length)})
        except httpx.HTTPError as exc:
            moved(-sent)
            if self.stop.is_set():
                raise Stopped from None
            raise Failure("retry", f"sending to the store failed: {_reason(exc)}") from None
        except BaseException:
            moved(-sent)
            raise
        if response.status_code >= 300:
            moved(-sent)
            raise store_failure(response.status_code, response.text)

    def get_file(self, url: str, target: Path, size: int, moved: Callable[[int], None]) -> str:
        """The object into ``target`` (replaced); its SHA-256."""
        digest, got = hashlib.sha256(), 0
        try:
            with self.http.stream("GET", url) as response, target.open("wb") as out:
                if response.status_code >= 300:
                    response.read()
                    raise store_failure(response.status_code, response.text)
                for chunk in response.iter_bytes(SEND_CHUNK):
                    if self.stop.is_set():
                        raise Stopped
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    moved(len(chunk))
        except BaseException as exc:
            moved(-got)
            if isinstance(exc, httpx.HTTPError):
                raise Failure("retry", f"reading from the store failed: {_reason(exc)}") from None
            if isinstance(exc, OSError):
                raise Failure("fatal", f"cannot write {target}: {exc.strerror}") from None
            raise
        if got != size:
            moved(-got)
            raise Failure("retry", f"the store sent {got} bytes of {size}")
        return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


class Progress:
    """One bar over all bytes (tqdm: speed and ETA) on stderr, off unless stderr is a terminal or ``--progress``;
    thread-safe counters of what moved in this run."""

    def __init__(self, total: int, label: str, show: bool | None) -> None:
        enabled = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.2,
        )
        self.lock = threading.Lock()
        self.moved = 0
        self.already = 0

    def add(self, count: int) -> None:
        with self.lock:
            self.moved += count
            self.bar.update(count)

    def skip(self, count: int) -> None:
        """Bytes that need not move (already in the store, or on disk)."""
        if count:
            with self.lock:
                self.already += count
                self.bar.update(count)

    def close(self) -> None:
        self.bar.close()


class _Urls:
    """The presigned part URLs of one upload, asked for again when missing (the gateway gives at most 1000 at a
    time) or refused (expired)."""

    def __init__(self, api: DataApi, dataset: str, version: int, upload: Mapping[str, Any]) -> None:
        self.api, self.dataset, self.version, self.upload_id = api, dataset, version, str(upload["id"])
        self.lock = threading.Lock()
        self.urls = {int(p["number"]): str(p["url"]) for p in upload.get("parts") or []}

    def get(self, number: int) -> str:
        with self.lock:
            if number not in self.urls:
                self._refresh_locked()
            if number not in self.urls:
                raise Failure("fatal", f"the gateway gave no URL for part {number}")
            return self.urls[number]

    def refresh(self, number: int, stale: str) -> None:
        with self.lock:
            if self.urls.get(number) == stale:  # not already renewed by another part's failure
                self._refresh_locked()

    def _refresh_locked(self) -> None:
        fresh = self.api.get_upload(self.dataset, self.version, self.upload_id)
        self.urls.update({int(p["number"]): str(p["url"]) for p in fresh.get("parts") or []})


@dataclass
class _FileUpload:
    file: LocalFile
    upload_id: str
    urls: _Urls
    pending: int


@dataclass
class UploadResult:
    version: dict[str, Any]
    """The gateway's VersionOut once finished."""
    sent: int
    """Bytes sent by this run."""
    already: int
    """Bytes the store held before (earlier runs)."""


class Uploader:
    """Sends files into one version: each file's missing parts on the pool, files completed as their last part
    lands, at most ``2 * workers`` parts in flight (the next files are hashed meanwhile)."""

    def __init__(self, api: DataApi, store: Store, progress: Progress, stop: threading.Event, workers: int) -> None:
        self.api, self.store, self.progress, self.stop, self.workers = api, store, progress, stop, workers

    def run(self, dataset: str, version: int, files: Sequence[LocalFile]) -> None:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="part")
        flight: dict[Future[None], _FileUpload] = {}
        try:
            for local in files:
                sha256 = sha256_of(local.source, self.stop)
                _unchanged(local)
                upload = self._start(dataset, version, local, sha256)
                if upload["status"] == "completed":
                    self.progress.skip(local.size)
                    continue
                if upload["status"] != "open":
                    raise ClientError(f"the gateway answered the upload of {local.path} as {upload['status']}")
                jobs = part_jobs(upload)
                self.progress.skip(local.size - sum(j.length for j in jobs))
                state = _FileUpload(local, str(upload["id"]), _Urls(self.api, dataset, version, upload), len(jobs))
                if not jobs:
                    self._complete(dataset, version, state)
                for job in jobs:
                    flight[pool.submit(self._send, state, job)] = state
                    while len(flight) >= 2 * self.workers:
                        self._land(dataset, version, flight, block=True)
                self._land(dataset, version, flight, block=False)  # complete the files whose parts all landed
            while flight:
                self._land(dataset, version, flight, block=True)
        except BaseException:
            self.stop.set()  # running parts end at their next chunk; queued ones are cancelled below
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _start(self, dataset: str, version: int, local: LocalFile, sha256: str) -> dict[str, Any]:
        """POST the upload. The gateway answers 409 (``upload_id``) to resuming an upload the store no longer has
        (expired, or aborted there), and again to every POST of the same file: that one is aborted and the file
        starts over."""
        try:
            return self.api.start_upload(dataset, version, local.path, local.size, sha256)
        except ApiError as exc:
            fields = {e.get("field") for e in exc.problem.get("errors") or []}
            if exc.status != 409 or "upload_id" not in fields:
                raise
        for stale in self.api.open_uploads(dataset, version):
            if stale["path"] == local.path:
                self.api.abort(dataset, version, str(stale["id"]))
        return self.api.start_upload(dataset, version, local.path, local.size, sha256)

    def _land(self, dataset: str, version: int, flight: dict[Future[None], _FileUpload], *, block: bool) -> None:
        if not flight:
            return
        done, _ = wait(list(flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            state = flight.pop(future)
            future.result()  # a part that failed for good ends the upload
            state.pending -= 1
            if state.pending == 0:
                self._complete(dataset, version, state)

    def _send(self, state: _FileUpload, job: PartJob) -> None:
        used: list[str] = []

        def attempt() -> None:
            used.append(state.urls.get(job.number))
            self.store.put_part(used[-1], state.file.source, job, self.progress.add)

        try:
            with_retries(attempt, refresh=lambda: state.urls.refresh(job.number, used[-1]), stop=self.stop)
        except Failure as failure:
            raise ClientError(f"part {job.number} of {state.file.path}: {failure}; {ENDED}") from None
        except OSError as exc:
            raise ClientError(f"cannot read {state.file.source}: {exc.strerror}") from None

    def _complete(self, dataset: str, version: int, state: _FileUpload) -> None:
        _unchanged(state.file)
        done = self.api.complete(dataset, version, state.upload_id)
        if done["status"] != "completed" or int(done["size"]) != state.file.size:
            raise ClientError(f"the gateway did not complete {state.file.path}: {done['status']}, {done['size']} bytes")


def _unchanged(local: LocalFile) -> None:
    """A file that changed since the walk would not match its checksum: refused, not uploaded."""
    try:
        now = local.source.stat()
    except OSError as exc:
        raise ClientError(f"cannot read {local.source}: {exc.strerror}") from None
    if (now.st_size, now.st_mtime_ns) != (local.size, local.mtime_ns):
        raise ClientError(f"{local.source} changed while being uploaded: run the command again once it is written")


def upload_files(
    api: DataApi,
    name: str,
    files: Sequence[LocalFile],
    *,
    source: str | None,
    workers: int,
    show: bool | None,
    timeout: float,
) -> UploadResult:
    """Into the newest version still uploading (or a new one), then finish it; Ctrl-C (KeyboardInterrupt) stops
    the transfers and is raised after saying how to resume."""
    dataset = api.find(name)
    resume = version_to_resume(api.versions(dataset["id"]), source)
    if resume is None:
        version = int(api.new_version(dataset["id"], source)["version"])
    else:
        version = resume
        click.echo(f"resuming the upload of {api.kind} {name} version {version}", err=True)
    stop = threading.Event()
    store = Store(stop, workers, timeout)
    progress = Progress(sum(f.size for f in files), f"{name} v{version}", show)
    try:
        Uploader(api, store, progress, stop, workers).run(dataset["id"], version, files)
    except (KeyboardInterrupt, Stopped):
        progress.close()
        click.echo(
            f"interrupted: {human_bytes(progress.moved + progress.already)} of {human_bytes(progress.bar.total)} "
            f"in the store; {ENDED}",
            err=True,
        )
        raise KeyboardInterrupt from None
    finally:
        progress.close()
        store.close()
    local = {f.path for f in files}
    extra = [f["path"] for f in api.files(dataset["id"], version) if f["path"] not in local]
    if extra:
        click.echo(
            f"note: version {version} also holds {len(extra)} file(s) uploaded before and not among these "
            f"(first: {extra[0]}); they stay in it",
            err=True,
        )
    finished = api.finish(dataset["id"], version)
    return UploadResult(finished, progress.moved, progress.already)


def download_files(
    api: DataApi,
    dataset: str,
    version: int,
    chosen: Sequence[tuple[Mapping[str, Any], Path]],
    *,
    workers: int,
    show: bool | None,
    timeout: float,
    label: str,
) -> tuple[int, int]:
    """Each (file, target) not already there with its checksum, through a ``.part`` file renamed once its size
    and SHA-256 match; (bytes fetched, bytes already there)."""
    stop = threading.Event()
    store = Store(stop, workers, timeout)
    progress = Progress(sum(int(f["size"]) for f, _ in chosen), label, show)

    def fetch(file: Mapping[str, Any], target: Path) -> None:
        if target.is_file() and target.stat().st_size == file["size"] and sha256_of(target, stop) == file["sha256"]:
            progress.skip(int(file["size"]))
            return
        partial = target.with_name(target.name + ".part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClientError(f"cannot create {target.parent}: {exc.strerror}") from None
        url = [api.download_url(dataset, version, file["path"])]

        def attempt() -> str:
            return store.get_file(url[0], partial, int(file["size"]), progress.add)

        def refresh() -> None:
            url[0] = api.download_url(dataset, version, file["path"])

        try:
            got = with_retries(attempt, refresh=refresh, stop=stop)
            if got != file["sha256"]:
                raise ClientError(f"{file['path']} arrived with SHA-256 {got}, not {file['sha256']}: not kept")
            partial.replace(target)
        except Failure as failure:
            raise ClientError(f"downloading {file['path']}: {failure}; {ENDED}") from None
        finally:
            partial.unlink(missing_ok=True)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="get")
    try:
        for future in [pool.submit(fetch, f, t) for f, t in chosen]:
            future.result()
    except BaseException as exc:
        stop.set()
        if isinstance(exc, KeyboardInterrupt | Stopped):
            progress.close()
            click.echo(f"interrupted: files already fetched are kept; {ENDED}", err=True)
            raise KeyboardInterrupt from None
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        store.close()
    return progress.moved, progress.already


# --- the commands ------------------------------------------------------------------------------------------


def _api(kind: str, workspace: str | None) -> DataApi:
    ctx = click.get_current_context()
    client: GatewayClient | None = ctx.meta.get("remotegpu.client")
    if client is None:
        client = ctx.meta["remotegpu.client"] = GatewayClient.from_environment()
    return DataApi(client, kind, workspace or client.default_workspace())


def _timeout() -> float:
    return float(os.environ.get("REMOTEGPU_TIMEOUT") or 60)


def _resolve_version(api: DataApi, ref: str) -> tuple[dict[str, Any], int]:
    name, number = parse_ref(ref)
    dataset = api.find(name)
    if number is None:
        if not dataset.get("latest"):
            raise ClientError(f"{api.kind} {name} has no versions yet (`remotegpu {api.kind} upload {name} PATH`)")
        number = int(dataset["latest"]["version"])
    return dataset, number


progress_option = click.option(
    "--progress/--no-progress", default=None, help="Show the progress bar (default: when stderr is a terminal)."
)
workers_option = click.option(
    "--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel transfers."
)


def _interrupted(work: Callable[[], T]) -> T:
    """Ctrl-C: the line saying how to resume was written; exit 130 (as a shell reports SIGINT), no traceback."""
    try:
        return work()
    except KeyboardInterrupt:
        sys.exit(130)


def make_group(kind: str) -> click.Group:
    """The ``remotegpu dataset`` or ``remotegpu model`` group: the same commands on ``{kind}s``."""
    plural = f"{kind}s"

    @click.group(kind)
    def group() -> None:
        """(its help is set below, per kind)"""

    group.help = (
        f"The workspace's {plural}: versions of files kept in the S3 stores (immutable once ready), uploaded and "
        f"downloaded straight from the stores; an interrupted upload resumes when run again."
    )

    @group.command("create")
    @click.argument("name")
    @click.option("--description", default="", help="What it is.")
    @click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
    @workspace_option
    @json_option
    def create(name: str, description: str, tags: tuple[str, ...], workspace: str | None, as_json: bool) -> None:
        api = _api(kind, workspace)
        made = api.create({"name": name, "description": description, "tags": list(tags)})
        _echo_json(made) if as_json else click.echo(f"created {kind} {made['name']} in {api.workspace} ({made['id']})")

    create.help = f"Create a {kind} (no versions yet: `upload` makes them)."

    @group.command("list")
    @workspace_option
    @limit_option
    @json_option
    def list_command(workspace: str | None, limit: int, as_json: bool) -> None:
        items, total = _api(kind, workspace).page(limit)
        if as_json:
            _echo_json(items)
            return
        for line in render_table(LIST_HEADERS, list_rows(items)):
            click.echo(line)
        if total is None or total > len(items):
            click.echo(f"(showing {len(items)} of {total or 'more than 1000'}; --limit N for more)", err=True)

    list_command.help = f"The workspace's {plural} (and those shared with it), with their latest versions."

    @group.command("show")
    @click.argument("name")
    @workspace_option
    @json_option
    def show(name: str, workspace: str | None, as_json: bool) -> None:
        api = _api(kind, workspace)
        dataset = api.find(name)
        versions = api.versions(dataset["id"])
        if as_json:
            _echo_json({**dataset, "versions": versions})
            return
        for line in show_lines(dataset, versions):
            click.echo(line)

    show.help = f"One {kind}: its fields and versions (status, files, size, primary source, replicas)."

    @group.command("upload")
    @click.argument("name")
    @click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--source", help="Storage source to upload to (default: the gateway's choice for you).")
    @workers_option
    @progress_option
    @workspace_option
    @json_option
    def upload(
        name: str,
        paths: tuple[Path, ...],
        source: str | None,
        workers: int,
        progress: bool | None,
        workspace: str | None,
        as_json: bool,
    ) -> None:
        found = walk(paths)
        check_names(found.files)
        for skipped in found.skipped[:5]:
            click.echo(f"skipped {skipped}", err=True)
        if len(found.skipped) > 5:
            click.echo(f"skipped {len(found.skipped) - 5} more", err=True)
        api = _api(kind, workspace)

        def work() -> UploadResult:
            return upload_files(
                api, name, found.files, source=source, workers=workers, show=progress, timeout=_timeout()
            )

        done = _interrupted(work)
        version = done.version
        if as_json:
            _echo_json({"version": version, "sent_bytes": done.sent, "already_bytes": done.already})
            return
        click.echo(
            f"{kind} {name} version {version['version']}: {version['status']}, {version['file_count']} files, "
            f"{human_bytes(version['size_bytes'])} ({human_bytes(done.sent)} sent now, "
            f"{human_bytes(done.already)} already in the store)"
        )

    upload.help = (
        f"Upload files into a new version of {kind} NAME (or the one an interrupted upload left), then make it "
        "ready. A FILE is stored as its name, a DIR's files as their paths inside it; symlinks are followed only "
        "to files inside the DIR. Run it again after an interruption: it sends only what the store lacks."
    )

    @group.command("files")
    @click.argument("ref", metavar="NAME[:VERSION]")
    @workspace_option
    @json_option
    def files(ref: str, workspace: str | None, as_json: bool) -> None:
        api = _api(kind, workspace)
        dataset, number = _resolve_version(api, ref)
        listed = api.files(dataset["id"], number)
        if as_json:
            _echo_json(listed)
            return
        for line in render_table(FILE_HEADERS, file_rows(listed)):
            click.echo(line)

    files.help = f"The files of a version of a {kind} (default: its latest): path, size in bytes, SHA-256."

    @group.command("rm-file")
    @click.argument("name")
    @click.argument("paths", metavar="PATH...", nargs=-1, required=True)
    @workspace_option
    def rm_file(name: str, paths: tuple[str, ...], workspace: str | None) -> None:
        api = _api(kind, workspace)
        dataset = api.find(name)
        number = version_to_resume(api.versions(dataset["id"]), None)
        if number is None:
            raise ClientError(f"no version of {kind} {name} is uploading: a ready version never changes")
        for path in paths:
            api.remove_file(dataset["id"], number, path)
            click.echo(f"removed {path} from {kind} {name} version {number}")

    rm_file.help = (
        f"Remove files from the version of {kind} NAME still uploading (one an interrupted or partial upload left), "
        "before `upload` finishes it; PATH as `files` lists it."
    )

    @group.command("download")
    @click.argument("ref", metavar="NAME[:VERSION]")
    @click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--path", "only", help="Only this file, or the files under this directory.")
    @workers_option
    @progress_option
    @workspace_option
    def download(
        ref: str, dest: Path, only: str | None, workers: int, progress: bool | None, workspace: str | None
    ) -> None:
        api = _api(kind, workspace)
        dataset, number = _resolve_version(api, ref)
        chosen = select_files(api.files(dataset["id"], number), only)
        if not chosen:
            what = f"no file {only!r} in" if only else "no files in"
            raise ClientError(f"{what} {kind} {dataset['name']} version {number}")
        targets = [(f, download_target(dest, f["path"])) for f in chosen]

        def work() -> tuple[int, int]:
            label = f"{dataset['name']} v{number}"
            return download_files(
                api, dataset["id"], number, targets, workers=workers, show=progress, timeout=_timeout(), label=label
            )

        fetched, already = _interrupted(work)
        click.echo(
            f"{len(targets)} files of {kind} {dataset['name']} version {number} in {dest} "
            f"({human_bytes(fetched)} fetched, {human_bytes(already)} already there)"
        )

    download.help = (
        f"Download a version of a {kind} (default: its latest) into DEST, files at their paths under it; files "
        "already there with the right SHA-256 are kept, so running it again finishes an interrupted download."
    )
    return group


dataset_group = make_group("dataset")
model_group = make_group("model")
