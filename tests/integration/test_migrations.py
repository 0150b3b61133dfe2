"""The Alembic history builds the schema the models describe, and unwinds cleanly, on both backends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection

from gateway.db import migrate
from gateway.db.models import Base
from gateway.db.session import sync_url

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])


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
