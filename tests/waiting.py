"""Waiting for real components: the one place the tests poll a condition until it holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias, TypeVar

T = TypeVar("T")


Maybe: TypeAlias = T | Literal[False] | None
"""What a check answers: a value once it holds (``cond and value`` reads as ``value``), falsy until then."""


def eventually(check: Callable[[], Maybe[T]], within: float = 60, every: float = 0.5) -> T:
    """``check()``'s first truthy value, asked every ``every`` s; an assertion error after ``within`` s."""
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting after {within} s"
        time.sleep(every)
    return result


async def eventually_async(check: Callable[[], Awaitable[Maybe[T]]], within: float = 60, every: float = 0.5) -> T:
    """The same for a coroutine function: ``await check()`` until it is truthy."""
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"gave up waiting after {within} s"
        await asyncio.sleep(every)
    return result
