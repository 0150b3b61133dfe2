"""Request ids, metrics, probes and the OpenAPI document."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client


async def test_request_id_is_returned_and_kept_when_well_formed(client: httpx.AsyncClient) -> None:
    fresh = await client.get("/healthz")
    assert len(fresh.headers["x-request-id"]) == 32
    kept = await client.get("/healthz", headers={"X-Request-ID": "trace-42.abc"})
    assert kept.headers["x-request-id"] == "trace-42.abc"
    replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"


async def test_problem_bodies_carry_the_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/me", headers={"X-Request-ID": "req-1"})
    assert r.status_code == 401
    assert r.json()["request_id"] == "req-1"
    assert r.json()["instance"] == "/api/v1/me"


async def test_metrics_count_requests_by_route_template_and_status(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    owner = await make_user("owner")
    await client.post("/api/v1/workspaces", json={"slug": "metrics-ws", "name": "M"}, headers=owner)
    await client.get("/api/v1/workspaces/metrics-ws", headers=owner)
    await client.get("/api/v1/workspaces/absent", headers=owner)
    text = (await client.get("/metrics")).text
    assert 'path="/api/v1/workspaces/{ws}"' in text  # the template, not the slug: bounded cardinality
    assert "metrics-ws" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("remotegpu_requests_total{")]
    assert any('status_code="404"' in ln and "{ws}" in ln for ln in lines)
    assert "remotegpu_request_duration_seconds_bucket" in text


async def test_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}


async def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    database = Database(settings.database_url)
    app = create_app(settings, database=database)
    try:
        async with asgi_client(app) as c:
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert r.json()["status"] == "unavailable"
            assert (await c.get("/healthz")).status_code == 200
            # every other request that needs the database: a 503 to retry, not a 500
            headers = {"Authorization": "Bearer rgpu_" + "x" * 43}
            for path in ("/api/v1/me", "/api/v1/workspaces/lab/jobs"):
                down = await c.get(path, headers=headers)
                assert down.status_code == 503 and down.headers["retry-after"] == "5", down.text
                assert down.json()["type"] == "urn:remotegpu:problem:database-unavailable"
    finally:
        await database.dispose()


@pytest.mark.parametrize("path", ["/schema", "/schema/"])
async def test_interactive_api_pages(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]


async def test_openapi_documents_every_route_with_bearer_auth(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path in (
        "/api/v1/auth/tokens",
        "/api/v1/me",
        "/api/v1/users",
        "/api/v1/workspaces/{ws}",
        "/api/v1/workspaces/{ws}/members/{user}",
        "/api/v1/workspaces/{ws}/quota",
        "/api/v1/audit",
    ):
        assert path in spec["paths"], path
    assert "security" not in spec["paths"]["/api/v1/auth/tokens"]["post"]  # login needs no token
    assert spec["paths"]["/api/v1/auth/tokens"]["get"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/api/v1/workspaces/{ws}"]["get"]["security"] == [{"bearer": []}]


async def test_password_guessing_is_throttled(settings: Settings, clean_database: Database) -> None:
    throttled = msgspec.structs.replace(settings, login_attempts_per_minute=3)
    app = create_app(throttled, database=clean_database)
    async with asgi_client(app) as c:
        codes = [
            (await c.post("/api/v1/auth/tokens", json={"username": "x", "password": "guess"})).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        last = await c.post("/api/v1/auth/tokens", json={"username": "x", "password": "guess"})
        assert last.headers["content-type"] == "application/problem+json"
        assert "ratelimit-reset" in last.headers
        # other routes are not throttled
        assert [(await c.get("/healthz")).status_code for _ in range(5)] == [200] * 5
