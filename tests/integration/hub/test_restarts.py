"""Running notebooks outlive what is around them: ten named servers of one user (ten environments, ten Slurm
jobs, on the cluster's partition whose jobs share CPUs) stay the same jobs, answering through the
proxy, across a hub restart, a gateway restart (the hub polls meanwhile and gets no answer) and a Slurm controller
restart (the gateway's state is ``unknown`` meanwhile). Neither gap is ever taken for a stopped server
(batchspawner #179/#187), and no job is cancelled."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.hub.conftest import Hub, login, make_workspace
from tests.integration.slurm.conftest import WS, Cluster, Gateway, PosixUserFactory
from tests.integration.slurm.test_poller import bring_back, stop_controller
from tests.waiting import eventually

pytestmark = pytest.mark.integration

SERVERS = tuple(f"s{i}" for i in range(10))
SHARED = "shared"
"""deploy/dev/slurm/up's partition whose jobs share CPUs: ten one-CPU sessions fit on 2 x 4 CPUs."""
POLL = 2
"""The hub's poll of each server (REMOTEGPU_HUB_POLL_SECONDS), so that a gap sees several polls."""


@pytest.fixture
def hub_env() -> dict[str, str]:
    return {"REMOTEGPU_HUB_POLL_SECONDS": str(POLL)}


@pytest.mark.serial  # stops slurmctld: alone, whatever runs beside it
def test_servers_survive_hub_gateway_and_controller_restarts(
    hub: Hub,
    gateway: Gateway,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
) -> None:
    name = posix_user()
    mine = {"Authorization": f"Bearer {gateway.token(name)}"}
    make_workspace(gateway, name, slurm_account)

    def servers() -> dict[str, Any]:
        found: dict[str, Any] = hub.api.get(f"/users/{name}").json()["servers"]
        return found

    def all_ready() -> bool:
        found = servers()
        return all(found.get(s, {}).get("ready") for s in SERVERS)

    def environments() -> dict[str, dict[str, Any]]:
        listed = httpx.get(f"{gateway.url}{WS}/hub/environments", headers=mine, timeout=30).json()["items"]
        return {e["name"]: e for e in listed}

    def lab_answers(server: str) -> bool:
        lab = httpx.get(
            f"{hub.url}/user/{name}/{server}/api/status",
            headers={"Authorization": f"token {hub.service_token}"},
            timeout=30,
        )
        return lab.status_code == 200

    def unchanged(why: str) -> None:
        assert all_ready(), f"{why}: {servers()}\n{hub.log_tail()}"
        now = {n: e["session"]["slurm_job_id"] for n, e in environments().items()}
        assert now == jobs, f"{why}: {now} != {jobs}"
        assert eventually(lambda: all(lab_answers(s) for s in SERVERS), 30), why

    with gateway.worker():
        with hub.client() as browser:  # the login makes the hub user and keeps their gateway token
            login(browser, name, f"{name}-password")
        options = {"workspace": "hub", "cpus": 1, "mem_mib": 256, "time_minutes": 30, "partition": SHARED}
        for server in SERVERS:
            started = hub.api.post(f"/users/{name}/servers/{server}", json=options)
            assert started.status_code in (201, 202), started.text
        eventually(all_ready, 300)
        jobs = {n: e["session"]["slurm_job_id"] for n, e in environments().items()}
        assert sorted(jobs) == sorted(SERVERS) and all(jobs.values()), jobs
        queue = slurm_cluster.run("squeue", "-h", "-u", name, "-o", "%i %T")
        assert sorted(queue.split()) == sorted([*(str(j) for j in jobs.values()), *["RUNNING"] * len(SERVERS)]), queue

        hub.restart()
        eventually(all_ready, 120)
        unchanged("after a hub restart")

        gateway.stop()
        time.sleep(3 * POLL)
        assert "gateway did not answer" in hub.log_tail(20000), hub.log_tail()
        assert all_ready(), f"the hub stopped servers while the gateway was down: {servers()}"
        gateway.start()
        unchanged("after a gateway restart")

        stop_controller(slurm_cluster)
        try:
            eventually(lambda: all(e["state"] == "unknown" for e in environments().values()), 30)
            time.sleep(3 * POLL)
            assert all_ready(), f"the hub stopped servers while the controller was down: {servers()}"
        finally:
            bring_back()
        eventually(lambda: all(e["state"] == "running" for e in environments().values()), 60)
        unchanged("after a controller restart")
        cancelled = slurm_cluster.run("sacct", "-n", "-X", "-u", name, "-s", "CA", "-o", "JobID")
        assert not cancelled.strip(), f"jobs cancelled: {cancelled}"

        for server in SERVERS:
            hub.api.delete(f"/users/{name}/servers/{server}")
        eventually(lambda: not slurm_cluster.run("squeue", "-h", "-u", name, "-o", "%i").strip(), 60)
