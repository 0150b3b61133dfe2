"""remotegpu-stage-in: on a job's node, fetch one dataset or model version into the job's /gemini slot.

Run by the batch script the gateway renders (slurm.script), as the job's user, from a venv every user can
execute. It asks the gateway for the slot's manifest with the job's ``REMOTEGPU_STAGE_TOKEN``, then for each file:
takes it from the node-local cache when a file of that SHA-256 and size is there (``--cache``, by default
``$REMOTEGPU_CACHE_DIR``, else ``<dir>/<uid>`` under the node's cache that /etc/remotegpu/cache.conf names (the
Salt formula's), else ``/tmp/remotegpu-cache-<uid>``: jobs of the same user on the node share it); else
downloads it from the first replica's URL, checking size and SHA-256 as it writes, and on any failure from the
next replica's; a file that no replica gives whole and unaltered fails the stage-in (exit 1, the job ends: no
job runs on partial data). The slot gets hard links to the cache, files mode 0444 and directories 0555:
read-only for the program. Where the cache is on another file system than the slot (a node-local cache, the
layout on a shared home or /gemini mount), a one-node job's tree of links is made beside the cache instead, in
``<cache>/slots/<job>.<slot>``, and the slot becomes a symlink to it: nothing is copied into a home directory.
Those trees go when their job has left ``squeue`` (looked at by the next stage-in of the user on the node).
On a job of several nodes every node runs it (slurm.script): a node-local /gemini is filled on each; a layout on
a shared file system once (a lock per slot, and a marker naming what it holds), with hard links where the cache
shares its file system and copies where not (a link into one node's cache would dangle on the others).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

VARIABLE = "REMOTEGPU_STAGE_TOKEN"
CHUNK = 1024 * 1024


NODE_CACHE_CONF = Path("/etc/remotegpu/cache.conf")
"""Written by the Salt formula (remotegpu.gemini): ``REMOTEGPU_CACHE_DIR=`` the node's dataset cache."""


def default_cache(environ: Mapping[str, str], conf: Path) -> Path:
    """The user's cache on this node: ``$REMOTEGPU_CACHE_DIR`` as it is; else ``<the node's cache>/<uid>`` where
    the node has one (``conf``, kept within its size by remotegpu-cache-prune); else ``/tmp/remotegpu-cache-<uid>``."""
    if environ.get("REMOTEGPU_CACHE_DIR"):
        return Path(environ["REMOTEGPU_CACHE_DIR"])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in conf.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "REMOTEGPU_CACHE_DIR" and value.strip().startswith("/"):
                return Path(value.strip()) / str(os.getuid())
    return Path(f"{tempfile.gettempdir()}/remotegpu-cache-{os.getuid()}")


def _say(message: str) -> None:
    print(f"remotegpu-stage-in: {message}", file=sys.stderr, flush=True)


def _manifest(gateway: str, slot: str, token: str) -> dict[str, object]:
    url = f"{gateway.rstrip('/')}/api/v1/stage-in/{slot}"
    node = os.environ.get("SLURMD_NODENAME")  # routing puts the replicas of this node's region first
    for attempt in range(5):
        try:
            r = httpx.get(
                url, params={"node": node} if node else None, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
        except httpx.TransportError as exc:
            _say(f"the gateway did not answer ({exc}); trying again")
            time.sleep(2**attempt)
            continue
        if r.status_code >= 500:
            time.sleep(2**attempt)
            continue
        if r.status_code != 200:
            detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").endswith("json") else r.text
            raise SystemExit(f"remotegpu-stage-in: the gateway refused: {detail}")
        manifest: dict[str, object] = r.json()
        return manifest
    raise SystemExit("remotegpu-stage-in: the gateway did not answer")


def _download(url: str, size: int, sha256: str, into: Path) -> Path:
    """The object at ``url`` into a new file of directory ``into``, checked; ValueError when it is not the file."""
    fd, tmp = tempfile.mkstemp(dir=into, prefix=".part-")
    digest, written = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, timeout=httpx.Timeout(30, read=300)) as r:
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}")
            for chunk in r.iter_bytes(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
        if written != size or digest.hexdigest() != sha256:
            raise ValueError(f"got {written} bytes with another checksum than the manifest's")
    except BaseException:
        Path(tmp).unlink()
        raise
    return Path(tmp)


def _report(gateway: str, slot: str, token: str, report: dict[str, object]) -> None:
    """Tell the gateway how the stage-in went (the job's history, failover metrics); never fails the job."""
    url = f"{gateway.rstrip('/')}/api/v1/stage-in/{slot}/report"
    for attempt in range(3):
        try:
            r = httpx.post(url, json=report, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        except httpx.TransportError:
            time.sleep(2**attempt)
            continue
        if r.status_code < 300:
            return
        if r.status_code < 500:
            _say(f"the gateway refused the stage-in's report: HTTP {r.status_code} {r.text[:300]}")
            return
        time.sleep(2**attempt)
    _say("could not tell the gateway how the stage-in went")


def _cached(
    cache: Path, entry: dict[str, object], sources: Sequence[str], failovers: list[dict[str, str]]
) -> tuple[Path, str | None]:
    """The file's path in the cache, and the source it came from (None: it was there already); each replica
    that failed on the way is added to ``failovers``."""
    sha, size = str(entry["sha256"]), int(str(entry["size"]))
    place = cache / sha[:2] / sha
    if place.is_file() and place.stat().st_size == size:
        return place, None
    place.parent.mkdir(parents=True, exist_ok=True)
    urls = [str(u) for u in entry["urls"]]  # type: ignore[attr-defined]
    for source, url in zip(sources, urls, strict=False):
        try:
            got = _download(url, size, sha, place.parent)
        except (httpx.HTTPError, ValueError, OSError) as exc:
            _say(f"{entry['path']}: storage source {source} failed ({exc}); trying the next replica")
            failovers.append({"source": source, "path": str(entry["path"])[:1024], "error": str(exc)[:500]})
            continue
        got.chmod(0o444)
        got.replace(place)
        return place, source
    raise SystemExit(f"remotegpu-stage-in: no replica gave {entry['path']} whole (sources: {', '.join(sources)})")


def _place(cached: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(cached, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(cached, target)
        target.chmod(0o444)


def _link_tree(cache: Path, dest: Path, slot: str) -> Path:
    """Where the slot's links go: ``dest`` itself when it shares the cache's file system, else a tree beside
    the cache that ``dest`` (the layout's empty directory, or a link from an earlier try) then points to."""
    dest.mkdir(parents=True, exist_ok=True)
    several_nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or 1) > 1  # a link into this node's cache: not theirs
    if not several_nodes and (dest.is_symlink() or dest.stat().st_dev != cache.stat().st_dev):
        _prune_slots(cache)
        job = os.environ.get("SLURM_JOB_ID") or str(os.getpid())
        tree = cache / "slots" / f"{job}.{slot}"
        _remove_tree(tree)
        tree.mkdir(parents=True)
        return tree
    if any(dest.iterdir()):  # a tree from an earlier try of the job (a requeue): made again
        _remove_tree(dest)
        dest.mkdir()
    return dest


def _point(dest: Path, tree: Path) -> None:
    if tree == dest:
        return
    if dest.is_symlink():
        dest.unlink()
    else:
        _remove_tree(dest)  # the layout's empty directory (or a tree of links from an earlier try)
    dest.symlink_to(tree, target_is_directory=True)


def _remove_tree(tree: Path) -> None:
    if not tree.exists() or tree.is_symlink():
        return
    for path, _, _ in os.walk(tree):
        with contextlib.suppress(OSError):
            Path(path).chmod(0o755)
    shutil.rmtree(tree, ignore_errors=True)


def _prune_slots(cache: Path) -> None:
    """The trees of links of this user's jobs that have left squeue: gone (their files stay in the cache)."""
    slots = cache / "slots"
    if not slots.is_dir():
        return
    squeue = shutil.which("squeue")
    if squeue is None:
        return
    try:
        live = subprocess.run(  # noqa: S603 - a fixed program; the user name is the caller's own
            [squeue, "-h", "-u", getpass.getuser(), "-o", "%A"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return
    if live.returncode != 0:
        return  # no answer is not "no jobs"
    running = set(live.stdout.split())
    for tree in slots.iterdir():
        if tree.name.split(".", 1)[0] not in running:
            _remove_tree(tree)


def _read_only(root: Path) -> None:
    for path, dirs, _ in os.walk(root, topdown=False):
        for d in dirs:
            (Path(path) / d).chmod(0o555)
    root.chmod(0o555)


def stage(gateway: str, slot: str, dest: Path, cache: Path, token: str) -> int:
    """Fill ``dest``; one stage-in at a time per slot, so the nodes of a job whose layout is on a shared file
    system fill it once (the others find it done: the marker beside it names the manifest's digest)."""
    manifest = _manifest(gateway, slot, token)
    failovers: list[dict[str, str]] = []
    counts = {"files": 0, "bytes_fetched": 0, "cache_hits": 0}
    dest.parent.mkdir(parents=True, exist_ok=True)
    marker = dest.parent / f".{dest.name}.staged"
    digest = _digest(manifest)
    try:
        with (dest.parent / f".{dest.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.is_file() and marker.read_text() == digest and dest.resolve().is_dir():
                message = f"{manifest['reference']} in {dest}: staged already (by another node of the job)"
            else:
                marker.unlink(missing_ok=True)
                message = _fill(manifest, dest, cache, failovers, counts)
                marker.write_text(digest)
    except OSError as exc:
        raise SystemExit(f"remotegpu-stage-in: cannot fill {dest}: {exc}") from None
    except SystemExit as exc:
        why = str(exc.code).removeprefix("remotegpu-stage-in: ")
        _report(gateway, slot, token, {"ok": False, "message": why[:2000], "failovers": failovers[:100], **counts})
        raise
    _say(message)
    _report(gateway, slot, token, {"ok": True, "message": message[:2000], "failovers": failovers[:100], **counts})
    return 0


def _digest(manifest: dict[str, object]) -> str:
    """What the slot holds, in one string: its files' paths, sizes and SHA-256s."""
    files = sorted((str(f["path"]), int(f["size"]), str(f["sha256"])) for f in manifest["files"])  # type: ignore[attr-defined]
    return hashlib.sha256(repr(files).encode()).hexdigest()


def _fill(
    manifest: dict[str, object], dest: Path, cache: Path, failovers: list[dict[str, str]], counts: dict[str, int]
) -> str:
    """The slot filled from the cache and the replicas; what to say about it."""
    sources = [str(s) for s in manifest["sources"]]  # type: ignore[attr-defined]
    files = list(manifest["files"])  # type: ignore[call-overload]
    if not sources and files:
        raise SystemExit(f"remotegpu-stage-in: no storage source holds {manifest['reference']} now")
    tree = _link_tree(cache, dest, str(manifest["slot"]))
    started, used = time.monotonic(), set[str]()
    for entry in files:
        relative = Path(str(entry["path"]))
        if relative.is_absolute() or ".." in relative.parts:  # the gateway never sends one; never trusted
            raise SystemExit(f"remotegpu-stage-in: refusing the path {entry['path']!r}")
        cached, source = _cached(cache, entry, sources, failovers)
        counts["files"] += 1
        if source is None:
            counts["cache_hits"] += 1
        else:
            counts["bytes_fetched"] += int(entry["size"])
            used.add(source)
        _place(cached, tree / relative)
    _read_only(tree)
    _point(dest, tree)
    total = sum(int(e["size"]) for e in files)
    origin = f" from {', '.join(sorted(used))}" if used else ""
    return (
        f"{manifest['reference']} in {dest}: {len(files)} files, {total} bytes ({counts['cache_hits']} from the "
        f"node's cache, {counts['bytes_fetched']} bytes fetched{origin}) in {time.monotonic() - started:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remotegpu-stage-in", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument(
        "--slot", required=True, choices=["data-1", "data-2", "data-3", "pretrain", "pretrain2", "pretrain3"]
    )
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--cache", type=Path, default=None, help="the node's cache of this user (see --help)")
    options = parser.parse_args(argv)
    options.cache = options.cache or default_cache(os.environ, NODE_CACHE_CONF)
    token = os.environ.get(VARIABLE, "")
    if not token:
        _say(f"{VARIABLE} is not set (the gateway gives it to the job)")
        return 2
    options.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    return stage(options.gateway, options.slot, options.dest, options.cache, token)


if __name__ == "__main__":
    sys.exit(main())
