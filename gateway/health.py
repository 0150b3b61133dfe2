"""Liveness and readiness probes."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text

from gateway.db.session import Database


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


@get("/healthz", tags=["health"])
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@get("/readyz", tags=["health"])
async def readyz(state: State) -> Response[Health]:
    """Ready to serve: the database answers."""
    database: Database = state.database
    try:
        async with database.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # readiness reports any failure, it never raises
        return Response(Health(status="unavailable", checks={"database": type(exc).__name__}), status_code=503)
    return Response(Health(status="ok", checks={"database": "ok"}))
