"""Hot reads on PostgreSQL straight on psycopg's async connections: one Core statement, its rows as tuples.

A list page read through SQLAlchemy's async engine took ~0.8 ms in the gateway's process, twice what it takes
here (~0.4 ms, most of it the query): the pool checkout and every driver call crossed SQLAlchemy's greenlet
bridge, and the rows became Result and Row objects with per-value result processors. Here the statement is
compiled once by SQLAlchemy (its SQL text with ``%(name)s`` placeholders, the values of its own literals and the
processors of its parameters) and run on a small pool of the event loop's own connections, opened with the
engine's connection arguments and adapters (JSON decoded by msgspec): autocommit (no BEGIN, no COMMIT),
prepared on the server the first time each connection runs it, and the session's time zone UTC, so that
psycopg's values are already what SQLAlchemy's result processors would make of them (a statement with a column
that needs one is refused when compiled). Errors are SQLAlchemy's, as from the engine (an ``OperationalError``
is a 503 to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Dialect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.types import TypeEngine

from gateway.db.base import UTCDateTime


class CompiledRead:
    """A SELECT as psycopg runs it: its SQL, the values of its literal parameters (a bounded count's
    ``LIMIT 1001``) and the bind processors of its typed parameters (``UTCDateTime``: aware values only)."""

    __slots__ = ("bind_processors", "defaults", "sql")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string or any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("IN lists and other parameters rendered per call are not supported")  # SQL per call
        for column in statement.selected_columns:
            if not _loads_as_is(column.type, dialect):
                raise ValueError(f"column {column.key!r} ({column.type!r}) needs a result processor")
        self.sql: str = compiled.string
        params = compiled.params
        binds = compiled.bind_names.items()  # each parameter and its name in the SQL
        self.defaults: dict[str, Any] = {name: params[name] for bind, name in binds if not bind.required}
        processors = {name: bind.type.dialect_impl(dialect).bind_processor(dialect) for bind, name in binds}.items()
        self.bind_processors: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (name, processor) for name, processor in processors if processor is not None
        )

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = {**self.defaults, **values}
        for name, processor in self.bind_processors:
            if name in params:
                params[name] = processor(params[name])
        return params


def _loads_as_is(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether psycopg's value for a column of this type is the one SQLAlchemy would return. ``UTCDateTime``'s
    processor makes values aware in UTC, which they are on a connection whose time zone is UTC."""
    return isinstance(type_, UTCDateTime) or type_.dialect_impl(dialect).result_processor(dialect, None) is None


class DirectReads:
    """The event loop's own connections, as many at a time as the engine's pool has (``pool_size``, as many
    again in overflow), ``pool_size`` of them kept open between reads. Each read runs on its own (autocommit),
    so two reads may see different commits. A read whose connection was gone (the server restarted, an idle
    connection killed) is run once more, on a new one."""

    def __init__(self, url: URL, dialect: Dialect, *, pool_size: int) -> None:
        args, kwargs = dialect.create_connect_args(url)  # as the engine connects (its JSON adapters included)
        self._connect_args: tuple[Sequence[str], MutableMapping[str, Any]] = (args, kwargs)
        self._dialect = dialect
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._keep = pool_size
        self._slots = asyncio.Semaphore(2 * pool_size)
        self._compiled: weakref.WeakKeyDictionary[Select[Any], CompiledRead] = weakref.WeakKeyDictionary()
        self._closed = False

    def compiled(self, statement: Select[Any]) -> CompiledRead:
        """The statement compiled once (kept while the statement lives: build it once, not per call)."""
        read = self._compiled.get(statement)
        if read is None:
            read = self._compiled[statement] = CompiledRead(statement, self._dialect)
        return read

    async def rows(self, statement: Select[Any], values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The statement's rows with ``values`` for its parameters (names not in it are ignored)."""
        read = self.compiled(statement)
        params = read.parameters(values)
        async with self._slots:
            try:
                return await self._run(read.sql, params)
            except _Failed as failed:
                if not failed.lost:
                    raise self._wrapped(read.sql, params, failed) from failed.error
            try:
                return await self._run(read.sql, params)
            except _Failed as failed:
                raise self._wrapped(read.sql, params, failed) from failed.error

    async def _run(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        connection = self._idle.pop() if self._idle else None
        try:
            if connection is None:
                connection = await self._connect()
            cursor = await connection.execute(sql, params, prepare=True)
            found = await cursor.fetchall()
        except psycopg.Error as exc:
            lost = connection is None or connection.broken  # could not connect, or the connection is gone
            if connection is not None:
                await _discard(connection)
            raise _Failed(exc, lost=lost) from exc
        except BaseException:
            if connection is not None:
                await _discard(connection)  # cancelled mid-read: its state is unknown
            raise
        if self._closed or len(self._idle) >= self._keep or connection.info.transaction_status != _IDLE:
            await _discard(connection)
        else:
            self._idle.append(connection)
        return found

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        args, kwargs = self._connect_args
        connection = await psycopg.AsyncConnection.connect(*args, autocommit=True, **kwargs)
        try:
            # psycopg gives timestamptz values the session's time zone, and UTC's is datetime.UTC itself
            await connection.execute("SET TIME ZONE 'UTC'")
        except BaseException:
            await _discard(connection)
            raise
        return connection

    def _wrapped(self, sql: str, params: dict[str, Any], failed: _Failed) -> Exception:
        """The error as the engine raises it (``sqlalchemy.exc.OperationalError`` and its kin)."""
        wrapped = DBAPIError.instance(
            sql, params, failed.error, psycopg.Error, connection_invalidated=failed.lost, dialect=self._dialect
        )
        assert isinstance(wrapped, Exception)
        return wrapped

    async def close(self) -> None:
        """Close the idle connections; those in use close when their read ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await _discard(connection)


class _Failed(Exception):
    def __init__(self, error: psycopg.Error, *, lost: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.lost = lost


_IDLE = TransactionStatus.IDLE


async def _discard(connection: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        await connection.close()
