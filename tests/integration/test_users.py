"""Platform administration of user accounts."""

from __future__ import annotations

import httpx

from tests.conftest import UserFactory

USERS = "/api/v1/users"


async def test_create_then_login_with_the_password(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    body = {
        "name": "alice",
        "password": "correct horse",
        "email": "alice@lab.example",
        "user_type": "external",
        "region": "cn-north",
        "posix_name": "alice_p",
    }
    r = await client.post(USERS, json=body, headers=root)
    assert r.status_code == 201, r.text
    out = r.json()
    assert "password" not in out and "password_hash" not in out
    assert (out["posix_name"], out["user_type"], out["region"], out["is_admin"]) == (
        "alice_p",
        "external",
        "cn-north",
        False,
    )
    login = await client.post("/api/v1/auth/tokens", json={"username": "alice", "password": "correct horse"})
    assert login.status_code == 201


async def test_names_and_posix_accounts_are_unique(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    assert (await client.post(USERS, json={"name": "bob"}, headers=root)).status_code == 201
    dup = await client.post(USERS, json={"name": "bob"}, headers=root)
    assert dup.status_code == 409 and dup.json()["errors"][0]["field"] == "name"
    clash = await client.post(USERS, json={"name": "robert", "posix_name": "bob"}, headers=root)
    assert clash.status_code == 409 and clash.json()["errors"][0]["field"] == "posix_name"
    await client.post(USERS, json={"name": "carol"}, headers=root)
    moved = await client.patch(f"{USERS}/carol", json={"posix_name": "bob"}, headers=root)
    assert moved.status_code == 409 and moved.json()["errors"][0]["field"] == "posix_name"


async def test_list_filters_and_pages(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    for i in range(6):
        kind = "external" if i % 2 else "internal"
        await client.post(USERS, json={"name": f"u{i}", "user_type": kind, "email": f"u{i}@x.org"}, headers=root)
    everyone = (await client.get(USERS, headers=root)).json()
    assert everyone["total"] == 7
    ext = (await client.get(USERS, params={"user_type": "external"}, headers=root)).json()
    assert [u["name"] for u in ext["items"]] == ["u1", "u3", "u5"]
    admins = (await client.get(USERS, params={"is_admin": "true"}, headers=root)).json()
    assert [u["name"] for u in admins["items"]] == ["root"]
    by_mail = (await client.get(USERS, params={"q": "u4@"}, headers=root)).json()
    assert [u["name"] for u in by_mail["items"]] == ["u4"]
    page = (await client.get(USERS, params={"limit": 2, "offset": 2}, headers=root)).json()
    assert [u["name"] for u in page["items"]] == ["u1", "u2"] and page["total"] == 7  # root, u0, [u1, u2], ...


async def test_partial_update(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    await client.post(USERS, json={"name": "dave", "email": "d@x.org", "region": "eu"}, headers=root)
    r = await client.patch(f"{USERS}/dave", json={"email": None, "is_admin": True}, headers=root)
    assert r.status_code == 200
    out = r.json()
    assert out["email"] is None and out["is_admin"] is True and out["region"] == "eu"  # untouched
    trail = (await client.get("/api/v1/audit", params={"action": "user.update"}, headers=root)).json()
    assert trail["items"][0]["details"] == {"email": None, "is_admin": True}


async def test_admins_cannot_lock_themselves_out(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    for change in ({"is_admin": False}, {"disabled": True}):
        r = await client.patch(f"{USERS}/root", json=change, headers=root)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == next(iter(change))
    assert (await client.delete(f"{USERS}/root", headers=root)).status_code == 400


async def test_owner_cannot_be_deleted_until_ownership_moves(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root, erin = await make_user("root", admin=True), await make_user("erin")
    await make_user("frank")
    await client.post("/api/v1/workspaces", json={"slug": "erins", "name": "E"}, headers=erin)
    refused = await client.delete(f"{USERS}/erin", headers=root)
    assert refused.status_code == 409
    await client.post("/api/v1/workspaces/erins/members", json={"username": "frank", "role": "owner"}, headers=erin)
    await client.patch("/api/v1/workspaces/erins/members/erin", json={"role": "member"}, headers=erin)
    assert (await client.delete(f"{USERS}/erin", headers=root)).status_code == 204
    assert (await client.get(f"{USERS}/erin", headers=root)).status_code == 404
    assert (await client.get("/api/v1/me", headers=erin)).status_code == 401
    members = (await client.get("/api/v1/workspaces/erins/members", headers=root)).json()["items"]
    assert [m["username"] for m in members] == ["frank"]
