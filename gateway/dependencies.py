"""Litestar dependencies shared by every controller: database session, caller, pagination."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.accounts import auth as auth_service
from gateway.actor import Actor
from gateway.config import Settings
from gateway.db.request_sessions import remember_session, request_session
from gateway.db.session import Database
from gateway.errors import Forbidden, Unauthorized
from gateway.schemas import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Pagination

# Handler parameters named after a dependency; the alias marks them as injected (not query parameters).
DbSession = NamedDependency[AsyncSession]
CurrentActor = NamedDependency[Actor]
AppSettings = NamedDependency[Settings]
Page = NamedDependency[Pagination]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


LazySession = Callable[[], AsyncSession]
"""The request's database session, made when first called: cache hits never open one."""


def lazy_session(request: Request[object, object, State]) -> LazySession:
    database: Database = request.app.state.database
    write = request.method not in READ_METHODS
    return lambda: request_session(request.scope, lambda: database.session(write=write))


def lookup_session(request: Request[object, object, State]) -> LazySession:
    """A read-only session of its own, for what the access cache loads (who calls, their role in a workspace).

    Not the request's session: for a write request that one takes SQLite's write lock at its first statement
    and keeps it until the request ends, which a unit of work the handler runs (Database.run) would wait for.
    """
    database: Database = request.app.state.database

    def make() -> AsyncSession:
        session = database.session(write=False)
        remember_session(request.scope, session)
        return session

    return make


def provide_db_session(request: Request[object, object, State]) -> AsyncSession:
    """Closed by the request-context middleware when the response is done."""
    return lazy_session(request)()


def provide_settings(state: State) -> Settings:
    settings: Settings = state.settings
    return settings


async def provide_actor(request: Request[object, object, State]) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    return await auth_service.authenticate(lookup_session(request), secret.strip())


async def provide_admin(actor: NamedDependency[Actor]) -> Actor:
    if not actor.is_admin:
        raise Forbidden("platform administrators only")
    return actor


async def provide_pagination(
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description="page size")] = DEFAULT_PAGE_SIZE,
    offset: Annotated[
        int, QueryParameter(ge=0, le=10**9, description="items to skip", schema_extra={"minimum": 0})
    ] = 0,  # (schema_extra: Litestar leaves a bound of 0 out of the OpenAPI document)
) -> Pagination:
    return Pagination(limit=limit, offset=offset)


APP_DEPENDENCIES = {
    "db_session": Provide(provide_db_session, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "actor": Provide(provide_actor),
    "page": Provide(provide_pagination),
}
ADMIN_DEPENDENCIES = {"admin": Provide(provide_admin)}

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
"""OpenAPI security requirement of every route that needs a token."""
