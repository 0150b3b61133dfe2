"""Storage sources through the API on both databases: admin only, keys sealed in the database and never returned,
audited without them, bad input named, and no ``secret_keys`` a clear 503. Health against real stores:
tests/integration/s3/test_storage_health.py."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.audit.models import AuditEntry
from gateway.config import Settings
from gateway.crypto import KeyRing
from gateway.datasets import sources
from gateway.datasets.models import StorageSource
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client

URL = "/api/v1/storage-sources"
KEY = base64.b64encode(os.urandom(32)).decode()
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
BODY = {
    "name": "local-minio",
    "type": "minio",
    "endpoint": "http://127.0.0.1:9/",
    "bucket": "remotegpu-data",
    "region": "dc-1",
    "access_key": "AKIAEXAMPLEACCESS",
    "secret_key": SECRET,
    "priority": 10,
}


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, secret_keys=KEY)


@pytest.fixture
async def api(keyed: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(keyed, database=clean_database)) as c:
        yield c


async def test_admins_add_list_change_and_delete_sources_whose_keys_never_come_back(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, keyed: Settings
) -> None:
    root, alice = await make_user("root", admin=True), await make_user("alice")
    assert (await api.post(URL, json=BODY, headers=alice)).status_code == 403
    assert (await api.get(URL, headers=alice)).status_code == 403

    r = await api.post(URL, json=BODY, headers=root)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["endpoint"] == "http://127.0.0.1:9" and made["health"] == "unknown" and made["public"] is False
    assert "access_key" not in made and "secret_key" not in made and SECRET not in r.text
    assert (await api.post(URL, json=BODY, headers=root)).status_code == 409

    async with clean_database.session() as session:
        row = (await session.scalars(select(StorageSource))).one()
        assert SECRET not in row.secret_key_sealed and row.secret_key_sealed.startswith("v1:")
        assert sources.credentials(row, KeyRing.parse(KEY)).secret_key == SECRET
        audit = (await session.scalars(select(AuditEntry).where(AuditEntry.action.like("storage_source.%")))).all()
        assert audit and all(SECRET not in msgspec.json.encode(a.details).decode() for a in audit)

    listed = (await api.get(URL, headers=root)).json()
    assert [s["name"] for s in listed] == ["local-minio"] and SECRET not in str(listed)
    r = await api.patch(f"{URL}/local-minio", json={"secret_key": "rotated-secret", "weight": 5}, headers=root)
    assert r.status_code == 200 and r.json()["weight"] == 5 and "rotated-secret" not in r.text
    async with clean_database.session() as session:
        row = (await session.scalars(select(StorageSource))).one()
        assert sources.credentials(row, KeyRing.parse(KEY)).secret_key == "rotated-secret"

    # nothing answers on port 9: checked now, it is down with why
    r = await api.post(f"{URL}/local-minio/check", headers=root)
    assert r.status_code == 201 and r.json()["health"] == "down" and r.json()["last_error"], r.text

    assert (await api.delete(f"{URL}/local-minio", headers=root)).status_code == 204
    assert (await api.get(f"{URL}/local-minio", headers=root)).status_code == 404


async def test_rotating_the_key_seals_every_source_again(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, keyed: Settings
) -> None:
    root = await make_user("root", admin=True)
    assert (await api.post(URL, json=BODY, headers=root)).status_code == 201
    new = base64.b64encode(os.urandom(32)).decode()
    rotated = msgspec.structs.replace(keyed, secret_keys=f"{new},{KEY}")
    assert await sources.rotate_secrets(clean_database, rotated) == 1
    assert await sources.rotate_secrets(clean_database, rotated) == 0  # already current
    async with clean_database.session() as session:
        row = (await session.scalars(select(StorageSource))).one()
        assert sources.credentials(row, KeyRing.parse(new)).secret_key == SECRET  # the new key alone reads it


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bucket": "Bad_Bucket"}, "bucket"),
        ({"bucket": "a..b"}, "bucket"),
        ({"bucket": "192.168.1.1"}, "bucket"),
        ({"endpoint": "ftp://x"}, "endpoint"),
        ({"endpoint": "http://user:pw@host"}, "endpoint"),
        ({"name": "../etc"}, "name"),
        ({"prefix": "../up/"}, "prefix"),
        ({"type": "ceph"}, "type"),
        ({"priority": -1}, "priority"),
        ({"secret_key": "has space"}, "secret_key"),
        ({"secret_key": "x" * 300}, "secret_key"),
    ],
)
async def test_bad_input_names_the_field(
    api: httpx.AsyncClient, make_user: UserFactory, change: dict[str, object], field: str
) -> None:
    root = await make_user("root", admin=True)
    r = await api.post(URL, json={**BODY, **change}, headers=root)
    assert r.status_code == 400, r.text
    assert field in r.text and r.headers["content-type"].startswith("application/problem+json")


async def test_without_secret_keys_a_source_is_refused_with_503_naming_the_setting(
    settings: Settings, clean_database: Database, make_user: UserFactory
) -> None:
    root = await make_user("root", admin=True)
    async with asgi_client(create_app(settings, database=clean_database)) as api:
        r = await api.post(URL, json=BODY, headers=root)
    assert r.status_code == 503 and "REMOTEGPU_SECRET_KEYS" in r.json()["detail"], r.text


async def test_the_operator_rotates_the_key_from_the_command_line(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, keyed: Settings
) -> None:
    root = await make_user("root", admin=True)
    assert (await api.post(URL, json=BODY, headers=root)).status_code == 201
    new = base64.b64encode(os.urandom(32)).decode()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")},
        "REMOTEGPU_DATABASE_URL": keyed.database_url,
        "REMOTEGPU_SECRET_KEYS": f"{new},{KEY}",
    }
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "admin", "rotate-secrets", env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await done.communicate()
    assert done.returncode == 0 and b"1 storage source(s)" in out, err
    async with clean_database.session() as session:
        row = (await session.scalars(select(StorageSource))).one()
        assert sources.credentials(row, KeyRing.parse(new)).secret_key == SECRET
    env["REMOTEGPU_SECRET_KEYS"] = ""
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "admin", "rotate-secrets", env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await done.communicate()
    assert done.returncode == 1 and b"REMOTEGPU_SECRET_KEYS" in err and b"Traceback" not in err, err
