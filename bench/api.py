"""Authenticated ``GET /api/v1/workspaces/{ws}`` vs a bare Litestar route, both on one uvicorn worker.

Both servers run as separate processes on 127.0.0.1 and are loaded by the same generator (wrk when installed,
else a closed-loop httpx client in its own process), with the same concurrency and duration, in one run.
Prints requests/s, p50 and p99 for each and the throughput ratio; the goal is at least 0.3x the bare route.

    .venv/bin/python bench/api.py [--backend sqlite|postgresql] [--duration 10] [--concurrency 32] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import psycopg

GOAL = 0.3
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("REMOTEGPU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


class Result(msgspec.Struct):
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(argv: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    """Run a server process until the block ends; stopped by its PID."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {argv} did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- load generators --------------------------------------------------------------------------------------

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
                 + summary.errors.write + summary.errors.timeout
  io.write(string.format('{"requests": %d, "seconds": %f, "p50": %f, "p99": %f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
"""


def load_wrk(url: str, headers: dict[str, str], duration: float, concurrency: int, workdir: Path) -> Result:
    script = workdir / "report.lua"
    script.write_text(WRK_SCRIPT)
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}s", "--latency", "-s", str(script), url]
    for name, value in headers.items():
        argv[1:1] = ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    data = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return Result(
        rps=data["requests"] / data["seconds"],
        p50_ms=data["p50"],
        p99_ms=data["p99"],
        requests=data["requests"],
        errors=data["errors"],
    )


async def _httpx_loop(url: str, headers: dict[str, str], duration: float, concurrency: int) -> Result:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10) as client:
        stop = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    ok = (await client.get(url)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return Result(
        rps=len(latencies) / elapsed, p50_ms=pick(0.5), p99_ms=pick(0.99), requests=len(latencies), errors=errors
    )


def load_httpx(url: str, headers: dict[str, str], duration: float, concurrency: int) -> Result:
    """Closed-loop httpx client in its own process, so it does not share a GIL with anything measured."""
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", url, json.dumps(headers), str(duration), str(concurrency)],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    return msgspec.json.decode(out.strip().splitlines()[-1], type=Result)


def measure(url: str, headers: dict[str, str], args: argparse.Namespace, workdir: Path) -> Result:
    if args.loadgen_tool == "wrk":
        load_wrk(url, headers, args.warmup, args.concurrency, workdir)
        return load_wrk(url, headers, args.duration, args.concurrency, workdir)
    load_httpx(url, headers, args.warmup, args.concurrency)
    return load_httpx(url, headers, args.duration, args.concurrency)


# --- the gateway under test -------------------------------------------------------------------------------


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"remotegpu_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--loadgen-tool", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is below {GOAL}")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="remotegpu-bench-") as tmp, database(args.backend, Path(tmp)) as url:
        workdir = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
        env.update(REMOTEGPU_DATABASE_URL=url, REMOTEGPU_LOG_LEVEL="WARNING", REMOTEGPU_PASSWORD="bench-password")
        cli(env, "db", "upgrade")
        cli(env, "admin", "create-user", "bench")
        token = cli(env, "token", "create", "bench")
        headers = {"Authorization": f"Bearer {token}"}

        bare_port, gw_port = free_port(), free_port()
        bare_argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench._bare:app",
            "--port",
            str(bare_port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        gw_argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gw_port), "--no-migrate"]
        bare_url, gw_base = f"http://127.0.0.1:{bare_port}/bare", f"http://127.0.0.1:{gw_port}"

        with server(bare_argv, env, bare_url, workdir / "bare.log"):
            bare = measure(bare_url, {}, args, workdir)
        with server(gw_argv, env, gw_base + "/readyz", workdir / "gateway.log"):
            created = httpx.post(
                gw_base + "/api/v1/workspaces", json={"slug": "bench-ws", "name": "Bench"}, headers=headers
            )
            created.raise_for_status()
            gateway = measure(gw_base + "/api/v1/workspaces/bench-ws", headers, args, workdir)

    ratio = gateway.rps / bare.rps
    print(
        f"load generator: {args.loadgen_tool}, {args.concurrency} connections, {args.duration:.0f} s, "
        f"database: {args.backend}, one uvicorn worker each"
    )
    print(f"{'':34} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, r in (("bare Litestar route", bare), ("GET /api/v1/workspaces/{ws}", gateway)):
        print(f"{label:34} {r.rps:10.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d}")
    print(f"ratio (gateway / bare route) throughput: {ratio:.2f}  (goal >= {GOAL:.2f})")
    if args.loadgen_tool == "httpx":
        print("NOTE: the httpx load generator saturates long before the servers do on small machines, which pushes")
        print("      the ratio towards 1; install wrk (apt-get install wrk) for meaningful numbers.")
    if bare.errors or gateway.errors:
        print("WARNING: errors during the run; the numbers are not valid")
        return 1
    return 1 if args.check and ratio < GOAL else 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--loadgen":
        _, _, target, hdrs, secs, conns = sys.argv
        result = asyncio.run(_httpx_loop(target, json.loads(hdrs), float(secs), int(conns)))
        print(msgspec.json.encode(result).decode())
        sys.exit(0)
    sys.exit(main())
