"""HTTP-level defects found by testing the running stack (issue 8, item 9), each pinned by a regression test."""

from __future__ import annotations

import asyncio

import httpx

from gateway.access_cache import ACCESS_CACHE
from tests.conftest import UserFactory

WS = "/api/v1/workspaces/neighbours"


async def test_a_failed_request_never_fails_its_neighbours_on_a_cold_cache(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    """One request's bad query parameter cancels its own dependencies, among them the shared token lookup: the
    requests waiting on that lookup must still get their answer (they got 500 "missing required field 'actor'")."""
    owner = await make_user("owner")
    assert (await client.post("/api/v1/workspaces", json={"slug": "neighbours", "name": "N"}, headers=owner)).is_success
    for _ in range(15):
        ACCESS_CACHE.invalidate()
        bad = client.get("/api/v1/workspaces?limit=0", headers=owner)
        good = [client.get("/api/v1/workspaces", headers=owner) for _ in range(6)]
        responses = await asyncio.gather(bad, *good)
        assert responses[0].status_code == 400
        assert [r.status_code for r in responses[1:]] == [200] * 6, [r.text for r in responses[1:]]
