"""Engine and session factory; one ``Database`` per process, stored on the app state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import Select

from gateway.db.direct import DirectReads

T = TypeVar("T")

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


BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite connection waits for another's write lock before giving up (a 503)."""
INLINE_BUSY_TIMEOUT_MS = 100
"""The same for reads run in the event loop's thread, which wait only in rare moments (WAL recovery)."""


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry, *, busy_ms: int = BUSY_TIMEOUT_MS) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
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


def _engine_options(parsed: URL, pool_size: int, echo: bool, *, pre_ping: bool = True) -> dict[str, Any]:
    # msgspec reads and writes JSON columns several times faster than the json module
    options: dict[str, Any] = {"echo": echo, "json_serializer": _json_text, "json_deserializer": msgspec.json.decode}
    if parsed.get_backend_name() == "sqlite":  # a local file: no connection to lose, nothing to ping
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        options.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping)
    return options


def _sqlite_events(engine: Engine, busy_ms: int = BUSY_TIMEOUT_MS, *, autocommit: bool = False) -> None:
    """Pragmas on every new connection; BEGIN emitted by SQLAlchemy, unless each statement runs on its own."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", partial(_sqlite_connect, busy_ms=busy_ms))
        if not autocommit:
            event.listen(engine, "begin", _sqlite_begin)


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    parsed = async_url(url)
    engine = create_async_engine(parsed, **_engine_options(parsed, pool_size, echo))
    _sqlite_events(engine.sync_engine)
    return engine


def create_thread_engine(url: str, *, pool_size: int = 10, echo: bool = False, autocommit: bool = False) -> Engine:
    """The same database through a synchronous driver, for units of work run in a thread (Database.run);
    ``autocommit``: connections that run each statement on their own (no BEGIN, no COMMIT)."""
    parsed = sync_url(url)
    # Database.run ends every transaction itself (commit, or rollback on error): no reset on return needed.
    # No ping before each unit either (a round trip per unit on PostgreSQL): a connection lost meanwhile fails
    # its unit, which Database.run repeats once if it only read, and invalidates the pool.
    options = _engine_options(parsed, pool_size, echo, pre_ping=False)
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    engine = create_sync_engine(parsed, pool_reset_on_return=None, **options)
    _sqlite_events(engine, INLINE_BUSY_TIMEOUT_MS if autocommit else BUSY_TIMEOUT_MS, autocommit=autocommit)
    return engine


class Database:
    """Owns the engine and hands out sessions. Services commit; callers never share a session."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.pool_size = pool_size
        self.echo = echo
        self.engine = create_engine(url, pool_size=pool_size, echo=echo)
        self._threaded: _Threaded | None = None
        self._threads_lock = threading.Lock()
        self.read_sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._loop_reads = (
            None if self.engine.dialect.name == "sqlite" else self._make_loop_reads(url, pool_size, echo)
        )  # SQLite reads run inline
        self._direct = (
            None
            if self.engine.dialect.name == "sqlite"
            else DirectReads(self.engine.url, self.engine.dialect, pool_size=pool_size)
        )
        self.sessionmaker = async_sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        """Sessions that may write (the default); ``read_sessionmaker`` for read-only work."""

    @staticmethod
    def _make_loop_reads(url: str, pool_size: int, echo: bool) -> AsyncEngine:
        """Reads on the event loop's connections (PostgreSQL): autocommit, no ping before each and no reset after
        (each a round trip, as long as the page's own query); a connection lost meanwhile fails its read, which
        ``run`` repeats once."""
        parsed = async_url(url)
        options = _engine_options(parsed, pool_size, echo, pre_ping=False)
        return create_async_engine(parsed, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def session(self, *, write: bool = True) -> AsyncSession:
        return (self.sessionmaker if write else self.read_sessionmaker)()

    async def run(self, work: Callable[[Session], T], *, write: bool = True, one_statement: bool = False) -> T:
        """``work(session)`` as one transaction, committed when it returns (rolled back if it raises); its result.

        For the hot paths (submission, job lists, the poller's writes). A synchronous unit of work costs one
        hand-off to a thread, where an AsyncSession hands every statement, BEGIN and COMMIT over to a thread
        (aiosqlite) or to the event loop (psycopg): 0.43 ms against 1.5 ms for an INSERT pair on SQLite, 0.63
        against 1.1 ms on PostgreSQL. Objects it returns are detached and loaded (no lazy loads afterwards).

        * Writes on SQLite run one at a time in one thread: SQLite has one writer anyway, and queueing here
          costs nothing where queueing on its lock costs busy-waiting.
        * Reads (``write=False``) run each statement on its own (autocommit), so two of them may see different
          commits, which a list's page and its count can live with. No thread hand-off either: on PostgreSQL
          they run on the event loop's own async connection; on SQLite in the caller's thread (in WAL mode a
          reader never waits for writers, and a page of 50 jobs takes less time than the hand-off; their busy
          timeout, INLINE_BUSY_TIMEOUT_MS, bounds the rare waits that remain). A read that found its connection
          gone is run once more. A hot read of one Core statement (a list page): ``rows``, at half the cost.
        * ``one_statement``: the unit's writes are one statement, atomic on its own (a CTE chaining INSERTs or an
          UPDATE and an INSERT): on PostgreSQL it runs in autocommit, without the BEGIN and COMMIT round trips
          (2 of a unit's 3). SQLite, with its lock taken at BEGIN, ignores it.
        """
        if not write and self.engine.dialect.name != "sqlite":
            try:
                return await self._unit_in_loop(work)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                return await self._unit_in_loop(work)
        engine, pool = self._threads(write)
        if write and one_statement and engine.dialect.name != "sqlite":
            engine = self._threads(False)[0]  # the autocommit engine, in the write threads
        if not write and engine.dialect.name == "sqlite":
            return self._unit(engine, work)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, self._unit, engine, work)
        except DBAPIError as exc:
            if write or not exc.connection_invalidated:
                raise  # a write may or may not have reached the database: its caller decides
            return await loop.run_in_executor(pool, self._unit, engine, work)

    async def rows(self, statement: Select[Any], values: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """The rows of one read-only Core ``statement`` (built once, not per call), ``values`` its parameters
        (names it does not use are ignored): the hot reads (a page of a list), where a unit of work would cost
        more than the query.

        On PostgreSQL straight on psycopg (``gateway.db.direct``: compiled once, no greenlet bridge, no Row
        objects; ~0.4 ms a list page against ~0.8 ms through ``run``); on SQLite inline, as ``run`` reads. Each
        statement sees the latest commits (autocommit); one whose connection was lost is run once more.
        """
        if self._direct is not None:
            return await self._direct.rows(statement, values)
        engine = self._threads(False)[0]  # SQLite: the autocommit engine, in the caller's thread (see ``run``)
        with engine.connect() as connection:
            return connection.execute(statement, values).all()

    async def _unit_in_loop(self, work: Callable[[Session], T]) -> T:
        """A read unit on the event loop's own connection (psycopg async, autocommit), the synchronous ``work``
        run through SQLAlchemy's greenlet bridge: no thread hand-off, which costs more than the page it reads."""
        assert self._loop_reads is not None  # PostgreSQL only
        async with self._loop_reads.connect() as connection:
            return await connection.run_sync(_read_on, work)

    @staticmethod
    def _unit(engine: Engine, work: Callable[[Session], T]) -> T:
        with Session(engine, expire_on_commit=False) as session:
            result = work(session)
            session.commit()
            return result

    def _threads(self, write: bool) -> tuple[Engine, ThreadPoolExecutor]:
        """The thread engine and pools, made on first use (most processes never need them)."""
        threaded = self._threaded
        if threaded is None:
            threaded = self._make_threads()
        return (threaded.writes, threaded.write_pool) if write else (threaded.reads, threaded.read_pool)

    def _make_threads(self) -> _Threaded:
        with self._threads_lock:
            if self._threaded is None:
                engine = create_thread_engine(self.url, pool_size=self.pool_size, echo=self.echo)
                reads = create_thread_engine(self.url, pool_size=self.pool_size, echo=self.echo, autocommit=True)
                writers = 1 if engine.dialect.name == "sqlite" else self.pool_size
                self._threaded = _Threaded(
                    reads=reads,
                    writes=engine.execution_options(**{WRITE_OPTION: True}),
                    engine=engine,
                    write_pool=ThreadPoolExecutor(writers, thread_name_prefix="db-write"),
                    read_pool=ThreadPoolExecutor(self.pool_size, thread_name_prefix="db-read"),
                )
            return self._threaded

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._loop_reads is not None:
            await self._loop_reads.dispose()
        if self._direct is not None:
            await self._direct.close()
        with self._threads_lock:
            threaded, self._threaded = self._threaded, None
        if threaded is not None:
            for pool in (threaded.write_pool, threaded.read_pool):
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
            threaded.engine.dispose()
            threaded.reads.dispose()


def _read_on(connection: Connection, work: Callable[[Session], T]) -> T:
    with Session(bind=connection, expire_on_commit=False) as session:
        return work(session)


class _Threaded(msgspec.Struct, frozen=True):
    """What Database.run uses: a synchronous engine, its views for reads and writes, and the threads."""

    engine: Engine
    reads: Engine
    """An engine of its own, in autocommit: no BEGIN and COMMIT round trips; each statement sees the latest
    commits (switching one connection in and out of autocommit would cost round trips of its own)."""
    writes: Engine
    write_pool: ThreadPoolExecutor
    read_pool: ThreadPoolExecutor
