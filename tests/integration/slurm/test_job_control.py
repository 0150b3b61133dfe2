"""Cancel, hold and release on the real cluster: the answer is Slurm's state now, requests are job events (who,
when), and an ended job is a 409 naming its state."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import UserFactory
from tests.integration.slurm.conftest import BOTH_BACKENDS, WS, Cluster, PosixUserFactory, make_team


@BOTH_BACKENDS
async def test_release_answers_slurms_state_and_events_record_requests(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    alice = team["alice"]
    r = await api.post(f"{WS}/lab/jobs", json={"name": "held", "command": ["sleep", "60"], "hold": True}, headers=alice)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    held = await api.post(f"{WS}/lab/jobs/{job_id}/hold", headers=alice)
    assert held.status_code == 202, held.text
    assert (held.json()["state"], held.json()["reason"]) == ("PENDING", "JobHeldUser")  # read from Slurm

    released = await api.post(f"{WS}/lab/jobs/{job_id}/release", headers=alice)
    assert released.status_code == 202, released.text
    assert released.json()["state"] in {"PENDING", "RUNNING"}
    assert released.json()["reason"] != "JobHeldUser"

    cancelled = await api.post(f"{WS}/lab/jobs/{job_id}/cancel", headers=team["owner"])
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["state"] in {"CANCELLED", "COMPLETING"}

    again = await api.post(f"{WS}/lab/jobs/{job_id}/cancel", headers=alice)
    assert again.status_code == 409, again.text
    assert again.json()["errors"][0]["field"] == "state" and "CANCELLED" in again.json()["detail"]
    assert again.headers["content-type"].startswith("application/problem+json")

    events = (await api.get(f"{WS}/lab/jobs/{job_id}/events", headers=alice)).json()
    requests = [(e["kind"], e["actor"]) for e in events if e["kind"] != "state"]
    names = team["names"]
    assert requests == [("hold", names["alice"]), ("release", names["alice"]), ("cancel", names["owner"])]
    assert events[-1]["kind"] == "state" and events[-1]["new_state"] == "CANCELLED"
    assert all(e["actor"] is None for e in events if e["kind"] == "state")
    await _let_go(slurm_cluster, names["alice"])


async def _let_go(cluster: Cluster, user: str) -> None:
    """Wait until Slurm has let go of the user's cancelled job before the account is removed (removing it at
    once preceded a slurmdbd 22.05 segfault: see test_sbatch_parity)."""
    for _ in range(60):
        if not cluster.run("squeue", "-h", "-u", user).strip():
            break
        await asyncio.sleep(1)
    await asyncio.sleep(3)  # its end record reaches slurmdbd
