"""Store health against a real SeaweedFS store that is killed and comes back: the check says down with the error,
the metrics and the audit trail follow each change (and only changes), and the store is ok again once it returns."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client
from tests.s3 import Stores

SOURCES = "/api/v1/storage-sources"


@pytest.fixture
async def api(settings: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    keyed = msgspec.structs.replace(settings, secret_keys=base64.b64encode(os.urandom(32)).decode())
    async with asgi_client(create_app(keyed, database=clean_database)) as c:
        yield c


async def _gauge(api: httpx.AsyncClient, name: str) -> float | None:
    text = (await api.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "remotegpu_storage_source_health" and sample.labels.get("source") == name:
                return sample.value
    return None


async def test_a_store_killed_is_down_with_its_error_and_ok_again_when_back(
    api: httpx.AsyncClient, make_user: UserFactory, s3_stores: Stores, s3_bucket: str
) -> None:
    root = await make_user("root", admin=True)
    store = s3_stores.a
    name = f"a-{s3_bucket[-8:]}"  # the metrics are the process's: a name of this test's own
    body = {
        "name": name, "type": "generic", "endpoint": store.endpoint, "bucket": s3_bucket,
        "access_key": store.access_key, "secret_key": store.secret_key,
    }  # fmt: skip
    assert (await api.post(SOURCES, json=body, headers=root)).status_code == 201
    check = f"{SOURCES}/{name}/check"
    first = (await api.post(check, headers=root)).json()
    assert first["health"] in {"ok", "degraded"} and first["latency_ms"] is not None, first
    assert (await _gauge(api, name)) in {1.0, 0.5}

    store.kill()
    try:
        down = (await api.post(check, headers=root)).json()
        assert down["health"] == "down" and down["last_error"], down
        assert (await _gauge(api, name)) == 0.0
        again = (await api.post(check, headers=root)).json()  # still down: no new audit entry
        assert again["health"] == "down"
    finally:
        store.restart()
    back = (await api.post(check, headers=root)).json()
    assert back["health"] in {"ok", "degraded"} and back["last_error"] is None, back

    audit = (await api.get("/api/v1/audit", params={"action": "storage_source.health"}, headers=root)).json()
    changes = [(a["target"], a["details"]["from"], a["details"]["to"]) for a in reversed(audit["items"])]
    assert [(t, f, to) for t, f, to in changes if to == "down" or f == "down"] == [
        (name, first["health"], "down"),
        (name, "down", back["health"]),
    ], changes
    assert all(a["actor"] == "health-check" for a in audit["items"]), audit
