"""HTTP-level defects found by testing the running stack (issue 8, item 9), each pinned by a regression test."""

from __future__ import annotations

import asyncio
import logging

import httpx
import msgspec
import pytest
import structlog.testing

from gateway.access_cache import ACCESS_CACHE
from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client

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


def _count(metrics: str, method: str, path: str, status: int) -> float:
    label = f'remotegpu_requests_total{{method="{method}",path="{path}",status_code="{status}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(label))


async def test_throttled_logins_are_counted_as_429_and_carry_a_request_id(
    settings: Settings, clean_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = create_app(msgspec.structs.replace(settings, login_attempts_per_minute=1), database=clean_database)
    async with asgi_client(app) as c:
        before = (await c.get("/metrics")).text
        login = {"username": "nobody", "password": "guess-guess"}
        assert (await c.post("/api/v1/auth/tokens", json=login)).status_code == 401
        with structlog.testing.capture_logs() as logged:
            throttled = await c.post("/api/v1/auth/tokens", json=login, headers={"X-Request-ID": "throttled-1"})
        assert throttled.status_code == 429
        assert throttled.headers["x-request-id"] == "throttled-1"
        assert throttled.json()["request_id"] == "throttled-1"
        after = (await c.get("/metrics")).text
    assert _count(after, "POST", "/api/v1/auth/tokens", 429) == _count(before, "POST", "/api/v1/auth/tokens", 429) + 1
    assert _count(after, "POST", "/api/v1/auth/tokens", 500) == _count(before, "POST", "/api/v1/auth/tokens", 500)
    assert [entry["status"] for entry in logged if entry["event"] == "request"] == [429]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/path", 404),
        ("DELETE", "/healthz", 405),
        ("PUT", "/api/v1/workspaces", 405),
    ],
)
async def test_router_answers_carry_a_request_id_and_are_counted(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    r = await client.request(method, path, headers={"X-Request-ID": f"router-{status}"})
    assert r.status_code == status
    assert r.headers["x-request-id"] == f"router-{status}"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["request_id"] == f"router-{status}"
    metrics = (await client.get("/metrics")).text
    assert _count(metrics, method, "<unmatched>", status) >= 1  # no route matched: no template to name


async def test_a_slurm_id_too_large_for_the_database_is_a_400(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    """Found by schemathesis: slurm_job_id=33417548403853343326208 reached SQLite and overflowed (500)."""
    owner = await make_user("owner")
    assert (await client.post("/api/v1/workspaces", json={"slug": "big-ids", "name": "B"}, headers=owner)).is_success
    r = await client.get("/api/v1/workspaces/big-ids/jobs", params={"slurm_job_id": 2**75}, headers=owner)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "slurm_job_id", r.text
    assert (
        await client.get("/api/v1/workspaces/big-ids/jobs", params={"slurm_job_id": 2**31 - 1}, headers=owner)
    ).is_success
