"""Database.run: units of work in one transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.db.session import Database


def _add(name: str, session: Session) -> User:
    user = User(name=name, posix_name=name)
    session.add(user)
    session.flush()
    return user


def _count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)


async def test_a_unit_commits_and_returns_loaded_objects(clean_database: Database) -> None:
    user = await clean_database.run(lambda s: _add("ada", s))
    assert user.id is not None and user.name == "ada"  # detached, and still readable
    async with clean_database.session(write=False) as session:
        assert await session.scalar(select(User.name).where(User.id == user.id)) == "ada"


async def test_a_failing_unit_leaves_nothing(clean_database: Database) -> None:
    def two_then_fail(session: Session) -> None:
        _add("bob", session)
        _add("bob", session)  # the unique name: the whole unit is rolled back

    with pytest.raises(IntegrityError):
        await clean_database.run(two_then_fail)

    def fail_late(session: Session) -> None:
        _add("cy", session)
        raise RuntimeError("after the insert")

    with pytest.raises(RuntimeError):
        await clean_database.run(fail_late)
    assert await clean_database.run(_count, write=False) == 0


async def test_concurrent_writers_all_land(clean_database: Database) -> None:
    """On SQLite they queue in the one writer thread instead of on the lock; on PostgreSQL they run side by side."""
    await asyncio.gather(*(clean_database.run(lambda s, i=i: _add(f"u{i}", s)) for i in range(40)))  # type: ignore[misc]
    assert await clean_database.run(_count, write=False) == 40


async def test_reads_see_each_commit(clean_database: Database) -> None:
    assert await clean_database.run(_count, write=False) == 0
    async with clean_database.session() as session:  # another connection commits meanwhile
        session.add(User(name="dee", posix_name="dee"))
        await session.commit()
    assert await clean_database.run(_count, write=False) == 1


async def test_a_read_whose_connection_died_is_run_again(make_database_url: Callable[[str], str]) -> None:
    database = Database(make_database_url("postgresql"))  # its own pool: one connection, the one killed
    try:
        await _read_after_a_kill(database)
    finally:
        await database.dispose()


async def _read_after_a_kill(database: Database) -> None:
    pid = await database.run(lambda s: s.scalar(text("SELECT pg_backend_pid()")), write=False)
    with psycopg.connect(database.url, autocommit=True) as other:  # not one of the database's own connections
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    backends = []

    def read(session: Session) -> int:
        backends.append(session.scalar(text("SELECT pg_backend_pid()")))
        return len(backends)

    assert await database.run(read, write=False) == 1  # the first try died before it could note anything
    assert backends[0] != pid
