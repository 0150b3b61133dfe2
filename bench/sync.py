"""Sync engine vs rclone: copying a version between two real S3 stores (SeaweedFS ``weed mini``, tests/s3.py).

Store A holds two versions: (a) one file of --big-mib MiB (500) and (b) --small-count files of 64 KiB (2,000, in 8
folders), put there as an upload leaves them (our SHA-256 in their metadata, a manifest in the database). Each
round copies each version from A to a fresh prefix of B twice, in turn: with the gateway's engine
(gateway.datasets.sync: a manual full task, claimed and run by ``run_due_tasks``, timed from the claim to the
replica ready, database work included) and with ``rclone sync`` (Debian's rclone, defaults, its process start
included: about 0.1 s). Then, on (b): an incremental run with nothing changed, and one after 10 files on B were
rewritten with other bytes (the engine with an incremental task; rclone with ``--checksum``, which only lists, the
quickest of its comparisons). Every copy of the engine is checked: each file's size and checksum metadata on B as
the manifest says, and the incremental runs copy exactly 0 and 10 files. Last, one incremental run against B
with what the gateway knew of it forgotten (no SyncObject rows: a HEAD per file, as against a store another tool
filled).

It prints each round's times, the medians, and the ratios: throughput rclone time / engine time (goal >= 1.0 for
both sets) and incremental engine time / rclone --checksum time (goal <= 1.0).

    .venv/bin/python bench/sync.py [--rounds 3] [--big-mib 500] [--small-count 2000] [--backend sqlite|postgresql]

rclone is installed from Debian's package when missing (``apt-get install -y rclone``, as root or with sudo -n).
It runs with ``AWS_CA_BUNDLE`` removed from its environment (rclone 1.60 fails every S3 remote when it is set).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

import msgspec
import psycopg
from boto3.s3.transfer import TransferConfig
from sqlalchemy import delete, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.accounts.models import User  # noqa: E402
from gateway.actor import Actor  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.datasets import sources, sync  # noqa: E402
from gateway.datasets.models import (  # noqa: E402
    READY,
    Dataset,
    DatasetFile,
    DatasetVersion,
    Replica,
    StorageSource,
    SyncObject,
    SyncTask,
)
from gateway.datasets.schemas import StorageSourceCreate  # noqa: E402
from gateway.db.base import utcnow  # noqa: E402
from gateway.db.migrate import upgrade  # noqa: E402
from gateway.db.session import Database  # noqa: E402
from gateway.observability import configure_logging  # noqa: E402
from gateway.workspaces.models import Workspace  # noqa: E402
from tests.s3 import S3Store, running_stores  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
BUCKET = "bench"
PG_ADMIN = os.environ.get("REMOTEGPU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=500)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--only", choices=("big", "small"), default=None, help="copy only one of the two sets")
    parser.add_argument("--part-mib", type=int, default=None, help="engine part size (default: the engine's)")
    parser.add_argument("--part-workers", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    return parser.parse_args()


def ensure_rclone() -> str:
    found = shutil.which("rclone")
    if found:
        return found
    apt = ([] if os.geteuid() == 0 else ["sudo", "-n"]) + ["apt-get", "-q"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("rclone is missing: installing Debian's package", file=sys.stderr)
    for steps in ([["install", "-y", "rclone"]], [["update"], ["install", "-y", "rclone"]]):
        for step in steps:
            subprocess.run([*apt, *step], env=env, capture_output=True, check=False)
        found = shutil.which("rclone")
        if found:
            return found
    raise SystemExit("rclone is not installed and could not be installed")


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"remotegpu_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Set(msgspec.Struct):
    label: str
    version_id: int
    prefix: str
    """The version's prefix (under every store's own, here empty)."""
    files: dict[str, tuple[int, str]]
    """path -> (size, sha256)"""

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.files.values())


def rclone_config(path: Path, a: S3Store, b: S3Store) -> None:
    lines: list[str] = []
    for name, store in (("A", a), ("B", b)):
        lines += [
            f"[{name}]",
            "type = s3",
            "provider = Other",
            f"endpoint = {store.endpoint}",
            f"access_key_id = {store.access_key}",
            f"secret_access_key = {store.secret_key}",
            "force_path_style = true",
            "region = us-east-1",
            "",
        ]
    path.write_text("\n".join(lines))
    path.chmod(0o600)


def rclone(binary: str, config: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    started = time.perf_counter()
    subprocess.run([binary, "--config", str(config), *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


async def seed(database: Database, settings: Settings, a: S3Store, big_mib: int, small_count: int) -> list[Set]:
    """Store A's two versions and their rows (a user, a workspace, a dataset, storage source 'a')."""
    client = a.client()
    async with database.session() as session:
        user = User(name="bench", posix_name="bench")
        session.add(user)
        workspace = Workspace(slug="bench", name="bench", slurm_account="bench", currency="USD")
        session.add(workspace)
        await session.flush()
        dataset = Dataset(
            workspace_id=workspace.id, kind="dataset", name="bench", tags=[], shared_with=[], created_by=user.id
        )
        session.add(dataset)
        await session.commit()
        dataset_id = dataset.id
    source = await add_source(database, settings, "a", a, "")
    made: list[Set] = []
    for number, (label, files) in enumerate(
        (
            (f"1 x {big_mib} MiB", {"weights.bin": big_mib * MIB}),
            (f"{small_count} x 64 KiB", {f"d{i % 8}/f{i:05d}.bin": 64 * 1024 for i in range(small_count)}),
        ),
        start=1,
    ):
        prefix = f"bench/datasets/{dataset_id}/v{number}/"
        put = partial_put(client, prefix)
        with ThreadPoolExecutor(8) as pool:
            sums = dict(zip(files, pool.map(put, files.items()), strict=True))
        async with database.session() as session:
            version = DatasetVersion(
                dataset_id=dataset_id,
                version=number,
                primary_source_id=source,
                prefix=prefix,
                status=READY,
                size_bytes=sum(files.values()),
                file_count=len(files),
                ready_at=utcnow(),
            )
            session.add(version)
            await session.flush()
            session.add_all(
                DatasetFile(version_id=version.id, path=p, size=s, sha256=sums[p]) for p, s in files.items()
            )
            session.add(Replica(version_id=version.id, source_id=source, status=READY, bytes=version.size_bytes))
            await session.commit()
            made.append(Set(label, version.id, prefix, {p: (s, sums[p]) for p, s in files.items()}))
    return made


def partial_put(client: S3Client, prefix: str) -> Callable[[tuple[str, int]], str]:
    def put(item: tuple[str, int]) -> str:
        path, size = item
        data = os.urandom(size)
        digest = hashlib.sha256(data).hexdigest()
        if size > 16 * MIB:
            client.upload_fileobj(
                io.BytesIO(data),
                BUCKET,
                prefix + path,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=TransferConfig(multipart_chunksize=16 * MIB, max_concurrency=4),
            )
        else:
            client.put_object(Bucket=BUCKET, Key=prefix + path, Body=data, Metadata={"sha256": digest})
        return digest

    return put


async def add_source(database: Database, settings: Settings, name: str, store: S3Store, prefix: str) -> int:
    async with database.session() as session:
        made = await sources.create(
            session,
            Actor.system("bench"),
            settings,
            StorageSourceCreate(
                name=name,
                type="generic",
                endpoint=store.endpoint,
                bucket=BUCKET,
                access_key=store.access_key,
                secret_key=store.secret_key,
                prefix=prefix,
            ),
        )
        return made.id


async def engine_run(
    database: Database, settings: Settings, options: sync.SyncOptions, data: Set, source: int, target: int, mode: str
) -> tuple[float, SyncTask]:
    async with database.session() as session:
        task = SyncTask(
            version_id=data.version_id,
            source_id=source,
            target_id=target,
            policy="manual",
            mode=mode,
            status="queued",
            attempts=0,
            next_attempt_at=utcnow(),
        )
        session.add(task)
        await session.commit()
        task_id = task.id
    started = time.perf_counter()
    claimed = await sync.run_due_tasks(database, settings, options=options)
    elapsed = time.perf_counter() - started
    assert claimed == [task_id], claimed
    async with database.session() as session:
        done = await session.get_one(SyncTask, task_id)
    if done.status != "done":
        raise SystemExit(f"engine task {task_id} ended {done.status}: {done.last_error}")
    return elapsed, done


def verify(b: S3Store, prefix: str, data: Set) -> None:
    """Every file on B as the manifest says (size and checksum metadata)."""
    client = b.client()

    def one(path: str) -> None:
        head = client.head_object(Bucket=BUCKET, Key=prefix + path)
        size, digest = data.files[path]
        if (head["ContentLength"], head["Metadata"].get("sha256")) != (size, digest):
            raise SystemExit(f"{prefix}{path} on B is not as the manifest says")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, data.files))


def wipe(client: S3Client, prefix: str) -> None:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})


def rewrite(client: S3Client, prefix: str, paths: list[str]) -> None:
    for path in paths:
        client.put_object(Bucket=BUCKET, Key=prefix + path, Body=os.urandom(64 * 1024))


async def run(args: argparse.Namespace) -> int:
    binary = ensure_rclone()
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    options = sync.SyncOptions(
        **{
            k: v
            for k, v in {
                "part_size": args.part_mib * MIB if args.part_mib else None,
                "part_workers": args.part_workers,
                "workers": args.workers,
            }.items()
            if v is not None
        }
    )
    print(f"{version}; engine {options}; load {os.getloadavg()[0]:.2f}", flush=True)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="remotegpu-bench-sync-")))
        url = stack.enter_context(database(args.backend, workdir))
        a, b = stack.enter_context(running_stores(2))
        await asyncio.to_thread(upgrade, url)  # alembic runs its own event loop
        settings = Settings(
            database_url=url, log_level="WARNING", secret_keys=base64.b64encode(os.urandom(32)).decode()
        )
        db = Database(url)
        try:
            a.client().create_bucket(Bucket=BUCKET)
            b.client().create_bucket(Bucket=BUCKET)
            config = workdir / "rclone.conf"
            rclone_config(config, a, b)
            started = time.perf_counter()
            sets = await seed(db, settings, a, args.big_mib, args.small_count)
            print(f"seeded store A in {time.perf_counter() - started:.1f} s", flush=True)
            async with db.session() as session:
                source_a = await session.scalar(select(StorageSource.id).where(StorageSource.name == "a"))
            assert source_a is not None
            chosen = [s for s in sets if args.only is None or (args.only == "big") == (s is sets[0])]
            times: dict[str, dict[str, list[float]]] = {s.label: {"engine": [], "rclone": []} for s in chosen}
            last_target: dict[str, tuple[int, str, str]] = {}
            for round_ in range(args.rounds):
                for data in chosen:
                    tag = "big" if data is sets[0] else "small"
                    gw_prefix, rc_prefix = f"gw{round_}-{tag}/", f"rc{round_}-{tag}/"
                    target = await add_source(db, settings, f"b{round_}-{tag}", b, gw_prefix)
                    seconds, task = await engine_run(db, settings, options, data, source_a, target, "full")
                    verify(b, gw_prefix + data.prefix, data)
                    assert task.objects_copied == len(data.files)
                    rc = rclone(
                        binary, config, "sync", f"A:{BUCKET}/{data.prefix}", f"B:{BUCKET}/{rc_prefix}{data.prefix}"
                    )
                    times[data.label]["engine"].append(seconds)
                    times[data.label]["rclone"].append(rc)
                    mb = data.size / 1e6
                    print(f"round {round_ + 1} {data.label:>16}: engine {seconds:6.2f} s ({mb / seconds:6.1f} MB/s)"
                          f"  rclone {rc:6.2f} s ({mb / rc:6.1f} MB/s)", flush=True)  # fmt: skip
                    if round_ < args.rounds - 1:
                        wipe(b.client(), gw_prefix)
                        wipe(b.client(), rc_prefix)
                    else:
                        last_target[data.label] = (target, gw_prefix, rc_prefix)

            print()
            ratios: list[tuple[str, float, str]] = []
            for label, per in times.items():
                eng, rc = median(per["engine"]), median(per["rclone"])
                ratios.append((f"throughput {label}: rclone / engine", rc / eng, ">= 1.0"))
                print(f"median {label:>16}: engine {eng:6.2f} s  rclone {rc:6.2f} s")

            small = sets[1]
            if small.label in last_target:
                target, gw_prefix, rc_prefix = last_target[small.label]
                incremental: dict[str, list[float]] = {"engine": [], "rclone": [], "engine10": [], "rclone10": []}
                for _ in range(args.rounds):
                    seconds, task = await engine_run(db, settings, options, small, source_a, target, "incremental")
                    assert task.objects_copied == 0, task.objects_copied
                    incremental["engine"].append(seconds)
                    incremental["rclone"].append(
                        rclone(
                            binary,
                            config,
                            "sync",
                            "--checksum",
                            f"A:{BUCKET}/{small.prefix}",
                            f"B:{BUCKET}/{rc_prefix}{small.prefix}",
                        )
                    )
                    changed = sorted(small.files)[:: max(1, len(small.files) // 10)][:10]
                    rewrite(b.client(), gw_prefix + small.prefix, changed)
                    rewrite(b.client(), rc_prefix + small.prefix, changed)
                    seconds, task = await engine_run(db, settings, options, small, source_a, target, "incremental")
                    assert task.objects_copied == len(changed), task.objects_copied
                    verify(b, gw_prefix + small.prefix, small)
                    incremental["engine10"].append(seconds)
                    incremental["rclone10"].append(
                        rclone(
                            binary,
                            config,
                            "sync",
                            "--checksum",
                            f"A:{BUCKET}/{small.prefix}",
                            f"B:{BUCKET}/{rc_prefix}{small.prefix}",
                        )
                    )
                print(
                    "incremental, nothing changed: engine "
                    + ", ".join(f"{t:.2f}" for t in incremental["engine"])
                    + " s; rclone --checksum "
                    + ", ".join(f"{t:.2f}" for t in incremental["rclone"])
                    + " s"
                )
                print(
                    "incremental, 10 changed:      engine "
                    + ", ".join(f"{t:.2f}" for t in incremental["engine10"])
                    + " s; rclone --checksum "
                    + ", ".join(f"{t:.2f}" for t in incremental["rclone10"])
                    + " s"
                )
                for key, label in (("", "nothing changed"), ("10", "10 changed")):
                    eng, rc = median(incremental["engine" + key]), median(incremental["rclone" + key])
                    ratios.append((f"incremental, {label}: engine / rclone --checksum", eng / rc, "<= 1.0"))
                # what the first incremental run against a store the gateway never checked costs: a HEAD per file
                async with db.session() as session:
                    await session.execute(delete(SyncObject).where(SyncObject.target_id == target))
                    await session.commit()
                seconds, task = await engine_run(db, settings, options, small, source_a, target, "incremental")
                assert task.objects_copied == 0, task.objects_copied
                print(f"incremental, nothing changed, nothing known of B (a HEAD per file): engine {seconds:.2f} s")
            print()
            for label, ratio, goal in ratios:
                met = ratio >= 1.0 if goal.startswith(">=") else ratio <= 1.0
                print(f"{label:<58} {ratio:5.2f}  (goal {goal}: {'met' if met else 'NOT MET'})")
        finally:
            await db.dispose()
    return 0


def main() -> int:
    configure_logging("WARNING", "console")
    return asyncio.run(run(parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
