"""Stage-in on the real cluster and two real S3 stores: a training job names a dataset by name, its batch script
fetches the version onto the node before the program runs (from the replica routing picks, checked by SHA-256,
read-only, from the node's cache the second time), and falls back to the other replica when the first store is
dead; a reference that names nothing is a 400 naming the item."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import sqlite3
import time
from pathlib import Path

import httpx

from tests.integration.s3.conftest import s3_bucket, s3_stores  # noqa: F401  (the fixtures)
from tests.integration.slurm.conftest import Cluster, Gateway, PosixUserFactory
from tests.integration.slurm.test_environments import Team, ssh, team  # noqa: F401  (team: the fixture)
from tests.s3 import Stores

SCRIPT = """#!/bin/bash
sha256sum "$GEMINI_DATA_IN1/train/a.bin" | cut -d' ' -f1
cat "$GEMINI_DATA_IN1/labels.txt"
touch "$GEMINI_DATA_IN1/new" 2>/dev/null && echo writable || echo read-only
"""


def _api(gateway: Gateway, token: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _upload(api: httpx.Client, base: str, files: dict[str, bytes]) -> str:
    """A dataset's version 1 uploaded through presigned URLs (as the CLI does); its id."""
    ds = api.post(base, json={"name": "imagenet-mini"}).raise_for_status().json()["id"]
    api.post(f"{base}/{ds}/versions", json={}).raise_for_status()
    for path, data in files.items():
        up = (
            api.post(
                f"{base}/{ds}/versions/1/uploads",
                json={"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
            )
            .raise_for_status()
            .json()
        )
        for part in up["parts"]:
            start = (part["number"] - 1) * up["part_size"]
            httpx.put(part["url"], content=data[start : start + part["size"]], timeout=60).raise_for_status()
        api.post(f"{base}/{ds}/versions/1/uploads/{up['id']}/complete").raise_for_status()
    api.post(f"{base}/{ds}/versions/1/finish").raise_for_status()
    return str(ds)


def _replicate(gateway: Gateway, stores: Stores, bucket: str, version_prefix: str) -> None:
    """What a sync does, by hand: store A's objects copied to B, and B's replica recorded ready."""
    a, b = stores.a.client(), stores.b.client()
    for item in a.list_objects_v2(Bucket=bucket, Prefix=version_prefix).get("Contents", []):
        got = a.get_object(Bucket=bucket, Key=item["Key"])
        b.put_object(Bucket=bucket, Key=item["Key"], Body=got["Body"].read(), Metadata=got["Metadata"])
    db = sqlite3.connect(gateway.env["REMOTEGPU_DATABASE_URL"].removeprefix("sqlite:///"))
    with db:
        (source,) = db.execute("SELECT id FROM storage_sources WHERE name = 'second'").fetchone()
        (version,) = db.execute("SELECT id FROM dataset_versions").fetchone()
        if db.execute("SELECT 1 FROM dataset_replicas WHERE source_id = ?", (source,)).fetchone() is None:
            db.execute(
                "INSERT INTO dataset_replicas (version_id, source_id, status, bytes, created_at, updated_at) "
                "VALUES (?, ?, 'ready', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
                (version, source),
            )
        else:
            db.execute("UPDATE dataset_replicas SET status = 'ready' WHERE source_id = ?", (source,))
    db.close()


def _run(gateway: Gateway, api: httpx.Client, ws: str, datasets: list[str]) -> tuple[str, str, str]:
    """A job with ``datasets`` run to its end: its state, its output, its id."""
    r = api.post(
        f"/api/v1/workspaces/{ws}/jobs",
        json={"name": "staged", "script": SCRIPT, "datasets": datasets, "time_minutes": 5},
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    return (*_wait(api, ws, job), job)


def _wait(api: httpx.Client, ws: str, job: str) -> tuple[str, str]:
    """The job's end state and output, once it ended."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = api.get(f"/api/v1/workspaces/{ws}/jobs/{job}").json()["state"]
        if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            break
        time.sleep(0.5)
    logs = api.get(f"/api/v1/workspaces/{ws}/jobs/{job}/logs").json()["lines"]
    return state, "\n".join(logs)


def _sources(api: httpx.Client, stores: Stores, bucket: str) -> None:
    stores.b.client().create_bucket(Bucket=bucket)
    for name, store, priority in (("first", stores.a, 1), ("second", stores.b, 2)):
        body = {
            "name": name, "type": "generic", "endpoint": store.endpoint, "bucket": bucket, "priority": priority,
            "access_key": store.access_key, "secret_key": store.secret_key,
        }  # fmt: skip
        api.post("/api/v1/storage-sources", json=body).raise_for_status()


def test_a_job_reads_a_dataset_staged_in_from_the_routed_replica_and_falls_back(
    gateway: Gateway,
    slurm_cluster: Cluster,
    posix_user: PosixUserFactory,
    slurm_account: str,
    s3_stores: Stores,  # noqa: F811
    s3_bucket: str,  # noqa: F811
) -> None:
    user = posix_user()
    root, token = _api(gateway, gateway.token("root", admin=True)), _api(gateway, gateway.token(user))
    _sources(root, s3_stores, s3_bucket)
    ws = "stage"
    made = root.post("/api/v1/workspaces", json={"slug": ws, "name": ws, "owner": user, "slurm_account": slurm_account})
    assert made.status_code == 201, made.text
    big = os.urandom(3 * 1024 * 1024 + 7)
    ds = _upload(token, f"/api/v1/workspaces/{ws}/datasets", {"train/a.bin": big, "labels.txt": b"0 cat\n1 dog\n"})
    _replicate(gateway, s3_stores, s3_bucket, f"{ws}/datasets/{ds}/v1/")
    expected = hashlib.sha256(big).hexdigest()
    cache = Path(f"/tmp/remotegpu-cache-{pwd.getpwnam(user).pw_uid}")  # the node's cache of the user
    shutil.rmtree(cache, ignore_errors=True)
    try:
        with gateway.worker():
            state, out, _ = _run(gateway, token, ws, ["imagenet-mini"])
            assert state == "COMPLETED", out
            staged, *program = out.splitlines()
            assert program == [expected, "0 cat", "1 dog", "read-only"], out
            assert "imagenet-mini in" in staged and "2 files, 3145747 bytes (0 from the node's cache" in staged
            assert "3145747 bytes fetched from first)" in staged, staged

            # the first store dies: the job's files come from the second replica (the node's cache emptied first)
            shutil.rmtree(cache, ignore_errors=True)
            s3_stores.a.kill()
            try:
                state, out, job = _run(gateway, token, ws, ["imagenet-mini:1"])
            finally:
                s3_stores.a.restart()
            assert state == "COMPLETED", out
            assert expected in out and "storage source first failed" in out and "trying the next replica" in out, out
            # the node told the gateway: the job's history, the failover metric and an audit entry say so
            history = token.get(f"/api/v1/workspaces/{ws}/jobs/{job}/events").json()
            staged_in = [e for e in history if e["kind"] == "stage-in"]
            assert len(staged_in) == 1 and "imagenet-mini:1 into /gemini/data-1: " in staged_in[0]["reason"], history
            metrics = httpx.get(f"{gateway.url}/metrics").text
            assert 'remotegpu_routing_failovers_total{source="first"} 2.0' in metrics, metrics
            audit = root.get("/api/v1/audit", params={"action": "routing.failover"}).json()["items"]
            assert [(a["target"], a["details"]["failed"]) for a in audit] == [(job, ["first"])], audit

            # and again: everything from the node's cache
            state, out, _ = _run(gateway, token, ws, ["imagenet-mini"])
            assert state == "COMPLETED" and "2 from the node's cache, 0 bytes fetched" in out, out

            # the nodes are registered in the second store's region: its replica comes first for them
            root.patch("/api/v1/storage-sources/second", json={"region": "eu-1"}).raise_for_status()
            for node in ("n1", "n2"):
                body = {"name": node, "address": "127.0.0.1", "region": "eu-1"}
                assert root.post("/api/v1/nodes", json=body).status_code == 201
            shutil.rmtree(cache, ignore_errors=True)
            state, out, _ = _run(gateway, token, ws, ["imagenet-mini"])
            assert state == "COMPLETED" and "3145747 bytes fetched from second)" in out, out

            # a job of both nodes: the layout and the stage-in on each (here one home: filled once, found by the other)
            shutil.rmtree(cache, ignore_errors=True)
            both = 'srun --ntasks-per-node=1 bash -c \'sha256sum "$GEMINI_DATA_IN1/train/a.bin" | cut -d" " -f1\''
            r = token.post(
                f"/api/v1/workspaces/{ws}/jobs",
                json={"name": "two", "script": f"#!/bin/bash\n{both}\n", "datasets": ["imagenet-mini"], "nodes": 2},
            )
            assert r.status_code == 201, r.text
            state, out = _wait(token, ws, r.json()["id"])
            assert state == "COMPLETED" and out.count(expected) == 2, out
            assert out.count("3145747 bytes fetched") == 1 and out.count("staged already") == 1, out

        r = token.post(
            f"/api/v1/workspaces/{ws}/jobs", json={"name": "x", "script": SCRIPT, "datasets": ["/data", "nothing:2"]}
        )
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "datasets[1]", r.text
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_an_environment_sees_its_dataset_staged_in_read_only(
    team: Team,  # noqa: F811
    gateway: Gateway,
    s3_stores: Stores,  # noqa: F811
    s3_bucket: str,  # noqa: F811
) -> None:
    owner = team.names["owner"]
    _sources(httpx.Client(base_url=gateway.url, headers=team.admin, timeout=60), s3_stores, s3_bucket)
    data = os.urandom(1024 * 1024 + 3)
    api = httpx.Client(base_url=gateway.url, headers=team.headers["owner"], timeout=60)
    _upload(api, "/api/v1/workspaces/lab/datasets", {"train/a.bin": data, "labels.txt": b"0 cat\n"})
    cache = Path(f"/tmp/remotegpu-cache-{pwd.getpwnam(owner).pw_uid}")
    shutil.rmtree(cache, ignore_errors=True)
    try:
        with gateway.worker():
            made = team.env("owner", method="POST", name="nb", services=["ssh"], datasets=["imagenet-mini:1"])
            assert made.status_code == 201, made.text
            view = team.wait("owner", made.json()["id"], {"running"}, ssh=True)
            done = ssh(
                view,
                team.keys["owner"],
                'sha256sum "$GEMINI_DATA_IN1/train/a.bin" | cut -d" " -f1; cat "$GEMINI_DATA_IN1/labels.txt"; '
                'touch "$GEMINI_DATA_IN1/x" 2>/dev/null && echo writable || echo read-only',
            )
            assert done.stdout.split("\n")[:3] == [hashlib.sha256(data).hexdigest(), "0 cat", "read-only"], done
            events = team.env("owner", f"/{view['id']}/events").json()
            assert [e["message"].split(":")[0] for e in events if e["kind"] == "stage_in"] == ["imagenet-mini"], events
    finally:
        shutil.rmtree(cache, ignore_errors=True)
