"""Reading a job's output files for its user: the last lines, or everything new as it is written.

The file is opened with the job user's credentials, not the gateway's: a gateway running as root forks a child
that drops to the user's uid, gid and groups, opens the path and hands the descriptor back over a socket pair
(SCM_RIGHTS). So an answer says only what the user could have learnt with ``cat``: whether a path exists where the
user cannot look is never told. The open does not block (a FIFO cannot hang a thread) and what it opened must be a
regular file (checked on the descriptor). A gateway that is not root can open only its own files: it reads those
of its own user, owned by that user, and refuses the rest.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO

BLOCK = 64 * 1024
MAX_TAIL_BYTES = 8 * 1024 * 1024
"""The most a tail reads back: a file of one endless line is shown from this far before its end."""


class LogUnreadable(Exception):
    """The path exists but is not the job user's regular file."""


_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MISSING, _OPENED, _REFUSED = b"N", b"F", b"E"


def open_owned(path: str, uid: int) -> IO[bytes] | None:
    """``path`` opened for reading as the POSIX user ``uid``, if it is a regular file; None if there is none (yet)."""
    fd = _open_as(path, uid) if os.geteuid() == 0 and uid != 0 else _open_here(path, uid)
    if fd is None:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LogUnreadable(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_here(path: str, uid: int) -> int | None:
    try:
        fd = os.open(path, _FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise LogUnreadable(f"{path} cannot be read by the job's user") from None
    if os.geteuid() != 0 and os.fstat(fd).st_uid != uid:
        os.close(fd)  # not root: the gateway's own rights are not the user's
        raise LogUnreadable(f"{path} cannot be read by the job's user")
    return fd


def _open_as(path: str, uid: int) -> int | None:
    """Open ``path`` in a child process that has become the user; its descriptor comes back over a socket."""
    account = pwd.getpwuid(uid)
    groups = os.getgrouplist(account.pw_name, account.pw_gid)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; only system calls, then _exit (never back into the gateway)
            status = 1
            try:
                os.setgroups(groups)
                os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
                os.setresuid(uid, uid, uid)
                try:
                    fd = os.open(path, _FLAGS)
                except (FileNotFoundError, NotADirectoryError):
                    theirs.sendall(_MISSING)
                except OSError:
                    theirs.sendall(_REFUSED)
                else:
                    socket.send_fds(theirs, [_OPENED], [fd])
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        try:
            answer, fds, _, _ = socket.recv_fds(ours, 1, 1)
        finally:
            os.waitpid(pid, 0)
    if answer == _OPENED and fds:
        return fds[0]
    for fd in fds:
        os.close(fd)
    if answer == _MISSING:
        return None
    raise LogUnreadable(f"{path} cannot be read by the job's user")


def tail_start(fh: IO[bytes], lines: int) -> int:
    """Where the last ``lines`` lines of an open file begin (read backwards in blocks: logs can be large)."""
    fh.seek(0, os.SEEK_END)
    end = position = fh.tell()
    data = b""
    while position > 0 and end - position < MAX_TAIL_BYTES and data.count(b"\n", 0, len(data) - 1) < lines:
        step = min(BLOCK, position)
        position -= step
        fh.seek(position)
        data = fh.read(step) + data
    # the last line may be unfinished; count back ``lines`` line breaks from before it
    cut = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return position
    return end - (len(data) - cut - 1)


def tail(path: str, uid: int, lines: int) -> list[str]:
    """The last ``lines`` lines of the user's file at ``path`` (none if it is not there yet)."""
    fh = open_owned(path, uid)
    if fh is None:
        return []
    with fh:
        fh.seek(tail_start(fh, lines))
        return _lines(fh.read().decode(errors="replace"))[-lines:]


def _lines(text: str) -> list[str]:
    """Split at newlines only: a progress bar's carriage returns stay inside its line."""
    parts = text.split("\n")
    return parts[:-1] if parts[-1] == "" else parts


async def follow(
    path: str,
    uid: int,
    lines: int,
    finished: Callable[[], Awaitable[bool]],
    *,
    interval: float = 1.0,
    opened: IO[bytes] | None = None,
) -> AsyncIterator[bytes]:
    """The last ``lines`` lines, then whatever is appended, until ``finished()`` says the job is over and the
    file has been read to its end. Waits for the file to appear while the job has not started writing it.
    A file that shrinks (rewritten) is read again from its start. ``opened``: the file, already opened by
    :func:`open_owned` (the caller's check that it may be read); it is closed when the stream ends."""
    fh = opened
    try:
        while fh is None:
            fh = await asyncio.to_thread(open_owned, path, uid)
            if fh is None:
                if await finished():
                    return
                await asyncio.sleep(interval)
        fh.seek(await asyncio.to_thread(tail_start, fh, lines))
        pending = b""  # the start of a line not yet ended
        while True:
            chunk = await asyncio.to_thread(_read_new, fh)
            if chunk:
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                if complete:
                    yield complete + b"\n"
                continue
            if await finished():
                # what was written between the last read and the check, however much
                while rest := await asyncio.to_thread(_read_new, fh):
                    pending += rest
                if pending:
                    yield pending
                return
            await asyncio.sleep(interval)
    finally:
        if fh is not None:
            fh.close()


def _read_new(fh: IO[bytes]) -> bytes:
    position = fh.tell()
    size = os.fstat(fh.fileno()).st_size
    if size < position:  # truncated or rewritten
        fh.seek(0)
    return fh.read(BLOCK * 16)
