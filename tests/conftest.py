"""Shared fixtures.

Every test that touches the database runs once per backend: SQLite (a file, the embedded default) and
PostgreSQL (the server on 127.0.0.1:5432; each run creates and drops its own database).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from litestar import Litestar
from sqlalchemy import delete

from gateway.access_cache import ACCESS_CACHE
from gateway.accounts.auth import issue_token
from gateway.accounts.models import User
from gateway.actor import Actor
from gateway.app import create_app
from gateway.config import Settings
from gateway.db import migrate
from gateway.db.models import Base
from gateway.db.session import Database
from tests.locks import held

PG_ADMIN_URL = os.environ.get("REMOTEGPU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def _cluster_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests that stop or restart a daemon of the shared Slurm cluster (marked ``serial``) run alone, even with
    several pytest-xdist workers: they hold the cluster's lock exclusively; every other test of the cluster holds
    it shared for its length."""
    serial = request.node.get_closest_marker("serial") is not None
    if not serial and "slurm_cluster" not in request.fixturenames:
        yield
        return
    with held("cluster", shared=not serial):
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder, so ``-m unit`` / ``-m integration`` / ``-m e2e`` select them."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "integration", "e2e"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def make_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """Factory: an empty database on the given backend, dropped at the end of the session."""
    created: list[str] = []

    def make(backend: str) -> str:
        name = f"remotegpu_test_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / (name + '.db')}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _pg_url(name)

    yield make
    if created:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, make_database_url: Callable[[str], str]) -> str:
    url = make_database_url(backend)
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, log_level="WARNING")


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = Database(settings.database_url)
    yield db
    await db.dispose()


@pytest.fixture
async def clean_database(database: Database) -> AsyncIterator[Database]:
    """The schema with no rows, for each test."""
    async with database.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(delete(table))
        await session.commit()
    ACCESS_CACHE.invalidate()  # ids may be reused by the next test's rows
    yield database


def asgi_client(app: Litestar) -> httpx.AsyncClient:
    """An HTTP client that calls the app in-process (no socket)."""
    transport = httpx.ASGITransport(app=cast(Any, app))  # Litestar's precise ASGI types vs httpx's loose ones
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@pytest.fixture
async def client(settings: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(settings, database=clean_database)) as c:
        yield c


@pytest.fixture
def gateway_env() -> dict[str, str]:
    """Extra environment of the ``gateway`` fixture's ``remotegpu serve``: none; a folder's conftest overrides it
    (tests/integration/hub: the hub's URL). Here, so every folder that imports ``gateway`` finds it."""
    return {}


UserFactory = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def make_user(clean_database: Database) -> UserFactory:
    """Create a user directly in the database and return bearer headers for it."""

    async def make(name: str, *, admin: bool = False, password: str | None = None) -> dict[str, str]:
        from gateway.accounts.passwords import hash_password

        async with clean_database.session() as session:
            user = User(
                name=name,
                posix_name=name,
                is_admin=admin,
                password_hash=await hash_password(password) if password else None,
            )
            session.add(user)
            await session.flush()
            created = await issue_token(session, Actor.system("test"), user, name="test", ttl_days=1)
        return {"Authorization": f"Bearer {created.token}"}

    return make
