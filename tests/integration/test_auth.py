"""Password login, bearer tokens, revocation, expiry, and the audit trail they leave."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import update

from gateway.accounts.models import ApiToken
from gateway.db.base import utcnow
from gateway.db.session import Database
from tests.conftest import UserFactory

TOKENS = "/api/v1/auth/tokens"


async def _login(client: httpx.AsyncClient, username: str, password: str, **extra: object) -> httpx.Response:
    return await client.post(TOKENS, json={"username": username, "password": password, **extra})


async def test_login_issues_a_working_token(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    await make_user("alice", password="alice-password")
    r = await _login(client, "alice", "alice-password", name="laptop", expires_in_days=2)
    assert r.status_code == 201
    body = r.json()
    assert body["token"].startswith(body["prefix"]) and body["name"] == "laptop" and body["expires_at"]
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["user"]["name"] == "alice"
    assert me.json()["user"]["last_login_at"] is not None


async def test_every_login_failure_looks_the_same(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    await make_user("alice", password="alice-password")
    await make_user("nopass")  # a token-only account
    await make_user("dora", password="dora-password")
    await client.patch("/api/v1/users/dora", json={"disabled": True}, headers=root)
    failures = [
        await _login(client, "alice", "wrong-password"),
        await _login(client, "nobody", "alice-password"),
        await _login(client, "nopass", "anything"),
        await _login(client, "dora", "dora-password"),
    ]
    assert {r.status_code for r in failures} == {401}
    assert len({r.json()["detail"] for r in failures}) == 1


async def test_tokens_are_listed_without_secrets_and_revoked(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    await make_user("alice", password="alice-password")
    first = (await _login(client, "alice", "alice-password", name="one")).json()
    second = (await _login(client, "alice", "alice-password", name="two")).json()
    h1, h2 = ({"Authorization": f"Bearer {t['token']}"} for t in (first, second))

    listed = (await client.get(TOKENS, headers=h1)).json()
    assert [(t["name"], t["current"]) for t in listed] == [("test", False), ("one", True), ("two", False)]
    assert all("token" not in t and first["token"] not in str(t) for t in listed)

    assert (await client.delete(f"{TOKENS}/{second['id']}", headers=h1)).status_code == 204
    assert (await client.get("/api/v1/me", headers=h2)).status_code == 401
    assert (await client.delete(f"{TOKENS}/{second['id']}", headers=h1)).status_code == 404
    assert (await client.delete(TOKENS, headers=h1)).status_code == 204  # log out
    assert (await client.get("/api/v1/me", headers=h1)).status_code == 401


async def test_nobody_revokes_someone_elses_token(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    await make_user("alice", password="alice-password")
    bob = await make_user("bob")
    token = (await _login(client, "alice", "alice-password")).json()
    assert (await client.delete(f"{TOKENS}/{token['id']}", headers=bob)).status_code == 404
    assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token['token']}"})).status_code == 200


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    alice = await make_user("alice")
    assert (await client.get("/api/v1/me", headers=alice)).status_code == 200
    async with clean_database.session() as session:
        await session.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    r = await client.get("/api/v1/me", headers=alice)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


async def test_disabling_or_deleting_a_user_ends_their_tokens(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    root, carl, dave = await make_user("root", admin=True), await make_user("carl"), await make_user("dave")
    assert (await client.patch("/api/v1/users/carl", json={"disabled": True}, headers=root)).status_code == 200
    assert (await client.get("/api/v1/me", headers=carl)).status_code == 401
    # re-enabling does not bring revoked tokens back
    await client.patch("/api/v1/users/carl", json={"disabled": False}, headers=root)
    assert (await client.get("/api/v1/me", headers=carl)).status_code == 401

    assert (await client.delete("/api/v1/users/dave", headers=root)).status_code == 204
    assert (await client.get("/api/v1/me", headers=dave)).status_code == 401
    assert (await client.post("/api/v1/users", json={"name": "dave"}, headers=root)).status_code == 201  # reusable


async def test_audit_records_who_did_what_from_which_request(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    created = await client.post(
        "/api/v1/users",
        json={"name": "erin", "password": "erin-password"},
        headers={**root, "X-Request-ID": "req-user"},
    )
    login = await client.post(
        TOKENS, json={"username": "erin", "password": "erin-password"}, headers={"X-Request-ID": "req-login"}
    )
    erin = {"Authorization": f"Bearer {login.json()['token']}"}
    ws = await client.post(
        "/api/v1/workspaces", json={"slug": "erin-ws", "name": "E"}, headers={**erin, "X-Request-ID": "req-ws"}
    )
    assert created.status_code == login.status_code == ws.status_code == 201

    trail = (await client.get("/api/v1/audit", params={"limit": 10}, headers=root)).json()["items"]
    by_request = {e["request_id"]: e for e in trail}
    assert (by_request["req-user"]["action"], by_request["req-user"]["actor"]) == ("user.create", "root")
    assert (by_request["req-login"]["action"], by_request["req-login"]["actor"]) == ("token.create", "erin")
    assert by_request["req-ws"]["action"] == "workspace.create" and by_request["req-ws"]["workspace"] == "erin-ws"
    assert all("erin-password" not in str(e) for e in trail)
    only_erin = (await client.get("/api/v1/audit", params={"actor": "erin"}, headers=root)).json()
    assert {e["actor"] for e in only_erin["items"]} == {"erin"} and only_erin["total"] == 2
