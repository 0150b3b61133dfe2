"""Workspace, member and quota behaviour beyond who-may-call-what (see test_role_matrix)."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client

WS = "/api/v1/workspaces"


async def _create(client: httpx.AsyncClient, headers: dict[str, str], slug: str, **extra: object) -> httpx.Response:
    return await client.post(WS, json={"slug": slug, "name": slug.title(), **extra}, headers=headers)


async def test_creator_becomes_owner_and_sees_it(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice = await make_user("alice")
    r = await _create(client, alice, "vision", description="CV group", currency="EUR")
    assert r.status_code == 201
    body = r.json()
    assert body["role"] == "owner" and body["slurm_account"] == "vision" and body["currency"] == "EUR"
    assert body["status"] == "active"
    me = (await client.get("/api/v1/me", headers=alice)).json()
    assert me["workspaces"] == [{"workspace": "vision", "role": "owner"}]


async def test_list_is_paginated_filtered_and_scoped(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice, bob, root = await make_user("alice"), await make_user("bob"), await make_user("root", admin=True)
    for i in range(7):
        assert (await _create(client, alice, f"alpha-{i}")).status_code == 201
    assert (await _create(client, bob, "beta")).status_code == 201

    page = (await client.get(WS, params={"limit": 3, "offset": 3}, headers=alice)).json()
    assert page["total"] == 7 and page["limit"] == 3 and page["offset"] == 3
    assert [w["slug"] for w in page["items"]] == ["alpha-3", "alpha-4", "alpha-5"]

    assert [w["slug"] for w in (await client.get(WS, headers=bob)).json()["items"]] == ["beta"]
    everything = (await client.get(WS, params={"limit": 500}, headers=root)).json()
    assert everything["total"] == 8 and all(w["role"] is None for w in everything["items"])
    assert (await client.get(WS, params={"mine": "true"}, headers=root)).json()["total"] == 0
    assert (await client.get(WS, params={"q": "bet"}, headers=root)).json()["total"] == 1

    await client.patch(f"{WS}/beta", json={"status": "suspended"}, headers=root)
    suspended = (await client.get(WS, params={"status": "suspended"}, headers=root)).json()
    assert [w["slug"] for w in suspended["items"]] == ["beta"]


async def test_soft_delete_frees_the_slug(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice = await make_user("alice")
    assert (await _create(client, alice, "temp")).status_code == 201
    assert (await client.delete(f"{WS}/temp", headers=alice)).status_code == 204
    assert (await client.get(f"{WS}/temp", headers=alice)).status_code == 404
    assert (await client.get("/api/v1/me", headers=alice)).json()["workspaces"] == []
    assert (await _create(client, alice, "temp")).status_code == 201


async def test_only_admins_choose_slurm_account_or_owner(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice, root = await make_user("alice"), await make_user("root", admin=True)
    await make_user("carol")
    for field, value in (("slurm_account", "acct_x"), ("owner", "carol")):
        r = await _create(client, alice, "mine", **{field: value})
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == field
    r = await _create(client, root, "for-carol", owner="carol", slurm_account="acct_carol")
    assert r.status_code == 201 and r.json()["slurm_account"] == "acct_carol" and r.json()["role"] is None
    members = (await client.get(f"{WS}/for-carol/members", headers=root)).json()["items"]
    assert [(m["username"], m["role"]) for m in members] == [("carol", "owner")]
    clash = await _create(client, root, "other", slurm_account="acct_carol")
    assert clash.status_code == 409 and clash.json()["errors"][0]["field"] == "slurm_account"
    assert (await _create(client, root, "ghost", owner="nobody")).status_code == 404


async def test_admin_only_workspace_creation_setting(
    settings: Settings, clean_database: Database, make_user: UserFactory
) -> None:
    locked = msgspec.structs.replace(settings, workspace_creation="admin")
    app = create_app(locked, database=clean_database)
    alice, root = await make_user("alice"), await make_user("root", admin=True)
    async with asgi_client(app) as c:
        assert (await _create(c, alice, "nope")).status_code == 403
        assert (await _create(c, root, "yes")).status_code == 201


async def test_members_lifecycle(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    owner, bob = await make_user("owner"), await make_user("bob")
    await make_user("carol")
    await _create(client, owner, "team")
    assert (await client.post(f"{WS}/team/members", json={"username": "bob"}, headers=owner)).status_code == 201
    dup = await client.post(f"{WS}/team/members", json={"username": "bob"}, headers=owner)
    assert dup.status_code == 409 and dup.json()["errors"][0]["field"] == "username"
    ghost = await client.post(f"{WS}/team/members", json={"username": "ghost"}, headers=owner)
    assert ghost.status_code == 404 and ghost.json()["errors"][0]["field"] == "username"

    # bob sees the workspace now, and can leave it himself
    assert (await client.get(f"{WS}/team", headers=bob)).json()["role"] == "member"
    assert (await client.delete(f"{WS}/team/members/bob", headers=bob)).status_code == 204
    assert (await client.get(f"{WS}/team", headers=bob)).status_code == 404
    # and can be added again after leaving
    assert (await client.post(f"{WS}/team/members", json={"username": "bob"}, headers=owner)).status_code == 201

    # ownership handover: make carol owner, then the first owner may step down
    await client.post(f"{WS}/team/members", json={"username": "carol", "role": "owner"}, headers=owner)
    r = await client.patch(f"{WS}/team/members/owner", json={"role": "member"}, headers=owner)
    assert r.status_code == 200 and r.json()["role"] == "member"
    roles = {m["username"]: m["role"] for m in (await client.get(f"{WS}/team/members", headers=bob)).json()["items"]}
    assert roles == {"bob": "member", "carol": "owner", "owner": "member"}
    only_owners = (await client.get(f"{WS}/team/members", params={"role": "owner"}, headers=bob)).json()
    assert [m["username"] for m in only_owners["items"]] == ["carol"]


async def test_quota_roundtrip_and_validation(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    owner = await make_user("owner")
    assert (await _create(client, owner, "quo")).status_code == 201
    empty = (await client.get(f"{WS}/quo/quota", headers=owner)).json()
    assert empty["gpus"] is None and empty["gpus_by_type"] == {} and empty["updated_at"] is None
    quota = {
        "gpus": 8,
        "gpus_by_type": {"h100": 2, "a100": 6},
        "cpus": 256,
        "memory_bytes": 2**40,
        "storage_bytes": 5 * 2**40,
        "concurrent_environments": 4,
    }
    r = await client.put(f"{WS}/quo/quota", json=quota, headers=owner)
    assert r.status_code == 200
    got = (await client.get(f"{WS}/quo/quota", headers=owner)).json()
    assert {k: got[k] for k in quota} == {**quota, "gpus_by_type": {"a100": 6, "h100": 2}}
    over = await client.put(f"{WS}/quo/quota", json={"gpus": 2, "gpus_by_type": {"a100": 3}}, headers=owner)
    assert over.status_code == 400 and over.json()["errors"][0]["field"] == "gpus_by_type"
    # PUT replaces: omitted limits become unlimited
    await client.put(f"{WS}/quo/quota", json={"cpus": 8}, headers=owner)
    got = (await client.get(f"{WS}/quo/quota", headers=owner)).json()
    assert got["cpus"] == 8 and got["gpus"] is None and got["gpus_by_type"] == {}


@pytest.mark.parametrize("role", ["member", "admin"])
async def test_workspace_audit_trail_for_owners(client: httpx.AsyncClient, make_user: UserFactory, role: str) -> None:
    owner, other = await make_user("owner"), await make_user("other")
    await _create(client, owner, "audited")
    await client.post(f"{WS}/audited/members", json={"username": "other", "role": role}, headers=owner)
    await client.put(
        f"{WS}/audited/quota",
        json={"gpus": 1},
        headers=owner,
    )
    trail = (await client.get(f"{WS}/audited/audit", headers=owner)).json()
    assert [e["action"] for e in trail["items"]] == ["quota.set", "member.add", "workspace.create"]
    assert all(e["workspace"] == "audited" and e["actor"] == "owner" and e["request_id"] for e in trail["items"])
    assert trail["items"][1]["details"] == {"role": role}
    only = (await client.get(f"{WS}/audited/audit", params={"action": "member."}, headers=owner)).json()
    assert only["total"] == 1
    assert (await client.get(f"{WS}/audited/audit", headers=other)).status_code == 403
