"""Database sessions opened for one request, so the request's outermost middleware can close them all."""

from __future__ import annotations

from collections.abc import Callable

from litestar.types import Scope
from sqlalchemy.ext.asyncio import AsyncSession

_KEY = "db_sessions"
_CURRENT = "db_session"


def remember_session(scope: Scope, session: AsyncSession) -> None:
    scope.setdefault("state", {}).setdefault(_KEY, []).append(session)


async def close_if_used(session: AsyncSession) -> None:
    # Requests answered from the access cache never touch their session: skip the (greenlet) close.
    if session.sync_session.in_transaction() or session.sync_session.identity_map:
        await session.close()


async def close_request_sessions(scope: Scope) -> None:
    for session in scope.get("state", {}).get(_KEY, ()):
        await close_if_used(session)


def request_session(scope: Scope, make: Callable[[], AsyncSession]) -> AsyncSession:
    """The request's one session, made on first use (requests answered from caches never make one)."""
    state = scope.setdefault("state", {})
    session: AsyncSession | None = state.get(_CURRENT)
    if session is None:
        session = state[_CURRENT] = make()
        remember_session(scope, session)
    return session
