"""CLI upload vs boto3: one big file into the same real S3 store (SeaweedFS ``weed mini``, tests/s3.py).

A real ``remotegpu serve`` (SQLite) has that store as its one storage source. Each round, in turn:

* the CLI's upload (gateway.client.data_commands.upload_files, what ``remotegpu dataset upload NAME FILE`` runs,
  in this process): the file's SHA-256, the upload planned by the gateway, its parts PUT straight to the store
  through presigned URLs by ``--workers`` threads (the CLI's default unless --workers is given), each part checked,
  the upload completed and the version finished (the gateway checks sizes and records the checksum);
* boto3's own ``upload_file`` to the same store and bucket, its defaults (8 MiB parts, 10 threads), no checksum
  of ours.

Both read the file from the page cache (it is read once before the first round). It prints each round's times,
the medians, and the ratio boto3 time / CLI time (goal >= 0.9).

    .venv/bin/python bench/upload.py [--rounds 3] [--mib 1024] [--workers N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.client.api import GatewayClient  # noqa: E402
from gateway.client.data_commands import DataApi, upload_files, walk  # noqa: E402
from tests.s3 import S3Store, running_stores  # noqa: E402

MIB = 1024 * 1024
BUCKET = "bench-upload"
REMOTEGPU = [sys.executable, "-m", "gateway.cli"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024, help="size of the file (MiB)")
    parser.add_argument("--workers", type=int, default=None, help="the CLI's --workers (default: the CLI's own)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def gateway(workdir: Path, store: S3Store) -> Iterator[tuple[str, str]]:
    """``remotegpu serve`` on SQLite with ``store`` as its storage source: (url, an admin's token)."""
    env = {
        **os.environ,
        "REMOTEGPU_DATABASE_URL": f"sqlite:///{workdir}/gateway.db",
        "REMOTEGPU_SECRET_KEYS": base64.b64encode(os.urandom(32)).decode(),
    }
    subprocess.run([*REMOTEGPU, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run([*REMOTEGPU, "admin", "create-user", "root", "--no-password", "--admin"], env=env, check=True)
    token = subprocess.run(
        [*REMOTEGPU, "token", "create", "root"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (workdir / "serve.log").open("wb") as log:
        server = subprocess.Popen([*REMOTEGPU, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        for _ in range(150):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        body = {
            "name": "store", "type": "generic", "endpoint": store.endpoint, "bucket": BUCKET,
            "access_key": store.access_key, "secret_key": store.secret_key,
        }  # fmt: skip
        api.post("/storage-sources", json=body).raise_for_status()
        made = api.post("/workspaces", json={"slug": "bench", "name": "bench", "owner": "root"})
        assert made.status_code == 201, made.text
        yield url, token
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    args = parse_args()
    workers = args.workers or 4  # the CLI's --workers default (gateway.client.data_commands.workers_option)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp, running_stores(1) as (store,):
        workdir = Path(tmp)
        s3 = store.client()
        s3.create_bucket(Bucket=BUCKET)
        big = workdir / "model.safetensors"
        with big.open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(MIB))
        big.read_bytes()  # into the page cache for both
        size = big.stat().st_size
        with gateway(workdir, store) as (url, token):
            client = GatewayClient(url, token, workspace="bench", timeout=120)
            api = DataApi(client, "dataset", "bench")
            cli_times, boto_times = [], []
            for round_number in range(1, args.rounds + 1):
                name = f"weights-{round_number}"
                api.create({"name": name})
                started = time.perf_counter()
                done = upload_files(api, name, walk([big]).files, source=None, workers=workers, show=False, timeout=120)
                cli_times.append(time.perf_counter() - started)
                assert done.version["status"] == "ready" and done.sent == size, done
                key = f"boto/{uuid.uuid4().hex}/model.safetensors"
                started = time.perf_counter()
                s3.upload_file(str(big), BUCKET, key)
                boto_times.append(time.perf_counter() - started)
                assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
                print(
                    f"round {round_number}: CLI {cli_times[-1]:.2f} s ({size / MIB / cli_times[-1]:.0f} MiB/s), "
                    f"boto3 upload_file {boto_times[-1]:.2f} s ({size / MIB / boto_times[-1]:.0f} MiB/s)",
                    flush=True,
                )
            cli, boto = median(cli_times), median(boto_times)
            print(f"\n{args.mib} MiB, CLI --workers {workers}; medians: CLI {cli:.2f} s, boto3 {boto:.2f} s")
            print(f"ratio boto3 time / CLI time = {boto / cli:.2f}  (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
