"""Authenticated ``GET /api/v1/workspaces/{ws}`` against a bare Litestar route, each on one uvicorn worker.

Both servers run as their own processes on 127.0.0.1 and are loaded, in the same run, by the same closed-loop
load generator with the same settings: ``wrk`` when installed, else an httpx client in a separate process.
Prints requests/s, p50 and p99 latency, errors and CPU use for each, and the throughput ratio gateway / bare.
The goal is a ratio of at least 0.3.

    .venv/bin/python bench/api.py [--backend sqlite|postgresql] [--duration 10] [--concurrency 32] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar import Litestar, get

GOAL = 0.3
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("REMOTEGPU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
WORKSPACE = {"slug": "bench-ws", "name": "Bench"}
START_TIMEOUT = 30.0
LOADGEN_WORKER = "--internal-httpx-loadgen"
"""First argument of this file run as the httpx load generator process."""
SATURATED = 0.9
"""A load generator using this much of a core is the bottleneck."""
IDLE = 0.5
"""A bare server using less than this much of a core was not loaded enough to compare against."""


# --- the baseline -----------------------------------------------------------------------------------------


@get("/bare")
async def bare() -> dict[str, str]:
    """A small dict, like a workspace without the work."""
    return {"slug": "bench-ws", "name": "Bench", "status": "active"}


def bare_app() -> Litestar:
    """The baseline app (``uvicorn --factory bench.api:bare_app``): one route, no database, no middleware."""
    return Litestar([bare], logging_config=None)


# --- servers ----------------------------------------------------------------------------------------------


class Result(msgspec.Struct):
    """One measured run of one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    seconds: float
    client_cpu: float | None = None
    """CPU seconds the load generator used per wall-clock second (1.0: one core saturated)."""
    server_cpu: float | None = None


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (all sockets held until every port is picked)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(name: str, argv: list[str], env: dict[str, str], ready_url: str, workdir: Path) -> Iterator[int]:
    """Run a server until the block ends and yield its PID; it is stopped by that PID."""
    log = workdir / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} server did not start ({' '.join(argv)}):\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- load generators --------------------------------------------------------------------------------------

# Counts every non-2xx response as an error (wrk itself only counts status >= 400) and prints one JSON line.
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non2xx") end
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %f, "p50": %f, "p99": %f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    bad + e.connect + e.read + e.write + e.timeout))
end
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, headers: dict[str, str], seconds: int, concurrency: int, script: Path) -> Result:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    cpu_before, began = children_cpu(), time.perf_counter()
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    client_cpu = (children_cpu() - cpu_before) / (time.perf_counter() - began)
    data = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return Result(
        rps=data["requests"] / data["seconds"],
        p50_ms=data["p50"],
        p99_ms=data["p99"],
        requests=data["requests"],
        errors=data["errors"],
        seconds=data["seconds"],
        client_cpu=client_cpu,
    )


async def httpx_load(url: str, headers: dict[str, str], warmup: float, duration: float, concurrency: int) -> Result:
    """Closed loop: ``concurrency`` tasks, each sending its next request when the last one is answered.

    Each task has its own client holding one keep-alive connection: one client with a pool sized to the
    concurrency (``httpx.Limits(max_connections=N)``) is 3-5x slower here, as its pool bookkeeping dominates.
    Prints ``warm`` once the warm-up is over, so the caller can start its own measurements then.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    latencies: list[float] = []
    errors = 0
    recording = False

    async def worker(client: httpx.AsyncClient, stop: float) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < stop:
            try:
                ok = 200 <= (await client.get(url)).status_code < 300
            except httpx.HTTPError:
                ok = False
            if recording:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(headers=headers, limits=limits, timeout=10))
            for _ in range(concurrency)
        ]
        await asyncio.gather(*(worker(c, time.perf_counter() + warmup) for c in clients))
        print("warm", flush=True)
        recording = True
        began, cpu_began = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(c, began + duration) for c in clients))
        elapsed = time.perf_counter() - began
        client_cpu = (time.process_time() - cpu_began) / elapsed
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return Result(
        rps=len(latencies) / elapsed,
        p50_ms=pick(0.5),
        p99_ms=pick(0.99),
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        client_cpu=client_cpu,
    )


def loadgen_main(argv: list[str]) -> None:
    """Entry point of the httpx load generator process: ``URL HEADERS_JSON WARMUP DURATION CONCURRENCY``."""
    url, headers, warmup, duration, concurrency = argv
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(httpx_load(url, json.loads(headers), float(warmup), float(duration), int(concurrency)))
    print(msgspec.json.encode(result).decode(), flush=True)


def measure(url: str, headers: dict[str, str], server_pid: int, args: argparse.Namespace, workdir: Path) -> Result:
    """Warm up, then measure one target; the server's CPU use is sampled over the measured part only."""
    if args.loadgen == "wrk":
        script = workdir / "report.lua"
        script.write_text(WRK_SCRIPT)
        run_wrk(url, headers, max(1, round(args.warmup)), args.concurrency, script)
        cpu_before, began = cpu_seconds(server_pid), time.perf_counter()
        result = run_wrk(url, headers, max(1, round(args.duration)), args.concurrency, script)
    else:
        cmd = [sys.executable, __file__, LOADGEN_WORKER, url, json.dumps(headers)]
        cmd += [str(args.warmup), str(args.duration), str(args.concurrency)]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT) as proc:
            assert proc.stdout is not None
            watchdog = threading.Timer(args.warmup + args.duration + 60, proc.kill)
            watchdog.start()
            try:
                if proc.stdout.readline().strip() != "warm":
                    raise RuntimeError("the load generator failed during warm-up")
                cpu_before, began = cpu_seconds(server_pid), time.perf_counter()
                lines = proc.stdout.read().strip().splitlines()
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"the load generator failed (exit status {proc.returncode})")
        result = msgspec.json.decode(lines[-1], type=Result)
    cpu_after, elapsed = cpu_seconds(server_pid), time.perf_counter() - began
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu = (cpu_after - cpu_before) / elapsed
    return result


# --- the gateway under test -------------------------------------------------------------------------------


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file in ``workdir`` or a new PostgreSQL database, dropped after."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    import psycopg

    name = f"remotegpu_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def remotegpu_command() -> list[str]:
    """The ``remotegpu`` console script next to this interpreter, else on PATH, else ``python -m gateway.cli``."""
    script = Path(sys.executable).parent / "remotegpu"
    if script.exists():
        return [str(script)]
    found = shutil.which("remotegpu")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*remotegpu_command(), *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"remotegpu {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def remove_user(user: str) -> None:
    """``userdel --remove`` a throw-away POSIX user once its processes are gone (userdel refuses a user whose
    processes -- a session's sshd, a job in KillWait -- still run); a warning if it cannot."""
    for _ in range(100):
        if subprocess.run(["pgrep", "-u", user], capture_output=True, check=False).returncode != 0:
            break
        time.sleep(0.2)
    removed = subprocess.run(["userdel", "--remove", user], check=False, capture_output=True, text=True)
    if removed.returncode != 0:
        print(f"warning: userdel {user}: {removed.stderr.strip()}", file=sys.stderr)


# --- report -----------------------------------------------------------------------------------------------


def combine(results: list[Result]) -> Result:
    """Median over rounds (the only value when there is one round); errors and requests are summed."""
    cpus = [r.server_cpu for r in results if r.server_cpu is not None]
    clients = [r.client_cpu for r in results if r.client_cpu is not None]
    return Result(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        seconds=sum(r.seconds for r in results),
        server_cpu=statistics.median(cpus) if cpus else None,
        client_cpu=statistics.median(clients) if clients else None,
    )


def cpu_per_request_us(r: Result) -> float | None:
    """Server CPU microseconds per request: what throughput would be if the server alone were the limit."""
    return None if r.server_cpu is None or not r.requests else r.server_cpu * r.seconds / r.requests * 1e6


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def print_table(rows: list[tuple[str, Result]]) -> None:
    heads = ("req/s", "p50 ms", "p99 ms", "requests", "errors", "srv CPU", "gen CPU", "CPU us/req")
    widths = (9, 8, 8, 9, 7, 8, 8, 11)
    print(f"{'target':40} " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for label, r in rows:
        per_request = cpu_per_request_us(r)
        cost = "n/a" if per_request is None else f"{per_request:.0f}"
        print(
            f"{label:40} {r.rps:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.requests:9d} {r.errors:7d} "
            f"{percent(r.server_cpu):>8} {percent(r.client_cpu):>8} {cost:>11}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite", help="gateway database")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per target and round")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="connections, each one request at a time")
    parser.add_argument("--rounds", type=int, default=1, help="alternate bare/gateway this often; medians reported")
    parser.add_argument(
        "--loadgen",
        choices=["wrk", "httpx"],
        default="wrk",
        help="load generator (default: wrk, installed with apt-get when missing; httpx cannot load a bare server)",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 unless the run is valid and the ratio is at least {GOAL}"
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --concurrency and --rounds >= 1")
    if args.loadgen == "wrk" and not ensure_wrk():
        parser.error("wrk is not installed and apt-get could not install it (run as root, or: apt-get install wrk)")
    return args


def ensure_wrk() -> bool:
    """``wrk`` on PATH, installed from Debian's package when missing (as root, or through ``sudo -n``); the
    package lists are updated first only if the first try fails (a fresh machine has none)."""
    if shutil.which("wrk"):
        return True
    apt = ([] if os.geteuid() == 0 else ["sudo", "-n"]) + ["apt-get", "-q"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("wrk is missing: installing Debian's package", file=sys.stderr)
    for steps in ([["install", "-y", "wrk"]], [["update"], ["install", "-y", "wrk"]]):
        for step in steps:
            subprocess.run([*apt, *step], env=env, capture_output=True, check=False)
        if shutil.which("wrk"):
            return True
    return False


def main() -> int:
    args = parse_args()
    bare_rounds: list[Result] = []
    gw_rounds: list[Result] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="remotegpu-bench-")))
        db_url = stack.enter_context(database(args.backend, workdir))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
        env.update(REMOTEGPU_DATABASE_URL=db_url, REMOTEGPU_LOG_LEVEL="WARNING", REMOTEGPU_PASSWORD=uuid.uuid4().hex)
        cli(env, "db", "upgrade")
        cli(env, "admin", "create-user", "bench")
        headers = {"Authorization": f"Bearer {cli(env, 'token', 'create', 'bench').splitlines()[-1]}"}

        bare_port, gw_port = free_ports(2)
        bare_url = f"http://127.0.0.1:{bare_port}/bare"
        gw = f"http://127.0.0.1:{gw_port}"
        gw_url = f"{gw}/api/v1/workspaces/{WORKSPACE['slug']}"
        bare_argv = [sys.executable, "-m", "uvicorn", "--factory", "bench.api:bare_app", "--host", "127.0.0.1"]
        bare_argv += ["--port", str(bare_port), "--workers", "1", "--log-level", "warning", "--no-access-log"]
        bare_argv += ["--no-server-header"]
        gw_argv = [*remotegpu_command(), "serve", "--host", "127.0.0.1", "--port", str(gw_port), "--no-migrate"]
        bare_pid = stack.enter_context(server("bare", bare_argv, env, bare_url, workdir))
        gw_pid = stack.enter_context(server("gateway", gw_argv, env, f"{gw}/readyz", workdir))

        httpx.post(f"{gw}/api/v1/workspaces", json=WORKSPACE, headers=headers, timeout=10).raise_for_status()
        probe = httpx.get(gw_url, headers=headers, timeout=10)
        if probe.status_code != 200:
            raise RuntimeError(f"GET {gw_url} answered {probe.status_code}: {probe.text}")

        for _ in range(args.rounds):
            bare_rounds.append(measure(bare_url, {}, bare_pid, args, workdir))
            gw_rounds.append(measure(gw_url, headers, gw_pid, args, workdir))

    bare_res, gw_res = combine(bare_rounds), combine(gw_rounds)
    ratios = [g.rps / b.rps for b, g in zip(bare_rounds, gw_rounds, strict=True)]
    ratio = statistics.median(ratios)
    tool = "wrk (1 thread)" if args.loadgen == "wrk" else "httpx.AsyncClient (closed loop, own process)"
    print("API benchmark: authenticated GET /api/v1/workspaces/{ws} vs a bare Litestar route")
    print(f"load generator: {tool}, {args.concurrency} keep-alive connections")
    print(
        f"per target: {args.warmup:g} s warm-up + {args.duration:g} s measured, {args.rounds} round(s); "
        f"one uvicorn worker each on 127.0.0.1; gateway database: {args.backend}; CPUs: {os.cpu_count()}"
    )
    print()
    rows = [("bare Litestar route  GET /bare", bare_res), ("gateway  GET /api/v1/workspaces/{ws}", gw_res)]
    if args.rounds > 1:
        for i, (b, g) in enumerate(zip(bare_rounds, gw_rounds, strict=True), 1):
            rows += [(f"  round {i}: bare", b), (f"  round {i}: gateway", g)]
    print_table(rows)
    print("srv CPU / gen CPU: CPU time of the server / load generator per second (100% = one core busy);")
    print("CPU us/req: CPU time (user + system) of the server process per request")
    print()
    if args.rounds > 1:
        print("ratio per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    bare_cost, gw_cost = cpu_per_request_us(bare_res), cpu_per_request_us(gw_res)
    if bare_cost and gw_cost:
        print(
            f"ratio (bare / gateway) server CPU per request: {bare_cost / gw_cost:.2f}  (what the throughput ratio "
            "would be if only server CPU limited it)"
        )
    problems = []
    if bare_res.errors or gw_res.errors:
        problems.append(f"{bare_res.errors + gw_res.errors} requests failed or were not 2xx")
    if (bare_res.client_cpu or 0) >= SATURATED or (bare_res.server_cpu is not None and bare_res.server_cpu < IDLE):
        problems.append(
            f"the load generator could not load the bare server (generator CPU {percent(bare_res.client_cpu)}, "
            f"server CPU {percent(bare_res.server_cpu)}), which pushes the ratio towards 1"
            + ("; install wrk" if args.loadgen == "httpx" else "")
        )
    verdict = "NOT VALID" if problems else "OK" if ratio >= GOAL else "BELOW GOAL"
    print(f"ratio (gateway / bare route) throughput: {ratio:.2f}  (goal >= {GOAL:.2f})  {verdict}")
    for problem in problems:
        print(f"WARNING: {problem}")
    return 1 if args.check and verdict != "OK" else 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == LOADGEN_WORKER:
        loadgen_main(sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
