"""The nodes API on both databases, without Salt or Slurm: admin only, registration with a one-time token, the
list merged with the cluster snapshot, bad input named, runs queued once per node, removal; the bootstrap
exchange refusing expired, replayed, tampered, wrong-node and unknown tokens with 401 and an audit entry each.
With the real Salt stack: tests/integration/salt/test_nodes_salt.py; drain and resume: tests/integration/slurm/
test_nodes_drain.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import msgspec
import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.audit.models import AuditEntry
from gateway.cluster.models import ClusterSnapshot
from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.nodes import runs, tokens
from gateway.nodes.models import BootstrapToken, Node, ProvisionRun
from slurm.records import Node as SlurmNode
from slurm.records import NodeGpus
from tests.conftest import UserFactory, asgi_client

URL = "/api/v1/nodes"
SECRET = "node-bootstrap-secret-for-tests"
BODY = {"name": "gpu-node-01", "address": "10.0.3.17", "region": "dc-1", "gpus": {"type": "a100", "count": 2}}


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    # a salt-api where nothing listens: tokens are issued (there is one) and an exchange fails at Salt
    return msgspec.structs.replace(
        settings,
        node_bootstrap_secret=SECRET,
        public_url="https://gpu.example.org",
        salt_api_url="http://127.0.0.1:9",
        salt_api_password="unused",
        salt_api_timeout_seconds=2,
    )


@pytest.fixture
async def api(keyed: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(keyed, database=clean_database)) as c:
        yield c


async def _audit(database: Database, action: str) -> list[AuditEntry]:
    async with database.session() as session:
        return list((await session.scalars(select(AuditEntry).where(AuditEntry.action == action))).all())


async def test_admins_register_list_and_remove_nodes(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    root, alice = await make_user("root", admin=True), await make_user("alice")
    assert (await api.post(URL, json=BODY)).status_code == 401
    assert (await api.post(URL, json=BODY, headers=alice)).status_code == 403
    assert (await api.get(URL, headers=alice)).status_code == 403

    r = await api.post(URL, json=BODY, headers=root)
    assert r.status_code == 201, r.text
    made = r.json()
    node, boot = made["node"], made["bootstrap"]
    assert node["name"] == "gpu-node-01" and node["gpus"] == {"type": "a100", "count": 2, "detect": False}
    assert node["key_state"] == "registered" and node["slurm"] is None and node["last_run"] is None
    assert boot["token"].startswith("gpu-node-01.") and boot["token"] in boot["command"]
    assert boot["command"].startswith("curl -fsS https://gpu.example.org/api/v1/nodes/bootstrap.sh | env ")
    assert "?" not in boot["command"].split("|")[0]  # no secret in the URL
    assert (await api.post(URL, json=BODY, headers=root)).status_code == 409
    detect = await api.post(URL, json={"name": "n2", "address": "n2.cluster", "gpus": "detect"}, headers=root)
    assert detect.status_code == 201 and detect.json()["node"]["gpus"]["detect"] is True

    before = (await api.get(URL, headers=root)).json()  # (the list is kept while what it is made of stays)
    assert [n["slurm"] for n in before["items"]] == [None, None] and before["stale"] is True
    # the poller's snapshot: Slurm's view beside each node (no Slurm call here)
    slurm = [
        SlurmNode(name="gpu-node-01", state="IDLE+DRAIN", reason="replacing a fan", partitions=("gpu",), cpus=64,
                  gpus=(NodeGpus(type="a100", total=2, allocated=1),)),
        SlurmNode(name="other", state="IDLE"),
    ]  # fmt: skip
    async with clean_database.session() as session:
        now = utcnow()
        session.add(ClusterSnapshot(singleton=1, cluster="remotegpu", updated_at=now, checked_at=now,
                                    nodes=msgspec.to_builtins(slurm), partitions=[]))  # fmt: skip
        await session.commit()
    listed = (await api.get(URL, headers=root)).json()
    assert [n["name"] for n in listed["items"]] == ["gpu-node-01", "n2"] and listed["stale"] is False
    first = listed["items"][0]["slurm"]
    assert first["state"] == "IDLE+DRAIN" and first["reason"] == "replacing a fan" and first["cpus"] == 64
    assert first["gpus"] == [{"type": "a100", "total": 2, "allocated": 1}]
    assert listed["items"][1]["slurm"] is None
    one = (await api.get(f"{URL}/gpu-node-01", headers=root)).json()
    assert one["slurm"]["state"] == "IDLE+DRAIN" and BODY["address"] == one["address"]
    assert (await api.get(f"{URL}/nope", headers=root)).status_code == 404

    assert (await api.delete(f"{URL}/n2", headers=alice)).status_code == 403
    assert (await api.delete(f"{URL}/n2", headers=root)).status_code == 204
    assert (await api.get(f"{URL}/n2", headers=root)).status_code == 404
    assert [n["name"] for n in (await api.get(URL, headers=root)).json()["items"]] == ["gpu-node-01"]
    assert (await api.delete(f"{URL}/n2", headers=root)).status_code == 404
    assert [a.target for a in await _audit(clean_database, "node.register")] == ["gpu-node-01", "n2"]
    assert all(SECRET not in str(a.details) for a in await _audit(clean_database, "node.register"))
    assert [a.target for a in await _audit(clean_database, "node.remove")] == ["n2"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "../etc"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": "runs"}, "name"),
        ({"address": "a b"}, "address"),
        ({"address": "host;rm -rf /"}, "address"),
        ({"region": "Region 1"}, "region"),
        ({"gpus": {"type": "a100", "count": 0}}, "gpus.count"),
        ({"gpus": {"type": "A 100", "count": 1}}, "gpus.type"),
        ({"gpus": "auto"}, "gpus"),
        ({"gpus": {"type": "a100", "count": 1, "extra": 1}}, "gpus.extra"),
        ({"shell": "x"}, "shell"),
    ],
)
async def test_bad_registrations_are_400_naming_the_field(
    api: httpx.AsyncClient, make_user: UserFactory, change: dict[str, object], field: str
) -> None:
    root = await make_user("root", admin=True)
    r = await api.post(URL, json={**BODY, **change}, headers=root)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


async def test_provision_runs_are_queued_once_per_node(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    root = await make_user("root", admin=True)
    for name in ("n1", "n2"):
        assert (await api.post(URL, json={**BODY, "name": name}, headers=root)).status_code == 201
    assert all(n["last_run"] is None for n in (await api.get(URL, headers=root)).json()["items"])
    r = await api.post(f"{URL}/n1/provision", json={"states": ["remotegpu.munge", "remotegpu.slurmd"]}, headers=root)
    assert r.status_code == 201, r.text
    run = r.json()
    assert (
        run["status"] == "queued" and run["test"] is True and run["states"] == ["remotegpu.munge", "remotegpu.slurmd"]
    )
    assert [(t["node"], t["status"], t["jid"]) for t in run["targets"]] == [("n1", "queued", None)]
    busy = await api.post(f"{URL}/provision", json={"apply": True}, headers=root)  # every node: n1 has one open
    assert busy.status_code == 409 and busy.json()["errors"][0]["field"] == "nodes"
    other = await api.post(f"{URL}/provision", json={"nodes": ["n2"], "apply": True, "states": ["remotegpu",
                                                                                                 "remotegpu.gpu"]},
                           headers=root)  # fmt: skip
    assert other.status_code == 201 and other.json()["test"] is False and other.json()["states"] == ["remotegpu"]
    assert (await api.get(f"{URL}/runs/{run['id']}", headers=root)).json()["id"] == run["id"]
    assert [x["id"] for x in (await api.get(f"{URL}/runs", headers=root)).json()] == [other.json()["id"], run["id"]]
    assert [x["id"] for x in (await api.get(f"{URL}/n2/runs", headers=root)).json()] == [other.json()["id"]]
    assert (await api.get(f"{URL}/runs/{run['id']}/results", headers=root)).json() == []
    assert (await api.get(f"{URL}/runs/999999", headers=root)).status_code == 404
    listed = {n["name"]: n["last_run"] for n in (await api.get(URL, headers=root)).json()["items"]}
    assert listed["n1"]["id"] == run["id"] and listed["n1"]["status"] == "queued"
    # a node with an open run is not removed
    assert (await api.delete(f"{URL}/n1", headers=root)).status_code == 409
    for body, field in [
        ({"states": ["remotegpu.rm"]}, "states"),
        ({"states": []}, "states"),
        ({"apply": "yes"}, "apply"),
        ({"nodes": ["n1"]}, "nodes"),
    ]:
        bad = await api.post(f"{URL}/n2/provision", json=body, headers=root)
        fields = [e["field"] for e in bad.json()["errors"]]
        assert bad.status_code == 400 and any(f.startswith(field) for f in fields), (body, bad.text)
    assert (await api.post(f"{URL}/provision", json={"nodes": ["ghost"]}, headers=root)).status_code == 404
    assert len(await _audit(clean_database, "node.provision")) == 2


async def test_bad_drain_reasons_never_reach_slurm(api: httpx.AsyncClient, make_user: UserFactory) -> None:
    root = await make_user("root", admin=True)
    assert (await api.post(URL, json=BODY, headers=root)).status_code == 201
    for body in ({}, {"reason": ""}, {"reason": "x\nstate=down"}, {"reason": "a'b"}, {"reason": "r" * 201}):
        r = await api.post(f"{URL}/gpu-node-01/drain", json=body, headers=root)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "reason", (body, r.text)
    assert (await api.post(f"{URL}/ghost/drain", json={"reason": "x"}, headers=root)).status_code == 404


async def _exchange(api: httpx.AsyncClient, node: str, token: str) -> httpx.Response:
    return await api.post(f"{URL}/bootstrap", json={"node": node, "token": token})


async def test_a_token_is_spent_once_and_every_bad_one_is_401_and_audited(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database
) -> None:
    root = await make_user("root", admin=True)
    token = (await api.post(URL, json=BODY, headers=root)).json()["bootstrap"]["token"]
    await api.post(URL, json={**BODY, "name": "n2"}, headers=root)
    name, nonce, expires, mac = token.split(".")

    refused = {
        "tampered": await _exchange(api, name, f"{name}.{nonce}.{int(expires) + 3600}.{mac}"),
        "wrong-node": await _exchange(api, "n2", token),
        "malformed": await _exchange(api, name, "not-a-token"),
    }
    # signed right but never issued (a leaked secret would make these): refused too
    forged, _ = tokens.issue(SECRET, name, utcnow())
    refused["unknown-nonce"] = await _exchange(api, name, forged)
    # issued, then expired
    old, claims = tokens.issue(SECRET, name, utcnow() - timedelta(minutes=6))
    async with clean_database.session() as session:
        node = (await session.scalars(select(Node).where(Node.name == name))).one()
        session.add(BootstrapToken(node_id=node.id, nonce=claims.nonce, issued_at=utcnow() - timedelta(minutes=6),
                                   expires_at=utcnow() - timedelta(minutes=1)))  # fmt: skip
        await session.commit()
    refused["expired"] = await _exchange(api, name, old)

    # the good token is spent by its first exchange (salt-api does not answer here: that one is a 503) ...
    first = await _exchange(api, name, token)
    assert first.status_code == 503, first.text
    # ... and refused ever after
    refused["replayed"] = await _exchange(api, name, token)
    for reason, r in refused.items():
        assert r.status_code == 401, (reason, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert token not in r.text and mac not in r.text
    entries = await _audit(clean_database, "node.bootstrap_refused")
    assert sorted(a.details["reason"] for a in entries) == sorted(refused)
    assert all(token not in str(a.details) for a in entries)
    assert (await _exchange(api, name, "x" * 300)).status_code == 400  # too long: the schema's
    assert (await api.post(f"{URL}/bootstrap", json={"node": "n1"})).status_code == 400


async def test_a_fresh_bootstrap_command_and_the_script(
    api: httpx.AsyncClient, make_user: UserFactory, settings: Settings, clean_database: Database
) -> None:
    root = await make_user("root", admin=True)
    first = (await api.post(URL, json=BODY, headers=root)).json()["bootstrap"]
    again = await api.get(f"{URL}/gpu-node-01/bootstrap-command", headers=root)
    assert again.status_code == 200 and again.json()["node"] == "gpu-node-01"
    assert first["token"] not in again.json()["command"]
    script = await api.get(f"{URL}/bootstrap.sh")  # no token needed: there is no secret in it
    assert (
        script.status_code == 200 and script.text.startswith("#!/bin/sh") and "/api/v1/nodes/bootstrap" in script.text
    )
    async with asgi_client(create_app(settings, database=clean_database)) as bare:  # no node_bootstrap_secret
        r = await bare.get(f"{URL}/gpu-node-01/bootstrap-command", headers=root)
        assert r.status_code == 409 and "node_bootstrap_secret" in r.json()["detail"]
        made = await bare.post(URL, json={**BODY, "name": "n3"}, headers=root)
        assert made.status_code == 201 and made.json()["bootstrap"] is None
        assert (await _exchange(bare, "gpu-node-01", first["token"])).status_code == 401


async def test_runs_retry_while_salt_api_is_away_and_give_up_on_workers_that_keep_dying(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, keyed: Settings
) -> None:
    root = await make_user("root", admin=True)
    assert (await api.post(URL, json=BODY, headers=root)).status_code == 201
    run_id = (await api.post(f"{URL}/gpu-node-01/provision", json={}, headers=root)).json()["id"]
    quick = runs.RunOptions(backoff_seconds=0)
    for attempt in (1, 2, 3):  # nothing listens where salt-api should be: retried, then failed
        assert await runs.run_due(clean_database, keyed, options=quick) == [run_id]
        got = (await api.get(f"{URL}/runs/{run_id}", headers=root)).json()
        assert got["attempts"] == attempt and "cannot reach salt-api" in got["error"]
        assert got["status"] == ("failed" if attempt == 3 else "queued"), got
    assert got["targets"][0]["status"] == "failed"
    assert await runs.run_due(clean_database, keyed, options=quick) == []

    # a run whose workers died on it again and again (lease expired each time): failed, not taken over again
    other = (await api.post(f"{URL}/gpu-node-01/provision", json={"apply": True}, headers=root)).json()["id"]
    async with clean_database.session() as session:
        row = await session.get_one(ProvisionRun, other)
        row.status, row.attempts, row.lease_owner = "running", runs.MAX_CLAIMS, "dead-worker"
        row.lease_until = utcnow() - timedelta(seconds=1)
        await session.commit()
    assert await runs.run_due(clean_database, keyed, options=quick) == []
    got = (await api.get(f"{URL}/runs/{other}", headers=root)).json()
    assert got["status"] == "failed" and "stopped 6 times" in got["error"], got
    assert got["targets"][0]["status"] == "failed"


async def test_token_guessing_is_throttled_like_password_guessing(keyed: Settings, clean_database: Database) -> None:
    throttled = msgspec.structs.replace(keyed, login_attempts_per_minute=3)
    async with asgi_client(create_app(throttled, database=clean_database)) as api:
        answers = [(await _exchange(api, "n1", f"guess-{i}")).status_code for i in range(5)]
        assert answers == [401, 401, 401, 429, 429]
        assert (await api.get(f"{URL}/bootstrap.sh")).status_code == 200  # only the exchange is throttled
    assert len(await _audit(clean_database, "node.bootstrap_refused")) == 3
