"""Engine and session factory; one ``Database`` per process, stored on the app state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

WRITE_OPTION = "remotegpu_write"


def async_url(url: str) -> URL:
    """Map plain URLs to the async drivers we ship: aiosqlite and psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sync_url(url: str) -> URL:
    """The same database through a synchronous driver (used by Alembic's offline tooling)."""
    parsed = async_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        return parsed.set(drivername="sqlite+pysqlite")
    return parsed


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE).

    A deferred transaction that reads, then writes after another connection committed, fails at once with
    SQLITE_BUSY_SNAPSHOT instead of waiting; taking the lock first makes concurrent writers queue on
    busy_timeout instead. Read-only sessions keep a plain deferred BEGIN so they never block.
    """
    mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    parsed = async_url(url)
    # msgspec reads and writes JSON columns several times faster than the json module
    kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _json_text, "json_deserializer": msgspec.json.decode}
    if parsed.get_backend_name() == "sqlite":  # a local file: no connection to lose, nothing to ping
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


class Database:
    """Owns the engine and hands out sessions. Services commit; callers never share a session."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size, echo=echo)
        self.read_sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.sessionmaker = async_sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        """Sessions that may write (the default); ``read_sessionmaker`` for read-only work."""

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def session(self, *, write: bool = True) -> AsyncSession:
        return (self.sessionmaker if write else self.read_sessionmaker)()

    async def dispose(self) -> None:
        await self.engine.dispose()
