"""Bad input of every kind gets a 4xx problem+json naming the field; nothing reaches a 500."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import UserFactory

V1 = "/api/v1"
HOSTILE_NAMES = [
    "",
    "A",
    "UPPER",
    "with space",
    "../etc",
    "a/b",
    ";rm -rf /",
    "$(id)",
    "`id`",
    "naïve",
    "x" * 33,
    "tab\tname",
    "new\nline",
    "-leading",
    "a'b",
    'a"b',
    "null\x00byte",
]


async def _world(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, str]:
    root = await make_user("root", admin=True)
    await make_user("bob")
    assert (await client.post(f"{V1}/workspaces", json={"slug": "lab", "name": "Lab"}, headers=root)).is_success
    assert (await client.post(f"{V1}/workspaces/lab/members", json={"username": "bob"}, headers=root)).is_success
    return root


def _assert_problem(r: httpx.Response, status: int, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:remotegpu:problem:")
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body


# (method, path, body, expected status, field named)
BODY_CASES: list[tuple[str, str, Any, int, str | None]] = [
    ("POST", "/auth/tokens", {"username": "bob"}, 400, "password"),
    ("POST", "/auth/tokens", {"username": 1, "password": "x"}, 400, "username"),
    ("POST", "/auth/tokens", {"username": "bob", "password": "x", "expires_in_days": 0}, 400, "expires_in_days"),
    ("POST", "/auth/tokens", {"username": "bob", "password": "x", "name": "bad\nname"}, 400, "name"),
    ("POST", "/users", {"name": "ok", "extra": True}, 400, "extra"),
    ("POST", "/users", {"name": "ok", "password": "short"}, 400, "password"),
    ("POST", "/users", {"name": "ok", "email": "not-an-email"}, 400, "email"),
    ("POST", "/users", {"name": "ok", "user_type": "robot"}, 400, "user_type"),
    ("POST", "/users", {"name": "ok", "is_admin": "yes"}, 400, "is_admin"),
    ("POST", "/users", {"name": "ok", "region": "Mars Base"}, 400, "region"),
    ("PATCH", "/users/bob", {"disabled": "no"}, 400, "disabled"),
    ("PATCH", "/users/bob", {"posix_name": "Bad Name"}, 400, "posix_name"),
    ("PATCH", "/users/bob", {"name": "renamed"}, 400, "name"),
    ("POST", "/workspaces", {"name": "x"}, 400, "slug"),
    ("POST", "/workspaces", {"slug": "ok-slug"}, 400, "name"),
    ("POST", "/workspaces", {"slug": "ok-slug", "name": ""}, 400, "name"),
    ("POST", "/workspaces", {"slug": "ok-slug", "name": "x" * 129}, 400, "name"),
    ("POST", "/workspaces", {"slug": "ok-slug", "name": "line\nbreak"}, 400, "name"),
    ("POST", "/workspaces", {"slug": "ok-slug", "name": "x", "currency": "euro"}, 400, "currency"),
    ("POST", "/workspaces", {"slug": "ok-slug", "name": "x", "description": "d" * 5000}, 400, "description"),
    ("PATCH", "/workspaces/lab", {"status": "deleted"}, 400, "status"),
    ("PATCH", "/workspaces/lab", {"slug": "renamed"}, 400, "slug"),
    ("POST", "/workspaces/lab/members", {"username": "bob", "role": "king"}, 400, "role"),
    ("POST", "/workspaces/lab/members", {}, 400, "username"),
    ("PATCH", "/workspaces/lab/members/bob", {"role": None}, 400, "role"),
    ("PUT", "/workspaces/lab/quota", {"gpus": -1}, 400, "gpus"),
    ("PUT", "/workspaces/lab/quota", {"cpus": 10**12}, 400, "cpus"),
    ("PUT", "/workspaces/lab/quota", {"memory_bytes": 2**63}, 400, "memory_bytes"),
    ("PUT", "/workspaces/lab/quota", {"gpus_by_type": {"A100!": 1}}, 400, "gpus_by_type"),
    ("PUT", "/workspaces/lab/quota", {"gpus_by_type": {"a100": -2}}, 400, "gpus_by_type"),
    ("PUT", "/workspaces/lab/quota", {"gpus_by_type": [1, 2]}, 400, "gpus_by_type"),
    ("PUT", "/workspaces/lab/quota", {"concurrent_environments": 1.5}, 400, "concurrent_environments"),
]
BODY_CASES += [("POST", "/users", {"name": bad}, 400, "name") for bad in HOSTILE_NAMES]
BODY_CASES += [("POST", "/workspaces", {"slug": bad, "name": "x"}, 400, "slug") for bad in HOSTILE_NAMES]
BODY_CASES += [("POST", "/workspaces/lab/members", {"username": bad}, 400, "username") for bad in HOSTILE_NAMES]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), BODY_CASES)
async def test_invalid_bodies(
    client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str, body: Any, status: int, field: str | None
) -> None:
    root = await _world(client, make_user)
    _assert_problem(await client.request(method, V1 + path, json=body, headers=root), status, field)


WRITE_ENDPOINTS = [
    ("POST", "/users"),
    ("PATCH", "/users/bob"),
    ("POST", "/workspaces"),
    ("PATCH", "/workspaces/lab"),
    ("POST", "/workspaces/lab/members"),
    ("PATCH", "/workspaces/lab/members/bob"),
    ("PUT", "/workspaces/lab/quota"),
    ("POST", "/auth/tokens"),
]
RAW_BODIES = [b"{not json", b"[1, 2]", b'"a string"', b"null", b"", b"\xff\xfe"]


@pytest.mark.parametrize(("method", "path"), WRITE_ENDPOINTS)
@pytest.mark.parametrize("raw", RAW_BODIES)
async def test_malformed_json(
    client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str, raw: bytes
) -> None:
    root = await _world(client, make_user)
    r = await client.request(method, V1 + path, content=raw, headers={**root, "content-type": "application/json"})
    _assert_problem(r, 400)


@pytest.mark.parametrize(("method", "path"), WRITE_ENDPOINTS)
async def test_oversized_body(client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str) -> None:
    root = await _world(client, make_user)
    big = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = await client.request(method, V1 + path, content=big, headers={**root, "content-type": "application/json"})
    _assert_problem(r, 413)


LISTS = ["/users", "/workspaces", "/workspaces/lab/members", "/audit", "/workspaces/lab/audit"]
BAD_QUERIES = [
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "ten"}, "offset"),
]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(("params", "field"), BAD_QUERIES)
async def test_bad_pagination(
    client: httpx.AsyncClient, make_user: UserFactory, path: str, params: dict[str, str], field: str
) -> None:
    root = await _world(client, make_user)
    _assert_problem(await client.get(V1 + path, params=params, headers=root), 400, field)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/users", {"user_type": "robot"}, "user_type"),
        ("/users", {"is_admin": "maybe"}, "is_admin"),
        ("/workspaces", {"status": "gone"}, "status"),
        ("/workspaces/lab/members", {"role": "king"}, "role"),
        ("/audit", {"since": "yesterday"}, "since"),
        ("/audit", {"workspace": "Bad Slug"}, "workspace"),
        ("/users", {"q": "x" * 65}, "q"),
    ],
)
async def test_bad_filters(
    client: httpx.AsyncClient, make_user: UserFactory, path: str, params: dict[str, str], field: str
) -> None:
    root = await _world(client, make_user)
    _assert_problem(await client.get(V1 + path, params=params, headers=root), 400, field)


@pytest.mark.parametrize(
    "path",
    [
        "/workspaces/Bad..Slug",
        "/users/ROOT",
        "/workspaces/lab/members/Not%20A%20User",
        "/workspaces/" + "a" * 40,
        "/auth/tokens/notanumber",
    ],
)
async def test_bad_path_parameters(client: httpx.AsyncClient, make_user: UserFactory, path: str) -> None:
    root = await _world(client, make_user)
    method = "DELETE" if path.startswith("/auth") else "GET"
    r = await client.request(method, V1 + path, headers=root)
    assert 400 <= r.status_code < 500
    _assert_problem(r, r.status_code)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer rgpu_garbage",
        "Bearer " + "x" * 5000,
        "bearer rgpu_" + "A" * 43,
        "Token abc",
    ],
)
async def test_malformed_authorization(client: httpx.AsyncClient, header: str) -> None:
    _assert_problem(await client.get(f"{V1}/me", headers={"Authorization": header}), 401)


_FUZZ_USERS = itertools.count()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: JSON | st.text(max_size=40) for k in ("slug", "name", "description", "currency", "owner", "slurm_account")
    },
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON | FIELDS)
async def test_no_body_makes_a_500(client: httpx.AsyncClient, make_user: UserFactory, body: Any) -> None:
    headers = await make_user(f"fuzz{next(_FUZZ_USERS)}")  # the database is not reset between examples
    r = await client.post(f"{V1}/workspaces", json=body, headers=headers)
    assert r.status_code < 500, r.text
    assert r.status_code in (201, 400, 403, 404, 409), r.text
