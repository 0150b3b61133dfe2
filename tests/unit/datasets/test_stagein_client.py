"""remotegpu-stage-in's placing of a slot, against a small HTTP server standing in for the gateway and a store:
hard links when the cache shares the slot's file system; else a tree of links beside the cache with the slot a
symlink to it (nothing copied), removed once its job has left squeue."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.datasets import stagein_client

pytestmark = pytest.mark.unit

FILES = {"train/a.bin": os.urandom(300_000), "labels.txt": b"0 cat\n"}


class _Handler(http.server.BaseHTTPRequestHandler):
    reports: list[dict[str, object]]

    def log_message(self, *args: object) -> None:
        """Quiet: the test's output is its assertions."""

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"  # type: ignore[index]
        if self.path.startswith("/api/v1/stage-in/data-1"):
            body = json.dumps(
                {
                    "slot": "data-1",
                    "reference": "imagenet:1",
                    "sources": ["local"],
                    "files": [
                        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "urls": [f"{base}/o/{p}"]}
                        for p, d in sorted(FILES.items())
                    ],
                }
            ).encode()
        else:
            body = FILES[self.path.removeprefix("/o/")]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.reports.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[dict[str, object]]]]:
    reports: list[dict[str, object]] = []
    handler = type("Handler", (_Handler,), {"reports": reports})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", reports
    server.shutdown()
    server.server_close()


def _check_slot(dest: Path) -> None:
    for path, data in FILES.items():
        assert (dest / path).read_bytes() == data
    assert not os.access(dest, os.W_OK) or os.geteuid() == 0  # root writes anywhere; the mode says it all
    assert stat.S_IMODE(dest.resolve().stat().st_mode) == 0o555


def test_same_file_system_hard_links(
    gateway: tuple[str, list[dict[str, object]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, reports = gateway
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    dest, cache = tmp_path / "layout/data-1", tmp_path / "cache"
    dest.mkdir(parents=True)
    cache.mkdir()
    assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
    assert not dest.is_symlink()
    _check_slot(dest)
    assert (dest / "labels.txt").stat().st_nlink == 2  # the cache's file and the slot's link
    assert reports[-1]["ok"] is True and reports[-1]["files"] == 2

    # another node of the job with the same layout (a shared file system), or the job again: staged already
    assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
    _check_slot(dest)
    again = reports[-1]
    assert "staged already" in str(again["message"]) and again["files"] == 0

    # what it marked gone (or another version): the read-only tree is made anew, from the cache
    (dest.parent / ".data-1.staged").write_text("another version")
    assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
    _check_slot(dest)
    assert reports[-1]["cache_hits"] == 2


def test_a_job_of_several_nodes_copies_rather_than_links_into_one_nodes_cache(
    gateway: tuple[str, list[dict[str, object]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary directory")
    url, _ = gateway
    monkeypatch.setenv("SLURM_JOB_ID", "51")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    cache = shm / f"stagein-test-{os.getpid()}"
    dest = tmp_path / "layout/data-1"
    dest.mkdir(parents=True)
    try:
        cache.mkdir()
        assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
        assert not dest.is_symlink() and not (cache / "slots").exists()
        _check_slot(dest)
    finally:
        stagein_client._remove_tree(cache)


def test_another_file_system_links_beside_the_cache_and_prunes_ended_jobs(
    gateway: tuple[str, list[dict[str, object]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary directory")
    url, _ = gateway
    cache = shm / f"stagein-test-{os.getpid()}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"  # the user's live jobs as squeue would list them (-h -o %A)
    squeue.write_text('#!/bin/sh\ncat "$LIVE"\n')
    squeue.chmod(0o755)
    live = tmp_path / "live"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("LIVE", str(live))
    try:
        cache.mkdir()
        for job in ("41", "42"):
            live.write_text("41\n42\n")
            monkeypatch.setenv("SLURM_JOB_ID", job)
            dest = tmp_path / f"layout-{job}/data-1"
            dest.mkdir(parents=True)
            assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
            assert dest.is_symlink() and dest.resolve() == (cache / f"slots/{job}.data-1").resolve()
            _check_slot(dest)
        assert (cache / "slots/41.data-1").is_dir()

        # job 41 has ended: the next stage-in removes its tree (not 42's, still running), not the cached files
        live.write_text("42\n43\n")
        monkeypatch.setenv("SLURM_JOB_ID", "43")
        dest = tmp_path / "layout-43/data-1"
        dest.mkdir(parents=True)
        assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
        assert sorted(p.name for p in (cache / "slots").iterdir()) == ["42.data-1", "43.data-1"]
        _check_slot(tmp_path / "layout-42/data-1")

        # squeue failing says nothing about what ended: nothing is removed
        squeue.write_text("#!/bin/sh\nexit 1\n")
        monkeypatch.setenv("SLURM_JOB_ID", "44")
        dest = tmp_path / "layout-44/data-1"
        dest.mkdir(parents=True)
        assert stagein_client.stage(url, "data-1", dest, cache, "token") == 0
        assert len(list((cache / "slots").iterdir())) == 3
    finally:
        stagein_client._remove_tree(cache)


def test_the_cache_is_the_variable_else_the_nodes_else_tmp(tmp_path: Path) -> None:
    conf = tmp_path / "cache.conf"
    uid = str(os.getuid())
    assert stagein_client.default_cache({"REMOTEGPU_CACHE_DIR": "/scratch/me"}, conf) == Path("/scratch/me")
    assert stagein_client.default_cache({}, conf).name == f"remotegpu-cache-{uid}"  # no conf: /tmp
    conf.write_text("# by Salt\nREMOTEGPU_CACHE_DIR=/var/cache/remotegpu/datasets\nREMOTEGPU_CACHE_MAX_GB=200\n")
    assert stagein_client.default_cache({}, conf) == Path("/var/cache/remotegpu/datasets") / uid
    conf.write_text("REMOTEGPU_CACHE_DIR=relative/path\n")  # not a place to trust
    assert stagein_client.default_cache({}, conf).name == f"remotegpu-cache-{uid}"
