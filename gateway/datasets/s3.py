"""boto3 clients for storage sources: one per source and key version, path-style, with bounded timeouts.

The gateway's own calls (health checks, multipart bookkeeping, presigning) go through these. Retries are few
and timeouts short: a dead store must be noticed in seconds, not after the SDK's minutes of retrying (rclone and
boto3 both wait minutes with their defaults: ../shared/notes/s3-stores.md), and failover is routing's job.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

_lock = threading.Lock()
_clients: dict[tuple[str, str, str, str, float], S3Client] = {}


def make_client(endpoint: str, region: str | None, access_key: str, secret_key: str, *, timeout: float) -> S3Client:
    """A client for this endpoint and key pair (shared: boto3 clients are thread-safe, their creation is slow)."""
    key = (endpoint, region or "", access_key, secret_key, timeout)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint,
                region_name=region or "us-east-1",
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                config=Config(
                    s3={"addressing_style": "path"},
                    signature_version="s3v4",
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                    max_pool_connections=32,
                ),
            )
            if len(_clients) > 256:  # keys rotated many times over: start again
                _clients.clear()
            _clients[key] = client
        return client
