"""The S3 store fixture itself: real, separate, signing, persistent servers (what the datasets tests rely on)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.s3 import REPO, StoreError, Stores, checked_weed

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIB = 1024 * 1024


def test_put_get_keeps_user_metadata(s3_stores: Stores, s3_bucket: str) -> None:
    client = s3_stores.a.client()
    body = os.urandom(64 * 1024)
    metadata = {"sha256": hashlib.sha256(body).hexdigest(), "origin": "tests"}
    client.put_object(Bucket=s3_bucket, Key="dir/obj.bin", Body=body, Metadata=metadata, ContentType="x-test/bin")

    got = client.get_object(Bucket=s3_bucket, Key="dir/obj.bin")
    assert got["Body"].read() == body
    assert got["Metadata"] == metadata
    assert got["ContentType"] == "x-test/bin"
    assert client.head_object(Bucket=s3_bucket, Key="dir/obj.bin")["Metadata"] == metadata


def test_stores_are_separate_and_check_keys(s3_stores: Stores, s3_bucket: str) -> None:
    a, b = s3_stores
    assert a.endpoint != b.endpoint and a.data_dir != b.data_dir
    assert s3_bucket in {bucket["Name"] for bucket in a.client().list_buckets()["Buckets"]}
    assert s3_bucket not in {bucket["Name"] for bucket in b.client().list_buckets()["Buckets"]}

    b.secret_key, secret = "not-the-secret", b.secret_key
    try:
        with pytest.raises(ClientError) as refused:
            b.client().list_buckets()
    finally:
        b.secret_key = secret
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_multipart_upload_completes(s3_stores: Stores, s3_bucket: str) -> None:
    client = s3_stores.a.client()
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB)]
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="big.bin")
    done: list[CompletedPartTypeDef] = []
    for number, part in enumerate(parts, start=1):
        answer = client.upload_part(
            Bucket=s3_bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number, Body=part
        )
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
    client.complete_multipart_upload(
        Bucket=s3_bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )

    head = client.head_object(Bucket=s3_bucket, Key="big.bin")
    assert head["ContentLength"] == 10 * MIB
    assert head["ETag"].strip('"').endswith("-2")
    body = client.get_object(Bucket=s3_bucket, Key="big.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts)).digest()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_object_survives_sigkill_and_restart(s3_stores: Stores) -> None:
    store = s3_stores.b
    client = store.client()
    bucket = f"kill-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    body = os.urandom(3 * MIB)
    client.put_object(Bucket=bucket, Key="before.bin", Body=body)
    pid = store.pid
    assert pid is not None

    store.kill()
    assert store.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        client.put_object(Bucket=bucket, Key="during.bin", Body=b"lost")
    assert time.monotonic() - started < 5

    store.restart()
    assert store.pid not in (None, pid)
    got = client.get_object(Bucket=bucket, Key="before.bin")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=bucket, Key="during.bin")
    assert missing.value.response["Error"]["Code"] == "404"
    client.delete_bucket(Bucket=bucket)


def test_presigned_get_is_signed_and_expires(s3_stores: Stores, s3_bucket: str) -> None:
    client = s3_stores.a.client()
    client.put_object(Bucket=s3_bucket, Key="shared.txt", Body=b"presigned body")
    params = {"Bucket": s3_bucket, "Key": "shared.txt"}

    url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    answer = httpx.get(url, timeout=5)
    assert answer.status_code == 200 and answer.content == b"presigned body"

    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    signature = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = parts._replace(query=urllib.parse.urlencode(query)).geturl()
    assert httpx.get(tampered, timeout=5).status_code == 403

    short = client.generate_presigned_url("get_object", Params=params, ExpiresIn=1)
    time.sleep(2)
    assert httpx.get(short, timeout=5).status_code == 403


def test_a_binary_other_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    impostor = tmp_path / "weed"
    impostor.write_bytes(b"#!/bin/sh\nexit 0\n")
    impostor.chmod(0o755)
    with pytest.raises(StoreError, match="refusing"):
        checked_weed(impostor)

    dev_up = subprocess.run(
        [str(REPO / "deploy/dev/s3/up")],
        env={"PATH": os.environ["PATH"], "REMOTEGPU_DEV_STATE": str(tmp_path), "REMOTEGPU_WEED": str(impostor)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dev_up.returncode != 0 and "refusing to start it" in dev_up.stderr
    assert dev_up.stdout == "" and not (tmp_path / "s3/local/weed.pid").exists()
