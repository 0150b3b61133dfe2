"""``remotegpu dataset`` / ``remotegpu model`` without a gateway: the walk of a directory, the names the gateway
refuses (held to its own ObjectPath and check_path), the part plan (held to the gateway's), which version an
upload resumes, retries, the store's errors, the tables, and refusals before anything is sent. Against a real
gateway and real S3 stores: tests/integration/s3/test_dataset_cli.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main
from gateway.client import data_commands as data
from gateway.client.api import ClientError
from gateway.datasets import service
from gateway.datasets.schemas import DatasetOut, FileOut, ObjectPath, UploadOut, VersionOut
from gateway.errors import InvalidInput

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
MIB = 1024 * 1024


def as_api(value: msgspec.Struct) -> Any:
    """A response of the gateway's as the CLI receives it: through JSON."""
    return json.loads(msgspec.json.encode(value))


# --- the walk ----------------------------------------------------------------------------------------------


def test_a_directory_walk_gives_its_regular_files_by_relative_path(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "train" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"a")
    (root / "train" / "x.bin").write_bytes(b"xx")
    (root / "train" / "deep" / "y.json").write_bytes(b"{}")
    (root / "zero").write_bytes(b"")
    (root / "inside-link").symlink_to("a.txt")  # inside the DIR: followed, stored under the link's path
    (root / "outside-link").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_bytes(b"not for upload")
    (root / "dir-link").symlink_to(root / "train")
    (root / "broken").symlink_to(root / "nowhere")
    os.mkfifo(root / "fifo")

    found = data.walk([root])

    assert [(f.path, f.size) for f in found.files] == [
        ("a.txt", 1), ("inside-link", 1), ("train/deep/y.json", 2), ("train/x.bin", 2), ("zero", 0),
    ]  # fmt: skip
    assert found.files[1].source == root / "inside-link"
    assert sorted(found.skipped) == [
        "broken (broken symlink, or gone)",
        "dir-link (symlink to a directory)",
        "fifo (not a regular file)",
        f"outside-link (symlink leading outside {root})",
    ]


def test_files_and_directories_together_and_duplicates_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "one").write_bytes(b"1")
    (tmp_path / "two").write_bytes(b"22")
    assert [f.path for f in data.walk([tmp_path / "d", tmp_path / "two"]).files] == ["one", "two"]
    (tmp_path / "one").write_bytes(b"other")
    with pytest.raises(ClientError, match="'one' comes from both"):
        data.walk([tmp_path / "d", tmp_path / "one"])
    (tmp_path / "e").mkdir()
    with pytest.raises(ClientError, match="nothing to upload"):
        data.walk([tmp_path / "e"])
    with pytest.raises(ClientError, match=r"cannot read .*missing: No such file"):
        data.walk([tmp_path / "missing"])


GOOD = ["a", "train/part-0001.parquet", "名前/ファイル.txt", "a b/c d", "x" * 1024, ".hidden/.x", "a..b"]
BAD = ["", "/abs", "a//b", "a/", "./a", "a/../b", "..", "a\\b", "a\nb", "tab\there", "del\x7f", "x" * 1025]


def _gateway_takes(path: str) -> bool:
    try:
        msgspec.convert(path, ObjectPath)
        service.check_path(path)
    except (msgspec.ValidationError, InvalidInput):
        return False
    return True


@pytest.mark.parametrize("path", GOOD + BAD)
def test_names_refused_are_those_the_gateway_refuses(path: str) -> None:
    assert (data.path_problem(path) is None) == _gateway_takes(path) == (path in GOOD)


def test_a_name_that_is_not_utf8_is_refused() -> None:
    name = os.fsdecode(b"caf\xe9")  # a Latin-1 file name, as os.walk gives it
    assert data.path_problem(name) == "not valid UTF-8"


def test_refused_names_are_one_line_naming_the_first(tmp_path: Path) -> None:
    files = [data.LocalFile(p, tmp_path / "x", 1, 0) for p in ("ok", "bad\\one", "bad\nline")]
    with pytest.raises(ClientError) as refused:
        data.check_names(files)
    assert (
        str(refused.value) == "refusing to upload 'bad\\\\one' and 1 more: the gateway takes no name with a backslash"
    )
    data.check_names(files[:1])


# --- the part plan -----------------------------------------------------------------------------------------


def upload_out(size: int, completed: list[int] | None = None) -> Any:
    """The gateway's answer to a new (or resumed) upload of ``size`` bytes, planned by its own part_plan."""
    part_size, count = service.part_plan(size)
    return as_api(
        UploadOut(
            id="u1",
            path="f",
            size=size,
            sha256="0" * 64,
            status="open",
            part_size=part_size,
            part_count=count,
            completed_parts=completed or [],
            parts=[],
            expires_at=T0,
        )
    )


@given(st.integers(min_value=0, max_value=5 * 1024**4))
def test_parts_cover_the_file_exactly_and_match_the_gateway_plan(size: int) -> None:
    upload = upload_out(size)
    jobs = data.part_jobs(upload)
    assert len(jobs) == upload["part_count"] <= service.MAX_PARTS
    assert sum(j.length for j in jobs) == size
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(jobs))
    assert jobs[0].offset == 0 and all(j.length == upload["part_size"] for j in jobs[:-1])
    assert [j.number for j in jobs] == list(range(1, upload["part_count"] + 1))


def test_a_resumed_upload_sends_only_the_missing_parts() -> None:
    size = 70 * 1000 * 1000  # 70 MB: 9 parts of 8 MiB, the last one 3,891,456 bytes
    jobs = data.part_jobs(upload_out(size, completed=[1, 2, 9]))
    assert [j.number for j in jobs] == [3, 4, 5, 6, 7, 8]
    assert jobs[0].offset == 2 * 8 * MIB and {j.length for j in jobs} == {8 * MIB}
    last = data.part_jobs(upload_out(size, completed=list(range(1, 9))))
    assert [(j.number, j.offset, j.length) for j in last] == [(9, 8 * 8 * MIB, size - 8 * 8 * MIB)]
    assert data.part_jobs(upload_out(size, completed=list(range(1, 10)))) == []
    assert data.part_jobs(upload_out(0)) == [data.PartJob(1, 0, 0)]  # an empty file: one empty part


@pytest.mark.parametrize(("part_size", "count"), [(8 * MIB, 1), (8 * MIB, 3), (0, 1), (8 * MIB, 0)])
def test_a_plan_that_does_not_cover_the_file_is_refused(part_size: int, count: int) -> None:
    upload = {**upload_out(10 * MIB), "part_size": part_size, "part_count": count}
    with pytest.raises(ClientError, match="cannot send that"):
        data.part_jobs(upload)


# --- which version, which ref ------------------------------------------------------------------------------


def version_out(number: int, status: str, source: str = "store-a") -> Any:
    return as_api(
        VersionOut(
            version=number,
            status=status,  # type: ignore[arg-type]
            size_bytes=0,
            file_count=0,
            primary_source=source,
            replicas=[source] if status == "ready" else [],
            created_at=T0,
            ready_at=T0 if status == "ready" else None,
            error=None,
        )
    )


def test_the_upload_resumes_the_newest_uploading_version_or_makes_one() -> None:
    assert data.version_to_resume([], None) is None
    assert data.version_to_resume([version_out(1, "ready"), version_out(2, "syncing")], None) is None
    versions = [version_out(1, "ready"), version_out(2, "error"), version_out(3, "uploading", "store-b")]
    assert data.version_to_resume(versions, None) == 3
    assert data.version_to_resume(versions, "store-b") == 3
    with pytest.raises(ClientError, match="version 3 is still being uploaded to storage source store-b"):
        data.version_to_resume(versions, "store-a")


def test_refs() -> None:
    assert data.parse_ref("imagenet") == ("imagenet", None)
    assert data.parse_ref("imagenet:3") == ("imagenet", 3)
    assert data.parse_ref("imagenet:latest") == ("imagenet", None)
    for bad in ("imagenet:", "imagenet:x", "imagenet:0", ":3", "a:-1"):
        with pytest.raises(Exception, match="NAME:VERSION"):
            data.parse_ref(bad)


# --- retries and the store's answers -----------------------------------------------------------------------


def test_backoff_doubles_up_to_a_bound_with_jitter() -> None:
    assert [data.backoff(n, jitter=1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert all(0.25 <= data.backoff(0) <= 0.5 for _ in range(100))


EXPIRED = "<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"


def test_store_errors_say_whether_trying_again_helps() -> None:
    refused = data.store_failure(403, EXPIRED)
    assert refused.kind == "refresh" and str(refused) == "the store answered HTTP 403 AccessDenied: Request has expired"
    assert data.store_failure(503, "<Error><Code>SlowDown</Code></Error>").kind == "retry"
    assert data.store_failure(429, "").kind == "retry"
    gone = data.store_failure(404, "<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>")
    assert gone.kind == "fatal" and "NoSuchUpload" in str(gone)
    assert str(data.store_failure(400, "<html>proxy</html>")) == "the store answered HTTP 400"


class Flaky:
    """Fails with these failures, in order, then answers ``done``."""

    def __init__(self, *failures: data.Failure) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.refreshed = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"

    def refresh(self) -> None:
        self.refreshed += 1


def retried(flaky: Flaky, stop: threading.Event | None = None) -> str:
    return data.with_retries(flaky, refresh=flaky.refresh, stop=stop or threading.Event(), pause=lambda n: 0)


def test_a_part_is_tried_three_times_more_then_given_up() -> None:
    flaky = Flaky(data.Failure("retry", "x"), data.Failure("refresh", "expired"), data.Failure("retry", "y"))
    assert retried(flaky) == "done" and flaky.calls == 4 and flaky.refreshed == 1
    hopeless = Flaky(*(data.Failure("retry", str(n)) for n in range(4)))
    with pytest.raises(data.Failure, match="3"):
        retried(hopeless)
    assert hopeless.calls == 4
    fatal = Flaky(data.Failure("fatal", "no such upload"))
    with pytest.raises(data.Failure, match="no such upload"):
        retried(fatal)
    assert fatal.calls == 1


def test_a_stop_ends_the_retries() -> None:
    stop = threading.Event()
    stop.set()
    flaky = Flaky(data.Failure("retry", "x"))
    with pytest.raises(data.Stopped):
        retried(flaky, stop)
    assert flaky.calls == 0

    stop = threading.Event()

    def fail_then_stop() -> str:
        stop.set()  # Ctrl-C while the part was on its way
        raise data.Failure("retry", "x")

    with pytest.raises(data.Stopped):
        data.with_retries(fail_then_stop, refresh=lambda: None, stop=stop, pause=lambda n: 0)


def test_hashing_streams_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "HASH_CHUNK", 7)  # many chunks of an odd size
    body = os.urandom(1000)
    (tmp_path / "f").write_bytes(body)
    assert data.sha256_of(tmp_path / "f") == hashlib.sha256(body).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert data.sha256_of(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ClientError, match="cannot read"):
        data.sha256_of(tmp_path / "missing")


# --- tables and downloads ----------------------------------------------------------------------------------


def dataset_out(latest: Any | None) -> Any:
    return as_api(
        DatasetOut(
            id="d" * 32,
            kind="dataset",
            workspace="lab",
            name="imagenet-mini",
            description="",
            tags=["vision", "v1:raw"],
            shared_with=[],
            owner="alice",
            created_at=T0,
            latest=msgspec.convert(latest, VersionOut) if latest else None,
        )
    )


def test_list_and_show_rows() -> None:
    ready = {**version_out(2, "ready"), "size_bytes": 70 * MIB, "file_count": 4}
    rows = list(data.list_rows([dataset_out(ready), {**dataset_out(None), "name": "fresh"}]))
    assert rows == [
        ["imagenet-mini", 2, "ready", 4, "70.0 MiB", "store-a", "vision,v1:raw", "alice", "2026-11-30T10:00:00Z"],
        ["fresh", None, None, None, None, "", "vision,v1:raw", "alice", "2026-11-30T10:00:00Z"],
    ]
    lines = data.show_lines(dataset_out(ready), [version_out(1, "uploading"), ready])
    assert lines[0] == "name:         imagenet-mini" and "tags:         vision, v1:raw" in lines
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == data.VERSION_HEADERS
    assert table[2].split() == [
        "2",
        "ready",
        "4",
        "70.0",
        "MiB",
        "store-a",
        "store-a",
        *["2026-11-30T10:00:00Z"] * 2,
        "-",
    ]
    assert data.show_lines(dataset_out(None), [])[-1] == "no versions yet"


def test_sizes() -> None:
    assert [data.human_bytes(n) for n in (0, 1023, 1024, 1536, 70 * 1000 * 1000, 3 * 1024**4, 5 * 1024**5)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "66.8 MiB", "3.0 TiB", "5120.0 TiB",
    ]  # fmt: skip


def test_download_selects_a_file_or_a_directory_and_stays_inside_dest(tmp_path: Path) -> None:
    files = [as_api(FileOut(path=p, size=1, sha256="0" * 64)) for p in ("a.txt", "train/x", "train/y", "trainee")]
    assert [f["path"] for f in data.select_files(files, None)] == ["a.txt", "train/x", "train/y", "trainee"]
    assert [f["path"] for f in data.select_files(files, "train")] == ["train/x", "train/y"]
    assert [f["path"] for f in data.select_files(files, "train/")] == ["train/x", "train/y"]
    assert [f["path"] for f in data.select_files(files, "a.txt")] == ["a.txt"]
    assert data.select_files(files, "nope") == []
    assert data.download_target(tmp_path, "train/x") == tmp_path / "train" / "x"
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(ClientError, match="not writing it"):
            data.download_target(tmp_path, bad)


# --- the commands, before anything is sent -----------------------------------------------------------------

NOWHERE = {"REMOTEGPU_URL": "http://127.0.0.1:9", "REMOTEGPU_TOKEN": "rgpu_x", "REMOTEGPU_WORKSPACE": "lab"}


def test_upload_refuses_bad_names_before_contacting_the_gateway(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_bytes(b"1")
    (tmp_path / "back\\slash").write_bytes(b"2")
    result = CliRunner().invoke(main, ["dataset", "upload", "ds", str(tmp_path)], env=NOWHERE)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        "Error: refusing to upload 'back\\\\slash': the gateway takes no name with a backslash"
    )  # not "cannot connect": nothing was sent


def test_both_kinds_have_the_same_commands() -> None:
    for kind in data.KINDS:
        result = CliRunner().invoke(main, [kind, "--help"])
        assert result.exit_code == 0
        listed = result.output.split("Commands:")[1].split()
        assert {"create", "list", "show", "upload", "download", "files"} <= set(listed)
    bad = CliRunner().invoke(main, ["model", "files", "llama:two"], env=NOWHERE)
    assert bad.exit_code == 2 and "NAME:VERSION" in bad.output
    nothing = CliRunner().invoke(main, ["dataset", "upload", "ds", "/nonexistent/x"], env=NOWHERE)
    assert nothing.exit_code == 1 and "cannot read /nonexistent/x" in nothing.output
