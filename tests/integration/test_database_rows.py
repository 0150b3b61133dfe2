"""Database.rows: one read-only Core statement, on SQLite inline and on PostgreSQL straight on psycopg."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import Integer, bindparam, func, literal_column, select
from sqlalchemy.exc import OperationalError

from gateway.accounts.models import User
from gateway.db.base import UTCDateTime
from gateway.db.direct import CompiledRead
from gateway.db.session import Database
from gateway.jobs.models import TrainingJob
from gateway.workspaces.models import Workspace

JOBS = TrainingJob.__table__
NEWER = (
    select(JOBS.c.id, JOBS.c.spec, JOBS.c.nodes, JOBS.c.created_at, User.name, func.count().over().label("n"))
    .join(User, User.id == JOBS.c.user_id)
    .where(JOBS.c.created_at >= bindparam("since", type_=UTCDateTime()), JOBS.c.name == "r")
    .order_by(JOBS.c.created_at.desc())
    .limit(5)
)
"""Typed parameters, a literal one, JSON and UTC timestamps: what a list page reads."""


async def _jobs(database: Database, created: list[datetime]) -> None:
    async with database.session() as session:
        user = User(name="rows", posix_name="rows")
        ws = Workspace(slug="rows", name="Rows", slurm_account="rows", currency="EUR")
        session.add_all([user, ws])
        await session.flush()
        for i, at in enumerate(created):
            session.add(
                TrainingJob(
                    id=f"{i:032x}",
                    workspace_id=ws.id,
                    user_id=user.id,
                    name="r",
                    spec={"nodes": i},
                    nodes=[f"n{i}"],
                    script="",
                    work_dir="/tmp",
                    stdout_path="/dev/null",
                    created_at=at,
                )
            )
        await session.commit()


async def test_rows_are_what_the_engine_reads(clean_database: Database) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await _jobs(clean_database, [now - timedelta(hours=h) for h in range(3)])
    values = {"since": now - timedelta(hours=1, minutes=1), "unused": 1}  # names the statement lacks: ignored
    rows = await clean_database.rows(NEWER, values)
    async with clean_database.session(write=False) as session:
        expected = (await session.execute(NEWER, {"since": values["since"]})).all()
    assert [tuple(r) for r in rows] == [tuple(r) for r in expected]
    assert [r[0] for r in rows] == [f"{0:032x}", f"{1:032x}"]
    assert rows[1][1:3] == ({"nodes": 1}, ["n1"]) and rows[0][4] == "rows" and rows[0][5] == 2
    assert rows[0][3] == now and rows[0][3].tzinfo is UTC  # as UTCDateTime reads it, on either backend
    assert await clean_database.rows(NEWER, {"since": now + timedelta(hours=1)}) == []


async def test_a_read_whose_connection_died_is_run_again(make_database_url: Callable[[str], str]) -> None:
    database = Database(make_database_url("postgresql"))
    backend_pid = select(func.pg_backend_pid())
    try:
        [(pid,)] = await database.rows(backend_pid, {})  # the connection is kept for the next read
        with psycopg.connect(database.url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        [(again,)] = await database.rows(backend_pid, {})
        assert again != pid
    finally:
        await database.dispose()


async def test_an_unreachable_server_is_the_engine_s_operational_error() -> None:
    database = Database("postgresql://nobody@127.0.0.1:1/none")  # (a 503 to clients, as from the engine)
    try:
        with pytest.raises(OperationalError):
            await database.rows(select(func.now()), {})
    finally:
        await database.dispose()


def test_statements_psycopg_cannot_read_as_the_engine_would_are_refused() -> None:
    dialect = Database("postgresql://nobody@127.0.0.1:1/none").engine.dialect  # (never connects)
    with pytest.raises(ValueError, match="status"):
        CompiledRead(select(Workspace.status), dialect)  # an Enum: its strings become members
    with pytest.raises(ValueError, match="IN lists"):
        CompiledRead(select(User.id).where(User.name.in_(["a", "b"])), dialect)  # its SQL is made per call
    read = CompiledRead(NEWER, dialect)
    assert read.defaults == {"name_1": "r", "param_1": 5}
    with pytest.raises(ValueError, match="naive"):
        read.parameters({"since": datetime(2026, 1, 1)})  # a naive value


async def test_concurrent_reads_share_a_bounded_pool(make_database_url: Callable[[str], str]) -> None:
    database = Database(make_database_url("postgresql"), pool_size=2)  # at most 4 at a time, 2 kept open
    mine = "datname = current_database() AND pid <> pg_backend_pid()"
    active = literal_column(f"(SELECT count(*) FROM pg_stat_activity WHERE {mine} AND state = 'active')", Integer)
    reading = select(active, func.pg_sleep(0.02))
    try:
        found = await asyncio.gather(*(database.rows(reading, {}) for _ in range(20)))
        assert 1 <= max(rows[0][0] for rows in found) <= 3  # the others reading meanwhile
        with psycopg.connect(database.url, autocommit=True) as other:
            row = other.execute(f"SELECT count(*) FROM pg_stat_activity WHERE {mine}").fetchone()
            assert row is not None and row[0] == 2  # kept open between reads
    finally:
        await database.dispose()
