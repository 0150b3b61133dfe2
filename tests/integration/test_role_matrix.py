"""Who may do what: every workspace endpoint x every kind of caller, from one table."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import UserFactory

CALLERS = ("anonymous", "outsider", "member", "admin", "owner", "platform_admin")

# (method, path under /api/v1, body, expected status for each caller in CALLERS order)
MATRIX: list[tuple[str, str, dict[str, Any] | None, tuple[int, ...]]] = [
    ("GET", "/workspaces/lab", None, (401, 404, 200, 200, 200, 200)),
    ("PATCH", "/workspaces/lab", {"name": "Renamed"}, (401, 404, 403, 403, 200, 200)),
    ("PATCH", "/workspaces/lab", {"status": "suspended"}, (401, 404, 403, 403, 403, 200)),
    ("DELETE", "/workspaces/lab", None, (401, 404, 403, 403, 204, 204)),
    ("GET", "/workspaces/lab/members", None, (401, 404, 200, 200, 200, 200)),
    ("POST", "/workspaces/lab/members", {"username": "extra"}, (401, 404, 403, 201, 201, 201)),
    (
        "POST",
        "/workspaces/lab/members",
        {"username": "extra", "role": "admin"},
        (401, 404, 403, 201, 201, 201),
    ),
    (
        "POST",
        "/workspaces/lab/members",
        {"username": "extra", "role": "owner"},
        (401, 404, 403, 403, 201, 201),
    ),
    ("GET", "/workspaces/lab/members/target", None, (401, 404, 200, 200, 200, 200)),
    ("PATCH", "/workspaces/lab/members/target", {"role": "admin"}, (401, 404, 403, 200, 200, 200)),
    ("PATCH", "/workspaces/lab/members/target", {"role": "owner"}, (401, 404, 403, 403, 200, 200)),
    ("PATCH", "/workspaces/lab/members/owner", {"role": "member"}, (401, 404, 403, 403, 409, 409)),
    ("DELETE", "/workspaces/lab/members/target", None, (401, 404, 403, 204, 204, 204)),
    ("DELETE", "/workspaces/lab/members/owner", None, (401, 404, 403, 403, 409, 409)),
    ("GET", "/workspaces/lab/quota", None, (401, 404, 200, 200, 200, 200)),
    (
        "PUT",
        "/workspaces/lab/quota",
        {"gpus": 4, "gpus_by_type": {"a100": 2}},
        (401, 404, 403, 200, 200, 200),
    ),
    ("GET", "/workspaces/lab/audit", None, (401, 404, 403, 403, 200, 200)),
    # platform-level endpoints
    ("GET", "/users", None, (401, 403, 403, 403, 403, 200)),
    ("GET", "/users/extra", None, (401, 403, 403, 403, 403, 200)),
    ("GET", "/audit", None, (401, 403, 403, 403, 403, 200)),
    ("GET", "/workspaces", None, (401, 200, 200, 200, 200, 200)),
    ("GET", "/me", None, (401, 200, 200, 200, 200, 200)),
]

CASES = [
    pytest.param(method, path, body, caller, statuses[i], id=f"{method} {path} {body or ''} as {caller}")
    for method, path, body, statuses in MATRIX
    for i, caller in enumerate(CALLERS)
]


async def _world(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, dict[str, str]]:
    headers = {
        "anonymous": {},
        "platform_admin": await make_user("root", admin=True),
        "owner": await make_user("owner"),
        "admin": await make_user("wsadmin"),
        "member": await make_user("member"),
        "outsider": await make_user("outsider"),
    }
    await make_user("target")
    await make_user("extra")
    r = await client.post("/api/v1/workspaces", json={"slug": "lab", "name": "Lab"}, headers=headers["owner"])
    assert r.status_code == 201, r.text
    for user, role in (("wsadmin", "admin"), ("member", "member"), ("target", "member")):
        r = await client.post(
            "/api/v1/workspaces/lab/members", json={"username": user, "role": role}, headers=headers["owner"]
        )
        assert r.status_code == 201, r.text
    return headers


@pytest.mark.parametrize(("method", "path", "body", "caller", "expected"), CASES)
async def test_role_matrix(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    caller: str,
    expected: int,
) -> None:
    headers = await _world(client, make_user)
    r = await client.request(method, "/api/v1" + path, json=body, headers=headers[caller])
    assert r.status_code == expected, r.text
    if expected >= 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == expected
    if expected == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
