"""The per-process access cache: changes made here apply at once, changes made elsewhere within its TTL."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
from sqlalchemy import update

from gateway.accounts.models import ApiToken
from gateway.app import create_app
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.workspaces.models import Member
from tests.conftest import UserFactory, asgi_client

WS = "/api/v1/workspaces/cached"


async def _setup(client: httpx.AsyncClient, make_user: UserFactory) -> tuple[dict[str, str], dict[str, str]]:
    owner, bob = await make_user("owner"), await make_user("bob")
    assert (await client.post("/api/v1/workspaces", json={"slug": "cached", "name": "C"}, headers=owner)).is_success
    assert (await client.post(f"{WS}/members", json={"username": "bob"}, headers=owner)).is_success
    return owner, bob


async def test_changes_through_this_process_apply_at_once(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    owner, bob = await _setup(client, make_user)
    assert (await client.get(WS, headers=bob)).status_code == 200  # now cached
    assert (await client.delete(f"{WS}/members/bob", headers=owner)).status_code == 204
    assert (await client.get(WS, headers=bob)).status_code == 404
    assert (await client.patch(WS, json={"name": "Renamed"}, headers=owner)).status_code == 200
    assert (await client.get(WS, headers=owner)).json()["name"] == "Renamed"
    assert (await client.delete("/api/v1/auth/tokens", headers=bob)).status_code == 204
    assert (await client.get("/api/v1/me", headers=bob)).status_code == 401


async def test_changes_from_elsewhere_apply_within_the_ttl(
    settings: Settings, clean_database: Database, make_user: UserFactory
) -> None:
    app = create_app(msgspec.structs.replace(settings, access_cache_seconds=0.5), database=clean_database)
    async with asgi_client(app) as client:
        _, bob = await _setup(client, make_user)
        assert (await client.get(WS, headers=bob)).status_code == 200
        # Another gateway process removes bob and revokes his token: plain SQL, no session in this process.
        async with clean_database.engine.begin() as conn:
            await conn.execute(update(Member).values(deleted_at=utcnow()).where(Member.role == "member"))
        assert (await client.get(WS, headers=bob)).status_code == 200  # still the cached answer
        await asyncio.sleep(0.6)
        assert (await client.get(WS, headers=bob)).status_code == 404
        async with clean_database.engine.begin() as conn:
            await conn.execute(update(ApiToken).values(revoked_at=utcnow()))
        await asyncio.sleep(0.6)
        assert (await client.get("/api/v1/me", headers=bob)).status_code == 401


async def test_concurrent_misses_share_one_lookup(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    _, bob = await _setup(client, make_user)
    responses = await asyncio.gather(*(client.get(WS, headers=bob) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    missing = await asyncio.gather(*(client.get("/api/v1/workspaces/absent", headers=bob) for _ in range(20)))
    assert {r.status_code for r in missing} == {404}
