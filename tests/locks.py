"""Locks between test processes (pytest-xdist workers run the suite in several): one file lock per shared thing."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

LOCKS = Path("/var/tmp/remotegpu-test-locks")


@contextlib.contextmanager
def held(name: str, *, shared: bool = False) -> Iterator[None]:
    """``name``'s lock for the block: exclusive, or shared with other shared holders."""
    LOCKS.mkdir(mode=0o700, exist_ok=True)
    with (LOCKS / f"{name}.lock").open("a") as file:
        fcntl.flock(file, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
