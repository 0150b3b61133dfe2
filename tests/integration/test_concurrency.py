"""Simultaneous requests racing for the same name: exactly one wins, the others get 409, nothing 500s."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import UserFactory


async def test_same_slug_created_twice_at_once(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    body = {"slug": "race", "name": "Race"}
    first, second = await asyncio.gather(
        client.post("/api/v1/workspaces", json=body, headers=alice),
        client.post("/api/v1/workspaces", json=body, headers=bob),
    )
    assert sorted([first.status_code, second.status_code]) == [201, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    assert loser.headers["content-type"] == "application/problem+json"
    assert loser.json()["errors"][0]["field"] == "slug"


async def test_many_racers_one_winner(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    """Ten callers, five slugs, each slug asked for twice in the same instant."""
    headers = [await make_user(f"user{i}") for i in range(10)]
    requests = [
        client.post("/api/v1/workspaces", json={"slug": f"ws-{i % 5}", "name": "x"}, headers=h)
        for i, h in enumerate(headers)
    ]
    responses = await asyncio.gather(*requests)
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 5 + [409] * 5, [r.text for r in responses]

    admin = await make_user("root", admin=True)
    listed = (await client.get("/api/v1/workspaces", headers=admin)).json()
    assert sorted(w["slug"] for w in listed["items"]) == [f"ws-{i}" for i in range(5)]
    # every workspace has exactly one owner: the winner of its race
    for i in range(5):
        members = (await client.get(f"/api/v1/workspaces/ws-{i}/members", headers=admin)).json()
        assert [m["role"] for m in members["items"]] == ["owner"]


async def test_two_owners_demoting_each_other_leave_one(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    a, b = await make_user("ann"), await make_user("ben")
    assert (await client.post("/api/v1/workspaces", json={"slug": "duo", "name": "Duo"}, headers=a)).status_code == 201
    r = await client.post("/api/v1/workspaces/duo/members", json={"username": "ben", "role": "owner"}, headers=a)
    assert r.status_code == 201
    results = await asyncio.gather(
        client.patch("/api/v1/workspaces/duo/members/ben", json={"role": "member"}, headers=a),
        client.patch("/api/v1/workspaces/duo/members/ann", json={"role": "member"}, headers=b),
    )
    codes = sorted(r.status_code for r in results)
    # One demotion wins. The other is refused: 409 (last owner) or 404/403 (its caller was just demoted).
    assert codes[0] == 200 and codes[1] in (403, 409), [r.text for r in results]
    root = await make_user("root", admin=True)
    members = (await client.get("/api/v1/workspaces/duo/members", headers=root)).json()["items"]
    assert [m["role"] for m in members].count("owner") == 1
