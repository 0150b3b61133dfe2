"""Reading the tail of a log file, and what the gateway refuses to read."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jobs import logs
from gateway.jobs.logs import LogUnreadable, open_owned, tail

pytestmark = pytest.mark.unit
ME = os.getuid()


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\n"),
            max_size=30,
        ),
        max_size=40,
    ),
    trailing=st.booleans(),
    lines=st.integers(1, 50),
    block=st.integers(1, 64),
)
def test_tail_is_the_last_lines(
    tmp_path_factory: pytest.TempPathFactory, text: list[str], trailing: bool, lines: int, block: int
) -> None:
    path = tmp_path_factory.mktemp("tail") / "log"
    content = "\n".join(text) + ("\n" if trailing and text else "")
    path.write_bytes(content.encode())
    original, logs.BLOCK = logs.BLOCK, block  # small blocks: lines cross block edges
    try:
        assert (
            tail(str(path), ME, lines)
            == content.split("\n")[: -1 if content.endswith("\n") or not content else None][-lines:]
        )
    finally:
        logs.BLOCK = original


def test_tail_of_one_endless_line_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_TAIL_BYTES", 1000)
    path = tmp_path / "log"
    path.write_bytes(b"x" * 100_000)
    [shown] = tail(str(path), ME, 5)
    assert 1000 <= len(shown) < 1000 + logs.BLOCK


def test_what_is_not_the_users_regular_file_is_refused(tmp_path: Path) -> None:
    assert open_owned(str(tmp_path / "missing"), ME) is None
    assert open_owned(str(tmp_path / "missing" / "deeper"), ME) is None
    (tmp_path / "mine").write_text("x")
    with pytest.raises(LogUnreadable, match="cannot be read"):
        open_owned(str(tmp_path / "mine"), ME + 1)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(LogUnreadable, match="regular"):
        open_owned(str(tmp_path / "fifo"), ME)
    with pytest.raises(LogUnreadable, match="regular"):
        open_owned(str(tmp_path), ME)
    fh = open_owned(str(tmp_path / "mine"), ME)
    assert fh is not None
    with fh:
        assert fh.read() == b"x"


async def test_follow_waits_for_the_file_sends_whole_lines_and_ends_with_the_job(tmp_path: Path) -> None:
    path = tmp_path / "log"
    done = False

    async def finished() -> bool:
        return done

    stream = logs.follow(str(path), ME, 10, finished, interval=0.01)
    got = []

    async def write_later() -> None:
        nonlocal done
        await asyncio.sleep(0.05)
        path.write_bytes(b"one\ntw")  # the file appears, a line half written
        await asyncio.sleep(0.05)
        with path.open("ab") as fh:
            fh.write(b"o\nthree")
        await asyncio.sleep(0.05)
        done = True

    writer = asyncio.create_task(write_later())
    async for chunk in stream:
        got.append(chunk)
    await writer
    assert b"".join(got) == b"one\ntwo\nthree"
    assert all(chunk.endswith(b"\n") for chunk in got[:-1]), got  # only whole lines until the end


async def test_follow_of_a_finished_job_is_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))

    async def finished() -> bool:
        return True

    got = b"".join([chunk async for chunk in logs.follow(str(path), ME, 3, finished, interval=0.01)])
    assert got == b"line 97\nline 98\nline 99\n"
    assert [chunk async for chunk in logs.follow(str(tmp_path / "never"), ME, 3, finished)] == []
