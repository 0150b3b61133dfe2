"""The Alembic history builds the schema the models describe, and unwinds cleanly, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection

from gateway.db import migrate
from gateway.db.models import Base
from gateway.db.session import sync_url

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
NOW = datetime(2026, 12, 1, 12, 0)


def _tables(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list[object]:
    engine = create_engine(sync_url(url))

    def compare(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))

    try:
        with engine.connect() as conn:
            return compare(conn)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_backend: str, make_database_url: Callable[[str], str]) -> None:
    url = make_database_url(db_backend)
    expected = set(Base.metadata.tables)

    migrate.upgrade(url)
    assert _tables(url) == expected
    assert migrate.current_revision(url) == migrate.head_revision()

    migrate.downgrade(url, "base")
    assert _tables(url) == set()
    assert migrate.current_revision(url) is None

    migrate.upgrade(url)
    assert _tables(url) == expected
    assert migrate.current_revision(url) == migrate.head_revision()


def test_migrations_match_models(db_backend: str, make_database_url: Callable[[str], str]) -> None:
    """A model change without its migration fails here."""
    url = make_database_url(db_backend)
    migrate.upgrade(url)
    assert _diff(url) == []


def test_upgrade_keeps_rows_that_other_tables_refer_to(
    db_backend: str, make_database_url: Callable[[str], str]
) -> None:
    """A database in use is upgraded with its rows: on SQLite an altered table is copied and dropped, which
    rows referring to it (job events to their job) must survive."""
    url = make_database_url(db_backend)
    migrate.upgrade(url, "0003")  # job_events refer to jobs; 0005 alters jobs
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, name, posix_name, password_hash, is_admin, disabled, user_type,"
                    " created_at, updated_at) VALUES (1, 'u', 'u', 'x', false, false, 'internal', :t, :t)"
                ),
                {"t": NOW},
            )
            conn.execute(
                text(
                    "INSERT INTO workspaces (id, slug, name, description, slurm_account, status, currency,"
                    " created_at, updated_at) VALUES (1, 'w', 'w', '', 'w', 'active', 'CNY', :t, :t)"
                ),
                {"t": NOW},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (id, workspace_id, user_id, name, state, state_unknown, slurm_job_id, spec,"
                    " script, work_dir, stdout_path, nodes, allocated, created_at, updated_at)"
                    " VALUES ('j1', 1, 1, 'n', 'PENDING', false, 7, '{}', '', '/', '/o', '[]', '{}', :t, :t)"
                ),
                {"t": NOW},
            )
            conn.execute(
                text(
                    "INSERT INTO job_events (job_id, workspace_id, old_state, new_state, at)"
                    " VALUES ('j1', 1, 'SUBMITTING', 'PENDING', :t)"
                ),
                {"t": NOW},
            )
    finally:
        engine.dispose()
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, slurm_job_id FROM jobs")).all() == [("j1", 7)]
            assert conn.execute(text("SELECT job_id FROM job_events")).all() == [("j1",)]
    finally:
        engine.dispose()
