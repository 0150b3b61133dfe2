"""A short-lived, per-process cache of who a token is and what role it has in a workspace.

Every authenticated request needs both answers; asking the database each time costs more than the rest of
the request. Entries live ``ttl`` seconds (setting ``access_cache_seconds``; 0 turns the cache off) and the
whole cache is dropped whenever a transaction in this process commits a change to users, tokens, workspaces,
members or quotas. Other processes see such a change within ``ttl`` seconds. Concurrent misses on one key share a
single database lookup, so an expiring entry under load costs one query, not one per waiting request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeVar

from cachetools import TTLCache
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from gateway.actor import Actor
from gateway.db.base import utcnow
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.workspaces.models import Role, Workspace

T = TypeVar("T")
_WATCHED: tuple[type, ...] = ()
"""The models whose changes can change who a token is or what role it has: each domain registers its own."""


def watch_for_access(*models: type) -> None:
    """Drop the cache whenever a committed transaction changed one of ``models`` (called by their domain)."""
    global _WATCHED
    _WATCHED = tuple(dict.fromkeys((*_WATCHED, *models)))


_CHANGED = "remotegpu_access_changed"
ACCESS_NEUTRAL = "remotegpu_access_neutral"
"""Execution option marking a bulk update that cannot change access (e.g. a token's last-use time)."""


class AccessCache:
    def __init__(self, ttl: float = 5.0, maxsize: int = 20_000) -> None:
        self.configure(ttl, maxsize)

    def configure(self, ttl: float, maxsize: int = 20_000) -> None:
        self.ttl = ttl
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self._actors: TTLCache[str, tuple[Actor, datetime | None]] = TTLCache(maxsize, ttl or 1)
        self._workspaces: TTLCache[tuple[int | None, str], tuple[Workspace, Role | None]] = TTLCache(maxsize, ttl or 1)

    async def actor(self, token_hash: str, load: Callable[[], Awaitable[tuple[Actor, datetime | None]]]) -> Actor:
        """The token's actor, from the cache or ``load()`` (which raises for an unknown token)."""
        hit = self._actors.get(token_hash)
        if hit is None or (hit[1] is not None and hit[1] <= utcnow()):
            hit = await self._single_flight(("actor", token_hash), load)
            if self.ttl > 0:
                self._actors[token_hash] = hit
        return hit[0]

    async def workspace(
        self, user_id: int | None, slug: str, load: Callable[[], Awaitable[tuple[Workspace, Role | None]]]
    ) -> tuple[Workspace, Role | None]:
        """A read-only snapshot of the workspace and the user's role in it, from the cache or ``load()``."""
        hit = self._workspaces.get((user_id, slug))
        if hit is None:
            hit = await self._single_flight(("workspace", user_id, slug), load)
            if self.ttl > 0:
                self._workspaces[(user_id, slug)] = hit
        return hit

    def invalidate(self) -> None:
        self._actors.clear()
        self._workspaces.clear()

    async def _single_flight(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """``load()`` once for all concurrent callers of ``key``.

        Only an answer about the key itself (a GatewayError: unknown token, no such workspace) is shared. If the
        leading call was cancelled (its request failed validation elsewhere and Litestar cancelled its other
        dependencies) or failed for a reason of its own (its request's session), the waiters do not inherit
        that: one of them loads again, with its own ``load``.
        """
        # The futures are dropped from every frame before leaving it: a failure's traceback references these
        # frames, and a future -> exception -> traceback -> frame -> future cycle would keep the loader's
        # database session (and its pooled connection) alive until the garbage collector runs.
        while (pending := self._inflight.get(key)) is not None:
            try:
                result: T = await asyncio.shield(pending)
                return result
            except GatewayError:
                raise
            except BaseException:
                if not pending.done() or _own_cancellation():
                    raise  # this caller was cancelled while waiting
                # the leader's own failure: try again (as the new leader, or behind one)
            finally:
                del pending
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved here, so an unwaited failure is not reported as lost
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key], future


def _own_cancellation() -> bool:
    """Whether the running task has been asked to stop (as opposed to a shared future having been cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


ACCESS_CACHE = AccessCache()


@event.listens_for(Session, "before_flush")
def _note_unit_of_work_changes(session: Session, _ctx: UOWTransaction, _instances: Any) -> None:
    if any(isinstance(obj, _WATCHED) for obj in chain(session.new, session.dirty, session.deleted)):
        session.info[_CHANGED] = True


@event.listens_for(Session, "do_orm_execute")
def _note_bulk_changes(state: ORMExecuteState) -> None:
    if state.execution_options.get(ACCESS_NEUTRAL):
        return
    mapper = state.bind_mapper
    if (state.is_update or state.is_delete) and mapper is not None and issubclass(mapper.class_, _WATCHED):
        state.session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _invalidate_after_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        ACCESS_CACHE.invalidate()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_CHANGED, None)
