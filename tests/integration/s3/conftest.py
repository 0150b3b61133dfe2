"""Two real S3 stores (SeaweedFS, tests/s3.py) for the datasets tests: started once per test process, side by
side, on random free ports; stopped by PID at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.s3 import Stores, running_stores


@pytest.fixture(scope="session")
def s3_stores() -> Iterator[Stores]:
    """Stores A and B: independent servers (own data, ports and process), one key pair."""
    with running_stores(2) as (a, b):
        yield Stores(a, b)


@pytest.fixture
def s3_bucket(s3_stores: Stores) -> Iterator[str]:
    """A fresh, empty bucket on store A, deleted with its objects afterwards."""
    client = s3_stores.a.client()
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name
    if s3_stores.a.running:
        client.delete_bucket(Bucket=name)  # SeaweedFS deletes a bucket with objects in it (allowDeleteBucketNotEmpty)
