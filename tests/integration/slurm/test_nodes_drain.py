"""Drain and resume through the nodes API on the real cluster (n2), seen in ``sinfo`` and in the nodes list, with
both Slurm backends (slurmrestd 22.05 cannot change nodes: the REST backend goes through scontrol too). Serial:
a drained node would hold up other tests' jobs."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.audit.models import AuditEntry
from gateway.config import Settings
from gateway.db.session import Database
from slurm.client import SlurmClient
from tests.conftest import UserFactory, asgi_client
from tests.integration.slurm.conftest import BOTH_BACKENDS, Cluster

URL = "/api/v1/nodes"
pytestmark = pytest.mark.serial


def _sinfo(cluster: Cluster, node: str) -> tuple[str, str]:
    """(state, reason) as sinfo prints them for one node."""
    out = cluster.run("sinfo", "-h", "-N", "-n", node, "-o", "%T|%E").strip().splitlines()[0]
    state, _, reason = out.partition("|")
    return state.rstrip("*~#!%$@^-"), reason  # the suffixes: not responding, powered down, ...


@BOTH_BACKENDS
async def test_drain_and_resume_show_in_sinfo_and_the_list(
    settings: Settings,
    clean_database: Database,
    slurm_client: SlurmClient,
    slurm_cluster: Cluster,
    make_user: UserFactory,
) -> None:
    root, alice = await make_user("root", admin=True), await make_user("alice")
    async with asgi_client(create_app(settings, database=clean_database, slurm=slurm_client)) as api:
        r = await api.post(URL, json={"name": "n2", "address": "127.0.0.1"}, headers=root)
        assert r.status_code == 201, r.text
        assert (await api.post(f"{URL}/n2/drain", json={"reason": "x"}, headers=alice)).status_code == 403
        try:
            r = await api.post(f"{URL}/n2/drain", json={"reason": "gateway test: replacing GPU 3"}, headers=root)
            assert r.status_code == 200, r.text
            state, reason = await asyncio.to_thread(_sinfo, slurm_cluster, "n2")
            assert state in ("drained", "draining") and reason == "gateway test: replacing GPU 3"
            # the answer and the list read the snapshot taken right after the change
            assert "DRAIN" in r.json()["slurm"]["state"] and r.json()["slurm"]["reason"] == reason
            listed = (await api.get(URL, headers=root)).json()["items"]
            assert "DRAIN" in listed[0]["slurm"]["state"]
        finally:
            r = await api.post(f"{URL}/n2/resume", json={"reason": "fixed"}, headers=root)
        assert r.status_code == 200, r.text
        state, reason = await asyncio.to_thread(_sinfo, slurm_cluster, "n2")
        assert "drain" not in state and state in ("idle", "mixed", "allocated", "completing"), state
        assert "DRAIN" not in r.json()["slurm"]["state"]
        # resuming a node that takes work already: Slurm refuses, a 409 naming it
        again = await api.post(f"{URL}/n2/resume", headers=root)
        assert again.status_code == 409 and "n2" in again.json()["detail"], again.text
    async with clean_database.session() as session:
        actions = [
            a.action
            for a in (await session.scalars(select(AuditEntry).where(AuditEntry.target == "n2"))).all()
            if a.action != "node.register"
        ]
    assert actions == ["node.drain", "node.resume"]
