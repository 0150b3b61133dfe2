"""Datasets through the API against two real SeaweedFS stores, on both databases: presigned multipart uploads
straight to the store (resumed after an interrupted client, completion checked against the plan and the object),
a version's manifest with our checksums, immutable once ready, downloads by presigned URL (a tampered one
refused by the store), routing of uploads by user type, sharing read-only, 404 across workspaces, the storage
quota, bad input named."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.session import Database
from tests.conftest import UserFactory, asgi_client
from tests.s3 import Stores

WS = "/api/v1/workspaces"
MIB = 1024 * 1024


@pytest.fixture
async def api(settings: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    keyed = msgspec.structs.replace(settings, secret_keys=base64.b64encode(os.urandom(32)).decode())
    async with asgi_client(create_app(keyed, database=clean_database)) as c:
        yield c


async def _sources(api: httpx.AsyncClient, root: dict[str, str], stores: Stores, bucket: str) -> None:
    """Store A private (on site), store B public; the bucket made on B too."""
    stores.b.client().create_bucket(Bucket=bucket)
    for name, store, public in (("local", stores.a, False), ("cloud", stores.b, True)):
        body = {
            "name": name,
            "type": "generic",
            "endpoint": store.endpoint,
            "bucket": bucket,
            "access_key": store.access_key,
            "secret_key": store.secret_key,
            "public": public,
            "prefix": "remotegpu/",
        }
        r = await api.post("/api/v1/storage-sources", json=body, headers=root)
        assert r.status_code == 201, r.text
        r = await api.post(f"/api/v1/storage-sources/{name}/check", headers=root)
        assert r.json()["health"] in {"ok", "degraded"}, r.text  # degraded: slow on a loaded machine, still used


async def _put(part: dict[str, object], data: bytes) -> httpx.Response:
    """What the client does: the part's bytes to its presigned URL, straight to the store."""
    async with httpx.AsyncClient(timeout=30) as store:
        return await store.put(str(part["url"]), content=data)


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as store:
        return await store.get(url)


async def test_upload_resume_finish_download_share_and_isolation(
    api: httpx.AsyncClient, make_user: UserFactory, s3_stores: Stores, s3_bucket: str
) -> None:
    root, alice, bob = await make_user("root", admin=True), await make_user("alice"), await make_user("bob")
    await _sources(api, root, s3_stores, s3_bucket)
    for slug, who in (("vision", alice), ("speech", bob)):
        assert (await api.post(WS, json={"slug": slug, "name": slug}, headers=who)).status_code == 201
    base = f"{WS}/vision/datasets"
    r = await api.post(base, json={"name": "imagenet-mini", "tags": ["images", "images", "v1"]}, headers=alice)
    assert r.status_code == 201 and r.json()["tags"] == ["images", "v1"] and r.json()["latest"] is None, r.text
    ds = r.json()["id"]
    assert (await api.post(base, json={"name": "imagenet-mini"}, headers=alice)).status_code == 409

    r = await api.post(f"{base}/{ds}/versions", json={}, headers=alice)
    assert r.status_code == 201 and r.json()["primary_source"] == "local", r.text  # internal user: on-site store
    assert (await api.post(f"{base}/{ds}/versions", json={}, headers=alice)).status_code == 409  # one at a time

    big = os.urandom(17 * MIB + 123)  # three parts: 8 MiB, 8 MiB, the rest
    small = b"label,file\n0,a.jpg\n"
    upload = {"path": "train/big.bin", "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    r = await api.post(f"{base}/{ds}/versions/1/uploads", json=upload, headers=alice)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (
        made["part_count"] == 3 and made["part_size"] == 8 * MIB and [p["number"] for p in made["parts"]] == [1, 2, 3]
    )
    assert str(s3_stores.a.endpoint) in made["parts"][0]["url"]  # the bytes go straight to the store
    for part in made["parts"][:2]:  # the client dies after two parts
        start = (part["number"] - 1) * made["part_size"]
        assert (await _put(part, big[start : start + part["size"]])).status_code == 200

    r = await api.post(f"{base}/{ds}/versions/1/uploads/{made['id']}/complete", headers=alice)
    assert r.status_code == 409 and "parts not uploaded yet: 3" in r.text, r.text
    r = await api.post(f"{base}/{ds}/versions/1/uploads", json=upload, headers=alice)  # the same file again: resumed
    assert r.status_code == 200 and r.json()["id"] == made["id"] and r.json()["completed_parts"] == [1, 2], r.text
    [last] = r.json()["parts"]
    assert last["number"] == 3 and last["size"] == len(big) - 16 * MIB
    assert (await _put(last, big[16 * MIB :])).status_code == 200
    r = await api.post(f"{base}/{ds}/versions/1/uploads/{made['id']}/complete", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    head = s3_stores.a.client().head_object(Bucket=s3_bucket, Key=f"remotegpu/vision/datasets/{ds}/v1/train/big.bin")
    assert head["ContentLength"] == len(big) and head["Metadata"]["sha256"] == upload["sha256"]

    small_up = {"path": "labels.csv", "size": len(small), "sha256": hashlib.sha256(small).hexdigest()}
    r = await api.post(f"{base}/{ds}/versions/1/uploads", json=small_up, headers=alice)
    assert r.status_code == 201 and r.json()["part_count"] == 1
    assert (await api.post(f"{base}/{ds}/versions/1/finish", headers=alice)).status_code == 409  # still open
    assert (await _put(r.json()["parts"][0], small)).status_code == 200
    assert (
        await api.post(f"{base}/{ds}/versions/1/uploads/{r.json()['id']}/complete", headers=alice)
    ).status_code == 200
    r = await api.post(f"{base}/{ds}/versions/1/finish", headers=alice)
    assert r.status_code == 200, r.text
    ready = r.json()
    assert ready["status"] == "ready" and ready["size_bytes"] == len(big) + len(small) and ready["file_count"] == 2
    assert ready["replicas"] == ["local"]
    files = (await api.get(f"{base}/{ds}/versions/1/files", headers=alice)).json()
    assert files == [
        {"path": "labels.csv", "size": len(small), "sha256": small_up["sha256"]},
        {"path": "train/big.bin", "size": len(big), "sha256": upload["sha256"]},
    ]
    r = await api.post(f"{base}/{ds}/versions/1/uploads", json={**small_up, "path": "more.csv"}, headers=alice)
    assert r.status_code == 409 and "never changes" in r.text  # immutable once ready

    r = await api.get(f"{base}/{ds}/versions/1/download-url", params={"path": "train/big.bin"}, headers=alice)
    assert r.status_code == 200 and r.json()["source"] == "local", r.text
    url = r.json()["url"]
    assert (await _get(url)).content == big
    tampered = url.replace("train/big.bin", "labels.csv")
    assert (await _get(tampered)).status_code == 403  # the signature covers the key
    assert (
        await api.get(f"{base}/{ds}/versions/1/download-url", params={"path": "nope"}, headers=alice)
    ).status_code == 404

    # another workspace sees nothing of it, until it is shared: then it reads, and changes nothing
    other = f"{WS}/speech/datasets"
    assert (await api.get(f"{other}/{ds}", headers=bob)).status_code == 404
    assert (await api.get(f"{base}/{ds}", headers=bob)).status_code == 404
    assert (await api.get(other, headers=bob)).json()["items"] == []
    r = await api.patch(f"{base}/{ds}", json={"shared_with": ["speech"]}, headers=alice)
    assert r.status_code == 200 and r.json()["shared_with"] == ["speech"], r.text
    listed = (await api.get(other, headers=bob)).json()["items"]
    assert [(d["name"], d["workspace"]) for d in listed] == [("imagenet-mini", "vision")]
    r = await api.get(f"{other}/{ds}/versions/1/download-url", params={"path": "labels.csv"}, headers=bob)
    assert r.status_code == 200 and (await _get(r.json()["url"])).content == small
    assert (await api.post(f"{other}/{ds}/versions", json={}, headers=bob)).status_code == 403
    assert (await api.patch(f"{other}/{ds}", json={"description": "mine"}, headers=bob)).status_code == 403


async def test_external_users_upload_to_the_public_store_and_the_quota_holds(
    api: httpx.AsyncClient, make_user: UserFactory, s3_stores: Stores, s3_bucket: str
) -> None:
    root, carol = await make_user("root", admin=True), await make_user("carol")
    await _sources(api, root, s3_stores, s3_bucket)
    assert (await api.patch("/api/v1/users/carol", json={"user_type": "external"}, headers=root)).status_code == 200
    assert (await api.post(WS, json={"slug": "ext", "name": "ext"}, headers=carol)).status_code == 201
    ds = (await api.post(f"{WS}/ext/models", json={"name": "llama-tiny"}, headers=carol)).json()["id"]
    r = await api.post(f"{WS}/ext/models/{ds}/versions", json={}, headers=carol)
    assert r.status_code == 201 and r.json()["primary_source"] == "cloud", r.text
    r = await api.patch(f"{WS}/ext/quota", json={"storage_bytes": 1000}, headers=root)
    assert r.status_code == 200, r.text
    body = {"path": "weights.safetensors", "size": 1001, "sha256": "0" * 64}
    r = await api.post(f"{WS}/ext/models/{ds}/versions/1/uploads", json=body, headers=carol)
    assert r.status_code == 400 and "quota allows 1000" in r.text and '"size"' in r.text, r.text
    r = await api.post(f"{WS}/ext/models/{ds}/versions/1/uploads", json={**body, "size": 1000}, headers=carol)
    assert r.status_code == 201, r.text
    r = await api.delete(f"{WS}/ext/models/{ds}/versions/1/uploads/{r.json()['id']}", headers=carol)
    assert r.status_code == 204  # aborted: its bytes no longer count
    r = await api.post(f"{WS}/ext/models/{ds}/versions/1/uploads", json={**body, "size": 1000}, headers=carol)
    assert r.status_code == 201, r.text
    # the store drops the open upload (its lifecycle rules, an admin): the same file again starts a new one
    store = s3_stores.b.client()
    for open_upload in store.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []):
        store.abort_multipart_upload(Bucket=s3_bucket, Key=open_upload["Key"], UploadId=open_upload["UploadId"])
    again = await api.post(f"{WS}/ext/models/{ds}/versions/1/uploads", json={**body, "size": 1000}, headers=carol)
    assert again.status_code == 201 and again.json()["id"] != r.json()["id"], again.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("", {"name": "../up"}, "name"),
        ("", {"name": "ok", "tags": [f"t{i}" for i in range(21)]}, "tags"),
        ("", {"name": "ok", "description": "x" * 2001}, "description"),
        ("/uploads", {"path": "a/../../etc/passwd", "size": 1, "sha256": "0" * 64}, "path"),
        ("/uploads", {"path": "/abs", "size": 1, "sha256": "0" * 64}, "path"),
        ("/uploads", {"path": "a//b", "size": 1, "sha256": "0" * 64}, "path"),
        ("/uploads", {"path": "a", "size": 1, "sha256": "XYZ"}, "sha256"),
        ("/uploads", {"path": "a", "size": -1, "sha256": "0" * 64}, "size"),
    ],
)
async def test_bad_input_names_the_field(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    s3_stores: Stores,
    s3_bucket: str,
    path: str,
    body: dict[str, object],
    field: str,
) -> None:
    root, alice = await make_user("root", admin=True), await make_user("alice")
    await _sources(api, root, s3_stores, s3_bucket)
    assert (await api.post(WS, json={"slug": "lab", "name": "lab"}, headers=alice)).status_code == 201
    url = f"{WS}/lab/datasets"
    if path:
        ds = (await api.post(url, json={"name": "d"}, headers=alice)).json()["id"]
        assert (await api.post(f"{url}/{ds}/versions", json={}, headers=alice)).status_code == 201
        url = f"{url}/{ds}/versions/1{path}"
    r = await api.post(url, json=body, headers=alice)
    assert r.status_code == 400 and field in r.text, r.text


async def _uploaded(api: httpx.AsyncClient, base: str, who: dict[str, str], path: str, data: bytes) -> None:
    """One small file uploaded and completed into version 1."""
    body = {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = await api.post(f"{base}/versions/1/uploads", json=body, headers=who)
    assert r.status_code == 201, r.text
    assert (await _put(r.json()["parts"][0], data)).status_code == 200
    done = await api.post(f"{base}/versions/1/uploads/{r.json()['id']}/complete", headers=who)
    assert done.status_code == 200, done.text


async def test_a_file_leaves_a_version_still_uploading_and_its_object_the_store(
    api: httpx.AsyncClient, make_user: UserFactory, s3_stores: Stores, s3_bucket: str
) -> None:
    root, alice, bob = await make_user("root", admin=True), await make_user("alice"), await make_user("bob")
    await _sources(api, root, s3_stores, s3_bucket)
    for slug, who in (("vision", alice), ("speech", bob)):
        assert (await api.post(WS, json={"slug": slug, "name": slug}, headers=who)).status_code == 201
    r = await api.post(f"{WS}/vision/datasets", json={"name": "coco"}, headers=alice)
    ds = r.json()["id"]
    base = f"{WS}/vision/datasets/{ds}"
    assert (await api.post(f"{base}/versions", json={}, headers=alice)).status_code == 201
    await _uploaded(api, base, alice, "keep.txt", b"kept\n")
    await _uploaded(api, base, alice, "oops/secret.env", b"TOKEN=x\n")
    key = f"remotegpu/vision/datasets/{ds}/v1/oops/secret.env"
    assert s3_stores.a.client().head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == 8

    files = f"{base}/versions/1/files"
    assert (await api.delete(files, params={"path": "oops/secret.env"}, headers=bob)).status_code == 404  # not his
    assert (await api.delete(files, params={"path": "../x"}, headers=alice)).status_code == 400
    assert (await api.delete(files, params={"path": "nothing"}, headers=alice)).status_code == 404
    r = await api.delete(files, params={"path": "oops/secret.env"}, headers=alice)
    assert r.status_code == 204, r.text
    assert [f["path"] for f in (await api.get(files, headers=alice)).json()] == ["keep.txt"]
    listed = s3_stores.a.client().list_objects_v2(Bucket=s3_bucket, Prefix=f"remotegpu/vision/datasets/{ds}/v1/")
    assert [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])] == ["keep.txt"]
    audit = (await api.get("/api/v1/audit", params={"action": "dataset.file_remove"}, headers=root)).json()
    assert [a["details"]["path"] for a in audit["items"]] == ["oops/secret.env"]

    r = await api.post(f"{base}/versions/1/finish", headers=alice)
    assert r.status_code == 200 and r.json()["file_count"] == 1, r.text
    r = await api.delete(files, params={"path": "keep.txt"}, headers=alice)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "version", r.text  # ready: never changes
