"""Sync tasks against two real SeaweedFS stores, on both databases: a version made ready on store A is copied to
store B by its realtime task (checksums on B as the manifest says), an incremental run copies nothing, a file
changed or deleted on B is the only one copied again; a store SIGKILLed in the middle of a multipart copy fails
the attempt, and once it is back the task resumes at the next part and completes; of two workers racing for a
task only one holds its lease; the admin API (create, list, retry, cancel, two-way, scheduled) and the version's
replicas for its readers, bad input named, 404 across workspaces."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta

import httpx
import msgspec
import pytest
from sqlalchemy import select, update

from gateway.app import create_app
from gateway.audit.models import AuditEntry
from gateway.config import Settings
from gateway.datasets import sync
from gateway.datasets.models import DatasetFile, DatasetVersion, Replica, StorageSource, SyncObject, SyncTask
from gateway.db.base import utcnow
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client
from tests.integration.s3.test_datasets_api import _sources
from tests.s3 import Stores

WS = "/api/v1/workspaces"
TASKS = "/api/v1/sync-tasks"
MIB = 1024 * 1024
FAST = sync.SyncOptions(small_limit=8 * MIB, part_size=5 * MIB, workers=8, part_workers=2)


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    """Sealed source keys; S3 calls time out within 2 s (a killed store is noticed at once)."""
    return msgspec.structs.replace(
        settings, secret_keys=base64.b64encode(os.urandom(32)).decode(), storage_timeout_seconds=2.0
    )


@pytest.fixture
async def api(keyed: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(keyed, database=clean_database)) as c:
        yield c


@pytest.fixture
def both_buckets(s3_stores: Stores, s3_bucket: str) -> Iterator[str]:
    """The bucket on A (s3_bucket) and, made by ``_sources``, on B: removed from B afterwards too."""
    yield s3_bucket
    b = s3_stores.b
    if not b.running:
        b.restart()
    client = b.client()
    with contextlib.suppress(client.exceptions.NoSuchBucket):
        client.delete_bucket(Bucket=s3_bucket)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _ready_version(
    api: httpx.AsyncClient,
    db: Database,
    stores: Stores,
    bucket: str,
    who: dict[str, str],
    files: dict[str, bytes],
    ws: str = "lab",
) -> tuple[str, int, str]:
    """A dataset whose version 1 holds ``files`` on store A (put there as an upload would leave them: with their
    SHA-256 in the metadata, in the manifest), finished through the API: (dataset id, version id, its prefix)."""
    assert (await api.post(WS, json={"slug": ws, "name": ws}, headers=who)).status_code == 201
    ds = (await api.post(f"{WS}/{ws}/datasets", json={"name": "corpus"}, headers=who)).json()["id"]
    r = await api.post(f"{WS}/{ws}/datasets/{ds}/versions", json={}, headers=who)
    assert r.status_code == 201 and r.json()["primary_source"] == "local", r.text
    async with db.session() as session:
        version = await session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds))
        assert version is not None
        prefix = f"remotegpu/{version.prefix}"
        client = stores.a.client()
        for path, data in files.items():
            await asyncio.to_thread(
                client.put_object, Bucket=bucket, Key=prefix + path, Body=data, Metadata={"sha256": _sha(data)}
            )
            session.add(DatasetFile(version_id=version.id, path=path, size=len(data), sha256=_sha(data)))
        await session.commit()
        version_id = version.id
    r = await api.post(f"{WS}/{ws}/datasets/{ds}/versions/1/finish", headers=who)
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    return ds, version_id, prefix


def _check_on_b(stores: Stores, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = stores.b.client()
    for path, data in files.items():
        head = client.head_object(Bucket=bucket, Key=prefix + path)
        assert (head["ContentLength"], head["Metadata"].get("sha256")) == (len(data), _sha(data)), path


async def _task(db: Database, task_id: int) -> SyncTask:
    async with db.session() as session:
        task = await session.get(SyncTask, task_id)
        assert task is not None
        return task


async def test_realtime_copy_incremental_and_repair(
    api: httpx.AsyncClient,
    keyed: Settings,
    clean_database: Database,
    make_user: UserFactory,
    s3_stores: Stores,
    both_buckets: str,
) -> None:
    db, bucket = clean_database, both_buckets
    root, alice = await make_user("root", admin=True), await make_user("alice")
    await _sources(api, root, s3_stores, bucket)
    files = {f"shard/{i:03d}.bin": os.urandom(1000 + 997 * i) for i in range(40)}
    files["weights/big.bin"] = os.urandom(12 * MIB + 7)  # multipart: 3 parts of 5 MiB
    ds, version_id, prefix = await _ready_version(api, db, s3_stores, bucket, alice, files)

    listed = (await api.get(TASKS, params={"version_id": version_id}, headers=root)).json()
    [queued] = listed["items"]
    assert (queued["policy"], queued["status"], queued["source"], queued["target"]) == (
        "realtime",
        "queued",
        "local",
        "cloud",
    )
    replicas = f"{WS}/lab/datasets/{ds}/versions/1/replicas"
    seen = (await api.get(replicas, headers=alice)).json()
    assert [(r["source"], r["status"]) for r in seen["replicas"]] == [("local", "ready")]
    assert [(t["target"], t["status"]) for t in seen["tasks"]] == [("cloud", "queued")]

    assert await sync.run_due_tasks(db, keyed, options=FAST) == [queued["id"]]
    done = (await api.get(f"{TASKS}/{queued['id']}", headers=root)).json()
    total = sum(map(len, files.values()))
    assert (done["status"], done["objects_copied"], done["bytes_copied"], done["attempts"]) == (
        "done",
        len(files),
        total,
        1,
    ), done
    assert done["objects_done"] == done["objects_total"] == len(files) and done["bytes_done"] == total
    _check_on_b(s3_stores, bucket, prefix, files)
    assert (
        s3_stores.b.client().get_object(Bucket=bucket, Key=prefix + "weights/big.bin")["Body"].read()
        == (files["weights/big.bin"])
    )
    seen = (await api.get(replicas, headers=alice)).json()
    assert sorted((r["source"], r["status"], r["bytes"]) for r in seen["replicas"]) == [
        ("cloud", "ready", total),
        ("local", "ready", total),
    ]
    assert seen["tasks"] == [] and all(r["synced_at"] for r in seen["replicas"])
    version = (await api.get(f"{WS}/lab/datasets/{ds}/versions/1", headers=alice)).json()
    assert version["replicas"] == ["cloud", "local"]

    async def manual(mode: str = "incremental") -> dict[str, object]:
        r = await api.post(TASKS, json={"version_id": version_id, "target": "cloud", "mode": mode}, headers=root)
        assert r.status_code == 201, r.text
        assert await sync.run_due_tasks(db, keyed, options=FAST) == [r.json()["id"]]
        return dict((await api.get(f"{TASKS}/{r.json()['id']}", headers=root)).json())

    # nothing changed: nothing copied (the listing matches what was checked: not even a HEAD is needed)
    again = await manual()
    assert (again["status"], again["objects_copied"], again["bytes_copied"], again["objects_done"]) == (
        "done",
        0,
        0,
        len(files),
    ), again

    # on B, one file rewritten with other bytes of the same size (its checksum metadata kept) and one deleted
    b = s3_stores.b.client()
    changed, gone = "shard/007.bin", "shard/031.bin"
    b.put_object(
        Bucket=bucket,
        Key=prefix + changed,
        Body=os.urandom(len(files[changed])),
        Metadata={"sha256": _sha(files[changed])},
    )
    b.delete_object(Bucket=bucket, Key=prefix + gone)
    repaired = await manual()
    assert (repaired["objects_copied"], repaired["bytes_copied"]) == (2, len(files[changed]) + len(files[gone]))
    async with db.session() as session:
        rows = dict(
            (
                await session.execute(
                    select(SyncObject.path, SyncObject.task_id).where(SyncObject.version_id == version_id)
                )
            ).all()
        )
    assert {p for p, t in rows.items() if t == repaired["id"]} == {changed, gone}
    assert b.get_object(Bucket=bucket, Key=prefix + changed)["Body"].read() == files[changed]
    _check_on_b(s3_stores, bucket, prefix, files)

    full = await manual("full")
    assert (full["objects_copied"], full["bytes_copied"]) == (len(files), total)

    async with db.session() as session:
        actions = (await session.scalars(select(AuditEntry.action).where(AuditEntry.target_type == "sync_task"))).all()
    assert actions.count("sync_task.create") == 4 and actions.count("sync_task.done") == 4


async def test_store_killed_mid_multipart_copy_resumes_at_the_next_part(
    api: httpx.AsyncClient,
    keyed: Settings,
    clean_database: Database,
    make_user: UserFactory,
    s3_stores: Stores,
    both_buckets: str,
) -> None:
    db, bucket = clean_database, both_buckets
    root, alice = await make_user("root", admin=True), await make_user("alice")
    await _sources(api, root, s3_stores, bucket)
    big = os.urandom(100 * MIB + 12345)
    files = {"model.safetensors": big, "config.json": b'{"layers": 2}'}
    _, version_id, prefix = await _ready_version(api, db, s3_stores, bucket, alice, files)
    options = sync.SyncOptions(small_limit=8 * MIB, part_size=5 * MIB, part_workers=1)
    part_count = 21

    async def parts_persisted() -> tuple[int, int]:
        async with db.session() as session:
            row = await session.scalar(select(SyncObject).where(SyncObject.path == "model.safetensors"))
            return (len(row.parts), row.parts_copied) if row is not None else (0, 0)

    running = asyncio.create_task(sync.run_due_tasks(db, keyed, options=options))
    try:
        for _ in range(2000):
            if (await parts_persisted())[0] >= 3 or running.done():
                break
            await asyncio.sleep(0.005)
        await asyncio.to_thread(s3_stores.b.kill)  # SIGKILL in the middle of the copy
        [task_id] = await running
    finally:
        if not s3_stores.b.running:
            await asyncio.to_thread(s3_stores.b.restart)
    failed = await _task(db, task_id)
    assert (failed.status, failed.attempts, failed.lease_owner) == ("queued", 1, None), failed.last_error
    assert failed.last_error and "'cloud'" in failed.last_error
    assert failed.next_attempt_at > utcnow() + timedelta(seconds=20)  # backoff before the second attempt
    kept, sent = await parts_persisted()
    assert 3 <= kept < part_count and sent == kept, (kept, sent)

    # B is back (restarted above); the retry runs the next attempt now, which resumes the upload
    r = await api.post(f"{TASKS}/{task_id}/retry", headers=root)
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["attempts"] == 1, r.text
    assert await sync.run_due_tasks(db, keyed, options=options) == [task_id]
    done = await _task(db, task_id)
    assert (done.status, done.attempts, done.objects_copied) == ("done", 2, 2), done.last_error
    _, sent_after = await parts_persisted()
    assert sent_after == part_count, (kept, sent_after)  # the parts finished before the kill were not sent again
    assert done.bytes_copied == len(big) + len(files["config.json"])  # in all: each byte sent once
    _check_on_b(s3_stores, bucket, prefix, files)
    body = s3_stores.b.client().get_object(Bucket=bucket, Key=prefix + "model.safetensors")["Body"].read()
    assert _sha(body) == _sha(big)
    assert s3_stores.b.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    async with db.session() as session:
        replica = await session.scalar(
            select(Replica).join(StorageSource).where(Replica.version_id == version_id, StorageSource.name == "cloud")
        )
        assert replica is not None and replica.status == "ready" and replica.bytes == sum(map(len, files.values()))


async def test_a_file_the_source_lacks_fails_the_task_after_three_attempts(
    api: httpx.AsyncClient,
    keyed: Settings,
    clean_database: Database,
    make_user: UserFactory,
    s3_stores: Stores,
    both_buckets: str,
) -> None:
    db, bucket = clean_database, both_buckets
    root, alice = await make_user("root", admin=True), await make_user("alice")
    await _sources(api, root, s3_stores, bucket)
    files = {f"part-{i:02d}.csv": os.urandom(3000) for i in range(30)}
    _, _, prefix = await _ready_version(api, db, s3_stores, bucket, alice, files)
    s3_stores.a.client().delete_object(Bucket=bucket, Key=prefix + "part-17.csv")  # lost from the primary
    [task] = (await api.get(TASKS, headers=root)).json()["items"]
    for attempt in (1, 2, 3):
        assert await sync.run_due_tasks(db, keyed, options=FAST) == [task["id"]]
        seen = (await api.get(f"{TASKS}/{task['id']}", headers=root)).json()
        assert seen["attempts"] == attempt and "part-17.csv" in seen["last_error"], seen
        assert seen["objects_copied"] == len(files) - 1  # the others, once: later attempts find them in place
        if attempt < 3:
            assert seen["status"] == "queued"
            assert datetime.fromisoformat(seen["next_attempt_at"]) > utcnow() + timedelta(seconds=20)  # backoff
            assert await sync.run_due_tasks(db, keyed, options=FAST) == []  # waiting out its backoff
            assert (await api.post(f"{TASKS}/{task['id']}/retry", headers=root)).status_code == 200
    assert seen["status"] == "failed" and seen["finished_at"], seen
    replicas = (await api.get(f"{WS}/lab/datasets/{seen['dataset_id']}/versions/1/replicas", headers=alice)).json()
    assert {r["source"]: r["status"] for r in replicas["replicas"]} == {"local": "ready", "cloud": "error"}
    async with db.session() as session:
        outcomes = (
            await session.scalars(
                select(AuditEntry.action).where(AuditEntry.target == str(task["id"]), AuditEntry.action.like("sync%"))
            )
        ).all()
    assert sorted(outcomes) == ["sync_task.create", "sync_task.failed", "sync_task.retry", "sync_task.retry"]
    r = await api.post(f"{TASKS}/{task['id']}/retry", headers=root)  # a failed task starts over
    assert r.status_code == 200 and (r.json()["status"], r.json()["attempts"]) == ("queued", 0), r.text


async def test_cancel_stops_a_running_copy_and_aborts_its_upload(
    api: httpx.AsyncClient,
    keyed: Settings,
    clean_database: Database,
    make_user: UserFactory,
    s3_stores: Stores,
    both_buckets: str,
) -> None:
    db, bucket = clean_database, both_buckets
    root, alice = await make_user("root", admin=True), await make_user("alice")
    await _sources(api, root, s3_stores, bucket)
    files = {"big.bin": os.urandom(60 * MIB)}
    _, version_id, prefix = await _ready_version(api, db, s3_stores, bucket, alice, files)
    [task] = (await api.get(TASKS, headers=root)).json()["items"]
    options = sync.SyncOptions(small_limit=8 * MIB, part_size=5 * MIB, part_workers=1)
    running = asyncio.create_task(sync.run_due_tasks(db, keyed, options=options))
    for _ in range(2000):
        async with db.session() as session:
            parts = await session.scalar(select(SyncObject.parts).where(SyncObject.version_id == version_id))
        if parts or running.done():
            break
        await asyncio.sleep(0.005)
    r = await api.post(f"{TASKS}/{task['id']}/cancel", headers=root)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert await running == [task["id"]]
    stopped = await _task(db, task["id"])
    assert stopped.status == "cancelled" and stopped.objects_copied == 0, stopped.last_error
    async with db.session() as session:
        assert (await session.scalars(select(SyncObject).where(SyncObject.version_id == version_id))).all() == []
    b = s3_stores.b.client()
    assert b.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted
    assert b.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount") == 0


async def test_two_workers_racing_for_a_task_one_holds_the_lease(
    api: httpx.AsyncClient,
    keyed: Settings,
    clean_database: Database,
    make_user: UserFactory,
    s3_stores: Stores,
    both_buckets: str,
) -> None:
    db, bucket = clean_database, both_buckets
    root, alice = await make_user("root", admin=True), await make_user("alice")
    await _sources(api, root, s3_stores, bucket)
    files = {f"f{i}.txt": os.urandom(2048) for i in range(20)}
    _, _, prefix = await _ready_version(api, db, s3_stores, bucket, alice, files)
    [task] = (await api.get(TASKS, headers=root)).json()["items"]
    other = Database(keyed.database_url)  # a second worker process: its own connections
    try:
        for _ in range(10):
            won = await asyncio.gather(
                db.run(lambda s: sync.claim(s, task["id"], "worker-1", 60)),
                other.run(lambda s: sync.claim(s, task["id"], "worker-2", 60)),
            )
            assert sorted(won) == [False, True]
            holder = "worker-1" if won[0] else "worker-2"
            claimed = await _task(db, task["id"])
            assert (claimed.status, claimed.lease_owner) == ("running", holder)
            # a live lease is nobody else's; an expired one is taken over
            assert not await db.run(lambda s: sync.claim(s, task["id"], "worker-3", 60))
            async with db.session() as session:
                await session.execute(
                    update(SyncTask)
                    .where(SyncTask.id == task["id"])
                    .values(lease_until=utcnow() - timedelta(seconds=1), attempts=0)
                )
                await session.commit()
            assert await db.run(lambda s: sync.claim(s, task["id"], "worker-3", 60))
            async with db.session() as session:
                await session.execute(
                    update(SyncTask)
                    .where(SyncTask.id == task["id"])
                    .values(status="queued", lease_owner=None, lease_until=None, attempts=0)
                )
                await session.commit()

        ran = await asyncio.gather(
            sync.run_due_tasks(db, keyed, options=FAST, owner="worker-1"),
            sync.run_due_tasks(other, keyed, options=FAST, owner="worker-2"),
        )
    finally:
        await other.dispose()
    assert sorted(ran) == [[], [task["id"]]]
    done = await _task(db, task["id"])
    assert (done.status, done.attempts, done.objects_copied) == ("done", 1, len(files))
    _check_on_b(s3_stores, bucket, prefix, files)


async def test_api_creates_retries_cancels_and_names_bad_input(
    api: httpx.AsyncClient,
    keyed: Settings,
    clean_database: Database,
    make_user: UserFactory,
    s3_stores: Stores,
    both_buckets: str,
) -> None:
    db, bucket = clean_database, both_buckets
    root, alice, bob = await make_user("root", admin=True), await make_user("alice"), await make_user("bob")
    await _sources(api, root, s3_stores, bucket)
    files = {"a.txt": b"alpha", "b.txt": b"beta"}
    ds, version_id, _ = await _ready_version(api, db, s3_stores, bucket, alice, files)
    [realtime] = (await api.get(TASKS, headers=root)).json()["items"]

    assert (await api.get(TASKS, headers=alice)).status_code == 403
    assert (await api.post(TASKS, json={"version_id": version_id, "target": "cloud"}, headers=alice)).status_code == 403
    # one open task per version and target: the realtime one is queued already
    r = await api.post(TASKS, json={"version_id": version_id, "target": "cloud"}, headers=root)
    assert r.status_code == 409 and '"target"' in r.text, r.text
    r = await api.post(f"{TASKS}/{realtime['id']}/cancel", headers=root)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await api.post(f"{TASKS}/{realtime['id']}/cancel", headers=root)).status_code == 200
    assert await sync.run_due_tasks(db, keyed, options=FAST) == []  # cancelled: nobody runs it

    # scheduled, by dataset id and number: not run before its time; a retry makes it due now
    later = (utcnow() + timedelta(hours=1)).isoformat()
    body = {"kind": "dataset", "dataset_id": ds, "version": 1, "target": "cloud", "not_before": later}
    r = await api.post(TASKS, json=body, headers=root)
    assert r.status_code == 201 and r.json()["policy"] == "scheduled" and r.json()["source"] == "local", r.text
    scheduled = r.json()["id"]
    assert await sync.run_due_tasks(db, keyed, options=FAST) == []
    listed = (await api.get(TASKS, params={"status": "queued", "dataset_id": ds}, headers=root)).json()
    assert [t["id"] for t in listed["items"]] == [scheduled] and listed["total"] == 1
    assert (await api.post(f"{TASKS}/{scheduled}/retry", headers=root)).status_code == 200
    assert await sync.run_due_tasks(db, keyed, options=FAST) == [scheduled]
    assert (await _task(db, scheduled)).status == "done"
    r = await api.post(f"{TASKS}/{scheduled}/retry", headers=root)
    assert r.status_code == 409 and "done" in r.text
    assert (await api.post(f"{TASKS}/{scheduled}/cancel", headers=root)).status_code == 409

    # two-way: a task each way, naming each other; a retried cancelled task runs again
    r = await api.post(TASKS, json={"version_id": version_id, "target": "cloud", "direction": "two-way"}, headers=root)
    assert r.status_code == 201, r.text
    there = r.json()
    back = (await api.get(f"{TASKS}/{there['paired_task_id']}", headers=root)).json()
    assert (back["source"], back["target"], back["paired_task_id"]) == ("cloud", "local", there["id"])
    assert sorted(await sync.run_due_tasks(db, keyed, options=FAST)) == [there["id"], back["id"]]
    assert {(await _task(db, t)).objects_copied for t in (there["id"], back["id"])} == {0}  # both hold it all
    r = await api.post(f"{TASKS}/{realtime['id']}/retry", headers=root)
    assert r.status_code == 200 and (r.json()["status"], r.json()["attempts"]) == ("queued", 0), r.text

    # readers see the replicas; another workspace sees nothing of them
    assert (await api.post(WS, json={"slug": "other", "name": "other"}, headers=bob)).status_code == 201
    r = await api.get(f"{WS}/lab/datasets/{ds}/versions/1/replicas", headers=alice)
    assert r.status_code == 200 and [t["id"] for t in r.json()["tasks"]] == [realtime["id"]], r.text
    assert (await api.get(f"{WS}/lab/datasets/{ds}/versions/1/replicas", headers=bob)).status_code == 404
    assert (await api.get(f"{WS}/other/datasets/{ds}/versions/1/replicas", headers=bob)).status_code == 404
    assert (await api.get(f"{WS}/lab/models/{ds}/versions/1/replicas", headers=alice)).status_code == 404
    assert (await api.get(f"{WS}/lab/datasets/{ds}/versions/9/replicas", headers=alice)).status_code == 404
    assert (await api.get(f"{TASKS}/999999", headers=root)).status_code == 404

    for bad, field, status in [
        ({"version_id": version_id, "target": "Not_A_Name"}, "target", 400),
        ({"version_id": 0, "target": "cloud"}, "version_id", 400),
        ({"version_id": version_id, "target": "cloud", "mode": "mirror"}, "mode", 400),
        ({"version_id": version_id, "target": "cloud", "not_before": "2030-01-01T00:00:00"}, "not_before", 400),
        ({"version_id": version_id, "target": "cloud", "extra": 1}, "extra", 400),
        ({"version_id": version_id, "dataset_id": ds, "version": 1, "target": "cloud"}, "version_id", 400),
        ({"target": "cloud"}, "dataset_id", 400),
        ({"version_id": version_id, "target": "cloud", "direction": "two-way", "mode": "full"}, "mode", 400),
        ({"version_id": version_id, "target": "nowhere"}, "target", 404),
        ({"version_id": version_id, "target": "cloud", "source": "nowhere"}, "source", 404),
        ({"version_id": version_id, "target": "local", "source": "local"}, "target", 409),
        ({"version_id": 424242, "target": "cloud"}, "version_id", 404),
        ({"kind": "model", "dataset_id": ds, "version": 1, "target": "cloud"}, "dataset_id", 404),
    ]:
        r = await api.post(TASKS, json=bad, headers=root)
        assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert f'"{field}"' in r.text, (bad, r.text)
    r = await api.get(TASKS, params={"status": "lost"}, headers=root)
    assert r.status_code == 400 and "status" in r.text
