"""Billing of an environment on the real cluster, through the real worker: charged minute by minute while it
runs, nothing more once it is stopped (a file of its own: pytest-xdist spreads test files over its workers)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.slurm.conftest import WS
from tests.integration.slurm.test_billing_cluster import PRICES
from tests.integration.slurm.test_environments import Team, team
from tests.waiting import eventually

pytestmark = pytest.mark.integration
__all__ = ["team"]  # the environments' team fixture, used here too


def _balance(team: Team) -> Decimal:
    return Decimal(team.http.get(f"{WS}/lab/billing/balance", headers=team.headers["owner"]).json()["balance"])


def _records(team: Team) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = team.http.get(f"{WS}/lab/billing/records", headers=team.headers["owner"]).json()[
        "items"
    ]
    return items


def test_a_running_environment_is_charged_minute_by_minute_and_stopping_it_stops_the_charge(team: Team) -> None:
    gateway = team.gateway
    for resource, amount in PRICES.items():
        r = team.http.post("/api/v1/prices", json={"resource": resource, "amount": amount, "currency": "CNY"},
                           headers=team.admin)  # fmt: skip
        assert r.status_code == 201, r.text
    gateway.env["REMOTEGPU_BILLING_INTERVAL_SECONDS"] = "3"
    with gateway.worker():
        r = team.env("member", method="POST", name="dev", services=["ssh"], gpus=1, gpu_type="a100", time_minutes=10)
        assert r.status_code == 201, r.text
        env = r.json()
        team.wait("member", env["id"], {"running"})
        first = eventually(lambda: _balance(team) < 0 and _balance(team), within=60)
        second = eventually(lambda: _balance(team) < first and _balance(team), within=90)
        assert second < first < 0
        r = team.env("member", f"/{env['id']}/stop", method="POST")
        assert r.status_code == 202, r.text
        team.wait("member", env["id"], {"stopped"})
        settled = eventually(lambda: [r for r in _records(team) if r["final"]], within=60)
        assert settled[0]["resource_type"] == "environment" and settled[0]["resource_id"] == env["id"]
        assert settled[0]["gpus"] == 1 and settled[0]["gpu_type"] == "a100"
        after = _balance(team)
        time.sleep(8)  # two more ingests: a stopped environment costs nothing more
        assert _balance(team) == after == -Decimal(settled[0]["amount"])
