"""Environment benchmarks on the local Slurm cluster, each against a baseline measured in the same run.

1. reach: create -> SSH reachable. Gateway: ``POST .../environments``, ``GET .../environments/{id}`` until ``ssh``
   is set, then ``ssh -p PUBLIC_PORT`` through the gateway's port mapping until it answers. Baseline: the same
   batch script (the one the gateway submitted, read back with ``scontrol write batch_script``; its callback sent
   to a tiny local server instead of the gateway) submitted with raw ``runuser -u USER -- sbatch``, ``squeue``
   until RUNNING, then ``ssh`` to the port the supervisor reported until it answers. Alternated ``--rounds``
   times; medians; goal gateway / raw <= 1.1x. The worker polls Slurm every ``--poll-interval`` s and the raw
   side runs ``squeue`` every ``--poll-interval`` s; both clients look again every ``--client-interval`` s.
2. scp: ``scp -o Compression=no`` of a 500 MB file through the gateway's mapping vs straight to the session's
   sshd (127.0.0.1:node_port), same key, same file, into /dev/shm; alternated ``--scp-rounds`` times; medians;
   goal >= 0.9x throughput. Also the CPU per MB of scp, of sshd and of the relay (the gateway's process).
3. poll: slurmctld requests (sdiag) of one worker cycle with 1, 20 and 50 environments (most of them pending:
   the two-node cluster runs 8 at most); goal: constant. Also where a cycle's time goes.

    .venv/bin/python bench/environments.py [--only reach,scp,poll] [--rounds 5] [--scp-rounds 3]
                                           [--scp-mb 500] [--poll-interval 0.5] [--client-interval 0.1]
                                           [--check]
Runs as root (it creates a POSIX user and starts its own gateway and worker); needs deploy/dev/slurm/up (run by
it) and OpenSSH's ssh, sshd and scp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from bench.api import cli, cpu_seconds, database, free_ports, remotegpu_command, remove_user, server
from bench.jobs import children_cpu, controller_requests, slurm_env
from gateway.config import load_settings
from gateway.db.session import Database
from gateway.environments.ports import release_idle_mappings
from gateway.environments.service import release_ended_sessions
from gateway.environments.supervisor import descendants, process_table
from gateway.jobs.poller import Poller
from gateway.jobs.service import JobService
from gateway.observability import configure_logging
from gateway.slurm_client import make_slurm_client
from gateway.worker import cycle
from gateway.workspaces.slurm_sync import AccountSync
from slurm.cli import CliSlurmClient

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("reach", "scp", "poll")
SUPERVISOR = ROOT / ".venv/bin/remotegpu-session"
WS = "/api/v1/workspaces/bench"
REACH_GOAL, SCP_GOAL = 1.1, 0.9
SMALL = {"cpus": 1, "mem_mib": 256, "time_minutes": 30, "services": ["ssh"]}


# --- the raw side's callback server ----------------------------------------------------------------------


@dataclass
class Callbacks:
    """What a tiny local stand-in for the gateway's callback saw: per session token, when and which ports."""

    public_key: str
    reported: dict[str, tuple[float, str, dict[str, int]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def callback_server(callbacks: Callbacks) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            with callbacks.lock:
                callbacks.reported[token] = (time.monotonic(), body["host"], dict(body["services"]))
            answer = json.dumps({"authorized_keys": [callbacks.public_key]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the benchmark prints its own lines."""

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


# --- set-up shared by the phases -------------------------------------------------------------------------


@dataclass
class Bench:
    conf: str
    user: str
    account: str
    home: str
    http: httpx.AsyncClient
    headers: dict[str, str]
    key: Path
    gateway_env: dict[str, str]
    gateway_pid: int
    tmp: Path
    poll_interval: float
    client_interval: float
    names: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    @property
    def raw_env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": self.conf}

    async def run(self, *argv: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env or self.raw_env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate(stdin)
        return proc.returncode or 0, out.decode(errors="replace")

    def ssh_argv(self, program: str, port: int) -> list[str]:
        port_flag = "-P" if program == "scp" else "-p"
        return [
            program,
            port_flag,
            str(port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]

    async def ssh_answers(self, host: str, port: int) -> bool:
        code, _ = await self.run(*self.ssh_argv("ssh", port), f"{self.user}@{host}", "true")
        return code == 0

    async def squeue_state(self, slurm_id: int) -> str:
        _, out = await self.run("squeue", "-h", "-j", str(slurm_id), "-o", "%T")
        return out.strip()

    async def wait_gone(self, slurm_ids: list[int], within: float = 60) -> None:
        """Until Slurm has let go of the jobs (their nodes are free for the next round)."""
        deadline = time.monotonic() + within
        for slurm_id in slurm_ids:
            while (await self.squeue_state(slurm_id)) not in ("", "COMPLETED", "CANCELLED"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Slurm job {slurm_id} did not end within {within:.0f} s")
                await asyncio.sleep(0.2)

    async def create(self, name: str, **spec: Any) -> str:
        r = await self.http.post(f"{WS}/environments", json={"name": name, **SMALL, **spec}, headers=self.headers)
        if r.status_code != 201:
            raise RuntimeError(f"POST environments: {r.status_code} {r.text}")
        return str(r.json()["id"])

    async def view(self, env_id: str) -> dict[str, Any]:
        r = await self.http.get(f"{WS}/environments/{env_id}", headers=self.headers)
        r.raise_for_status()
        found: dict[str, Any] = r.json()
        return found

    async def delete(self, env_id: str) -> int | None:
        """Delete an environment; its session's Slurm job id (cancelled), if it had one."""
        view = await self.view(env_id)
        (await self.http.delete(f"{WS}/environments/{env_id}", headers=self.headers)).raise_for_status()
        session = view.get("session") or {}
        return session.get("slurm_job_id")

    def session_log(self, env_id: str, slurm_id: int | None) -> str:
        path = Path(self.home, ".remotegpu/environments", env_id, f"session-{slurm_id}.log")
        try:
            return path.read_text()[-3000:]
        except OSError:
            return f"(no {path})"


@contextlib.contextmanager
def worker(env: dict[str, str], interval: float, logs: Path) -> Iterator[int]:
    """``remotegpu worker`` polling every ``interval`` s for the length of the block; stopped by its PID."""
    with (logs / "worker.log").open("ab") as log:
        proc = subprocess.Popen(
            [*remotegpu_command(), "worker"],
            env={**env, "REMOTEGPU_POLL_INTERVAL_SECONDS": str(interval)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- 1. create -> SSH reachable ----------------------------------------------------------------------------


@dataclass
class Reach:
    """One create -> reachable, in seconds from the start (sbatch / POST)."""

    total: float
    submitted: float
    """sbatch / POST returned."""
    running: float
    """squeue said RUNNING / the API said starting or running (the worker's poll saw RUNNING)."""
    script: float
    """The job's script started (its process's start time: the supervisor is exec'd in that process)."""
    reported: float
    """The supervisor's callback arrived (raw: the local server; gateway: the session's ``reported_at``)."""
    visible: float
    """Raw: the port known and the job seen RUNNING; gateway: the API showed ``ssh``."""
    ssh_tries: int

    def stages(self) -> dict[str, float]:
        return {
            "submit": self.submitted,
            "Slurm starts the script": self.script - self.submitted,
            "supervisor to callback": self.reported - self.script,
            "callback to visible": self.visible - self.reported,
            "ssh": self.total - self.visible,
        }


def script_started(state_dir: str, t0: float) -> float:
    """When the session's job script started, in seconds after ``t0`` (monotonic): the start time of the process
    running ``remotegpu-session --state-dir STATE_DIR`` (the script exec's it, so it is the script's process)."""
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"--state-dir" in argv and argv[argv.index(b"--state-dir") + 1].decode() == state_dir:
            started = int(stat.rsplit(")", 1)[1].split()[19]) / tick  # seconds after boot
            ago = time.clock_gettime(time.CLOCK_BOOTTIME) - started
            return time.monotonic() - ago - t0
    raise RuntimeError(f"no supervisor process for {state_dir}")


async def gateway_reach(b: Bench) -> tuple[Reach, str, int]:
    """One create -> reachable through the gateway; the environment's id and its Slurm job id."""
    wall0, t0 = time.time(), time.monotonic()
    env_id = await b.create(f"r{next(b.names)}")
    submitted = time.monotonic() - t0
    running = None
    while True:
        view = await b.view(env_id)
        now = time.monotonic() - t0
        if view["state"] in ("starting", "running") and running is None:
            running = now
        if view["state"] in ("failed", "stopped"):
            slurm_id = (view.get("session") or {}).get("slurm_job_id")
            raise RuntimeError(
                f"environment {env_id} {view['state']}: {view['reason']}\n{b.session_log(env_id, slurm_id)}"
            )
        if view["state"] == "running" and view["ssh"] is not None and running is not None:
            visible = now
            break
        if now > 120:
            raise RuntimeError(f"environment {env_id} not reachable in 120 s: {view}")
        await asyncio.sleep(b.client_interval)
    access, session = view["ssh"], view["session"]
    reported = datetime.fromisoformat(session["reported_at"]).timestamp() - wall0
    tries = 0
    while True:
        tries += 1
        if await b.ssh_answers(access["host"], access["port"]):
            break
        if time.monotonic() - t0 > 150:
            raise RuntimeError(
                f"ssh -p {access['port']} did not answer:\n{b.session_log(env_id, session['slurm_job_id'])}"
            )
        await asyncio.sleep(b.client_interval)
    total = time.monotonic() - t0
    script = script_started(f"{b.home}/.remotegpu/environments/{env_id}", t0)
    return Reach(total, submitted, running, script, reported, visible, tries), env_id, int(session["slurm_job_id"])


async def raw_reach(b: Bench, template: Template, callbacks: Callbacks) -> tuple[Reach, int]:
    """The same script with raw sbatch as the user, squeue until RUNNING, ssh until it answers."""
    state_dir, script = template.fresh()
    token = uuid.uuid4().hex
    env = {**b.raw_env, "REMOTEGPU_SESSION_TOKEN": token}
    argv = ["runuser", "-u", b.user, "--", "sbatch", "--parsable", f"--account={b.account}", f"--chdir={b.home}"]
    t0 = time.monotonic()
    code, out = await b.run(*argv, env=env, stdin=script.encode())
    if code != 0:
        raise RuntimeError(f"sbatch failed: {out}")
    slurm_id = int(out.strip().split(";", 1)[0])
    submitted = time.monotonic() - t0
    while True:  # squeue every poll interval, as the worker polls
        state = await b.squeue_state(slurm_id)
        if state == "RUNNING":
            break
        if state not in ("PENDING", "CONFIGURING"):
            raise RuntimeError(f"raw job {slurm_id}: {state or 'gone'}")
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"raw job {slurm_id} not running in 120 s")
        await asyncio.sleep(b.poll_interval)
    running = time.monotonic() - t0
    while token not in callbacks.reported:  # where its sshd listens, as the gateway's GET would tell
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"raw job {slurm_id}: no callback in 120 s")
        await asyncio.sleep(b.client_interval)
    visible = time.monotonic() - t0
    at, host, services = callbacks.reported[token]
    tries = 0
    while True:
        tries += 1
        if await b.ssh_answers(host, services["ssh"]):
            break
        if time.monotonic() - t0 > 150:
            raise RuntimeError(f"raw job {slurm_id}: ssh -p {services['ssh']} did not answer")
        await asyncio.sleep(b.client_interval)
    total = time.monotonic() - t0
    return Reach(total, submitted, running, script_started(state_dir, t0), at - t0, visible, tries), slurm_id


@dataclass
class Template:
    """The gateway's session script, made into the raw side's: its callback to ``callback_url``."""

    script: str
    env_id: str
    state_dir: str
    gateway_url: str
    callback_url: str

    def fresh(self) -> tuple[str, str]:
        """A state directory of its own (a new host key, as a new environment gets) and the script using it."""
        words = f"--gateway {shlex.quote(self.gateway_url)}"
        if words not in self.script or self.state_dir not in self.script:
            raise RuntimeError(f"the session script has no {words!r} or {self.state_dir!r}:\n{self.script}")
        state_dir = self.state_dir.replace(self.env_id, f"raw-{uuid.uuid4().hex}")
        raw = self.script.replace(words, f"--gateway {shlex.quote(self.callback_url)}")
        return state_dir, raw.replace(self.env_id, state_dir.rsplit("/", 1)[1])


def fmt(seconds: float) -> str:
    return f"{seconds:6.2f}"


async def bench_reach(b: Bench, rounds: int, gateway_url: str) -> float:
    print(
        f"reach: create -> ssh answers, {rounds} round(s), alternating; worker poll interval {b.poll_interval} s, "
        f"raw squeue every {b.poll_interval} s; both clients look again every {b.client_interval} s"
    )
    # warm-up (not counted): the gateway's script for the raw side, caches, the first job on the nodes
    _, env_id, slurm_id = await gateway_reach(b)
    _, script = await b.run("scontrol", "write", "batch_script", str(slurm_id), "-")
    await b.wait_gone([x for x in [await b.delete(env_id)] if x])
    callbacks = Callbacks(public_key=b.key.with_suffix(".pub").read_text().strip())
    srv = callback_server(callbacks)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state_dir = f"{b.home}/.remotegpu/environments/{env_id}"
    template = Template(script, env_id, state_dir, gateway_url, f"http://127.0.0.1:{srv.server_address[1]}")
    try:
        _, raw_id = await raw_reach(b, template, callbacks)
        await b.run("scancel", str(raw_id))
        await b.wait_gone([raw_id])
        print(
            f"  {'':8} {'total s':>7} {'submit':>6} {'script':>6} {'RUNNING':>7} {'callback':>8} {'visible':>7} "
            f"{'ssh tries':>9}"
        )
        results: dict[str, list[Reach]] = {"raw": [], "gateway": []}
        for i in range(rounds):
            for side in ("raw", "gateway") if i % 2 == 0 else ("gateway", "raw"):
                if side == "raw":
                    r, raw_id = await raw_reach(b, template, callbacks)
                    await b.run("scancel", str(raw_id))
                    gone = [raw_id]
                else:
                    r, gw_env, _ = await gateway_reach(b)
                    gone = [x for x in [await b.delete(gw_env)] if x]
                results[side].append(r)
                print(
                    f"  {side:8} {r.total:7.2f} {fmt(r.submitted)} {fmt(r.script)} {fmt(r.running):>7} "
                    f"{fmt(r.reported):>8} {fmt(r.visible):>7} {r.ssh_tries:9d}"
                )
                await b.wait_gone(gone)
    finally:
        srv.shutdown()
        srv.server_close()
    raw = median(r.total for r in results["raw"])
    gw = median(r.total for r in results["gateway"])
    for side, found in results.items():
        parts = [
            f"{name} {median(getattr(r, name) for r in found):.2f}"
            for name in ("submitted", "script", "running", "reported", "visible")
        ]
        print(f"  median {side:8} total {median(r.total for r in found):.2f} s (at: {', '.join(parts)})")
    stages = {side: [r.stages() for r in found] for side, found in results.items()}
    print(
        "  gateway - raw, median of each stage: "
        + ", ".join(
            f"{stage} {median(x[stage] for x in stages['gateway']) - median(x[stage] for x in stages['raw']):+.2f} s"
            for stage in stages["raw"][0]
        )
    )
    late = [max(0.0, r.running - r.reported) for r in results["gateway"]]
    print(
        f"  gateway: the worker's poll saw RUNNING after the callback in {sum(x > b.client_interval for x in late)} "
        f"of {len(late)} round(s) (the API shows running only then); median wait {median(late):.2f} s"
    )
    ratio = gw / raw
    verdict = "OK" if ratio <= REACH_GOAL else "BELOW GOAL"
    print(f"  ratio (gateway / raw time to reachable): {ratio:.2f}  (goal <= {REACH_GOAL})  {verdict}")
    return ratio


# --- 2. scp 500 MB -----------------------------------------------------------------------------------------


async def tree_cpu(root: int, every: float = 0.05) -> float:
    """CPU seconds of the processes below ``root`` (sshd's for each connection) until cancelled: sampled, since
    they end without their parents adding their CPU to their own. Cancelled, it returns what it saw."""

    def below() -> dict[int, float]:
        table = process_table()
        return {pid: cpu_seconds(pid) or 0.0 for pid in descendants({p: pp for p, (pp, _) in table.items()}, root)}

    before = below()  # what earlier connections left running counts from now on only
    seen = dict(before)
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            for pid, cpu in below().items():
                seen[pid] = max(seen.get(pid, 0.0), cpu)
            await asyncio.sleep(every)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in seen.items())


def listener_pid(port: int) -> int:
    """The process listening on 127.0.0.1:``port`` (the session's sshd), from ``ss``."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"pid=(\d+)", out)
    if match is None:
        raise RuntimeError(f"nothing listens on port {port}: {out!r}")
    return int(match[1])


async def bench_scp(b: Bench, rounds: int, megabytes: int) -> float:
    size = megabytes * 1_000_000
    source = b.tmp / "payload.bin"
    with source.open("wb") as payload:  # incompressible, like a checkpoint
        for _ in range(size // 1_000_000):
            payload.write(os.urandom(1_000_000))
    env_id = await b.create(f"scp{next(b.names)}")
    deadline = time.monotonic() + 120
    while (view := await b.view(env_id))["ssh"] is None:
        if view["state"] in ("failed", "stopped") or time.monotonic() > deadline:
            raise RuntimeError(f"scp environment: {view}")
        await asyncio.sleep(0.2)
    r = await b.http.get(f"{WS}/environments/{env_id}/ports", headers=b.headers)
    mapping = next(m for m in r.json() if m["service"] == "ssh" and m["released_at"] is None)
    targets = {"direct": ("127.0.0.1", mapping["node_port"]), "gateway": (view["ssh"]["host"], mapping["public_port"])}
    print(
        f"scp: {megabytes} MB (random bytes) to a file in /dev/shm, -o Compression=no, {rounds} round(s), alternating; "
        f"direct 127.0.0.1:{mapping['node_port']} vs the mapping {targets['gateway'][0]}:{mapping['public_port']}"
    )
    for host, port in targets.values():  # warm-up: the page cache holds the file, both paths answer
        if not await b.ssh_answers(host, port):
            raise RuntimeError(f"ssh to {host}:{port} does not answer")
    latency: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(5):
        for side, (host, port) in targets.items():
            t0 = time.monotonic()
            await b.ssh_answers(host, port)
            latency[side].append((time.monotonic() - t0) * 1000)
    print("  ssh ... true (median of 5): " + ", ".join(f"{side} {median(ms):.0f} ms" for side, ms in latency.items()))
    sshd = listener_pid(mapping["node_port"])
    speeds: dict[str, list[float]] = {"direct": [], "gateway": []}
    cpu_per_mb: dict[str, list[float]] = {"direct": [], "gateway": []}
    print(f"  {'':8} {'MB/s':>7} {'seconds':>8} {'CPU ms/MB:':>11} {'scp':>5} {'sshd':>5} {'relay':>6} {'all':>5}")
    target = f"/dev/shm/remotegpu-bench-{uuid.uuid4().hex}"  # RAM: no disk in the way; removed below
    try:
        for i in range(rounds):
            for side in ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct"):
                host, port = targets[side]
                cpu0 = (children_cpu(), 0.0, cpu_seconds(b.gateway_pid) or 0.0)
                sampler = asyncio.create_task(tree_cpu(sshd))
                t0 = time.monotonic()
                code, out = await b.run(
                    *b.ssh_argv("scp", port), "-q", "-o", "Compression=no", str(source), f"{b.user}@{host}:{target}"
                )
                seconds = time.monotonic() - t0
                sampler.cancel()
                if code != 0:
                    raise RuntimeError(f"scp {side} failed: {out}")
                cpu1 = (children_cpu(), await sampler, cpu_seconds(b.gateway_pid) or 0.0)
                scp, server, relay = (
                    (after - before) * 1000 / (size / 1e6) for before, after in zip(cpu0, cpu1, strict=True)
                )
                speeds[side].append(size / 1e6 / seconds)
                cpu_per_mb[side].append(scp + server + relay)
                print(
                    f"  {side:8} {speeds[side][-1]:7.1f} {seconds:8.2f} {'':11} {scp:5.2f} {server:5.2f} {relay:6.2f} "
                    f"{scp + server + relay:5.2f}"
                )
    finally:
        source.unlink(missing_ok=True)
        Path(target).unlink(missing_ok=True)
        gone = await b.delete(env_id)
        if gone:
            await b.wait_gone([gone])
    direct, through = median(speeds["direct"]), median(speeds["gateway"])
    ratio = through / direct
    verdict = "OK" if ratio >= SCP_GOAL else "BELOW GOAL"
    print(f"  median: direct {direct:.1f} MB/s, gateway {through:.1f} MB/s")
    cpu_ratio = median(cpu_per_mb["direct"]) / median(cpu_per_mb["gateway"])
    print(
        f"  ratio (direct / gateway) CPU per MB of scp, sshd and the relay: {cpu_ratio:.2f}  (the throughput ratio "
        f"when the machine's CPUs are the limit)"
    )
    print(f"  ratio (gateway / direct throughput): {ratio:.2f}  (goal >= {SCP_GOAL})  {verdict}")
    return ratio


# --- 3. controller requests per poll cycle -----------------------------------------------------------------


SDIAG_OWN = "REQUEST_STATS_INFO"
"""The request each ``sdiag`` makes itself; the gateway never makes one, so it is left out of the counts."""
CYCLES = 5


def counted(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Requests by type between two sdiag snapshots, without sdiag's own."""
    return {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0) and k != SDIAG_OWN}


async def cycle_profile(b: Bench, poller: Poller, accounts: AccountSync, db: Database) -> None:
    """Where one worker cycle's time goes, and which requests it makes (the steps of gateway.worker.cycle)."""
    steps: dict[str, list[float]] = {"account sync": [], "job poll": [], "port releases": []}
    kinds: dict[str, int] | None = None
    for _ in range(CYCLES):
        before = controller_requests(b.raw_env)
        t0 = time.perf_counter()
        await accounts.reconcile()
        t1 = time.perf_counter()
        await poller.poll_once()
        t2 = time.perf_counter()
        await release_ended_sessions(db)
        await release_idle_mappings(db)
        t3 = time.perf_counter()
        for step, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            steps[step].append(seconds * 1000)
        found = counted(before, controller_requests(b.raw_env))
        if kinds is None or sum(found.values()) < sum(kinds.values()):
            kinds = found
    print(
        f"  one cycle, step by step (median of {CYCLES}): "
        + ", ".join(f"{k} {median(v):.0f} ms" for k, v in steps.items())
    )
    print("  its requests (the cycle with fewest): " + ", ".join(f"{k} {n}" for k, n in sorted((kinds or {}).items())))


async def bench_poll(b: Bench) -> bool:
    """One worker cycle (in this process, the background worker stopped) with 1, 20 and 50 environments."""
    settings = load_settings(environ={k: v for k, v in b.gateway_env.items() if k.startswith("REMOTEGPU_")})
    configure_logging("WARNING", "console")
    db = Database(settings.database_url)
    slurm = make_slurm_client(settings)
    poller = Poller(db, slurm, JobService(db, slurm, settings))
    accounts = AccountSync(db, slurm)
    print(
        "poll: slurmctld requests (sdiag, without its own) of one worker cycle (account sync, the poll, port "
        f"releases), in this process; the least of {CYCLES} cycles (other clients of the controller only add)"
    )
    print(f"  {'environments':>12} {'requests':>8} {f'each of {CYCLES} cycles':>20} {'cycle ms':>9} {'running':>7}")
    counts: list[int] = []
    made: list[str] = []
    try:
        for count in (1, 20, 50):
            while len(made) < count:
                made.append(await b.create(f"p{next(b.names)}"))
            await cycle(poller, accounts, db)  # settles what the new rows change: the measured cycles are steady
            seen, took = [], []
            for _ in range(CYCLES):
                before = controller_requests(b.raw_env)
                t0 = time.perf_counter()
                await cycle(poller, accounts, db)
                took.append((time.perf_counter() - t0) * 1000)
                seen.append(sum(counted(before, controller_requests(b.raw_env)).values()))
            _, out = await b.run("squeue", "-h", "-u", b.user, "-t", "RUNNING", "-o", "%i")
            counts.append(min(seen))  # other clients of the shared controller only ever add requests
            print(
                f"  {count:12d} {min(seen):8d} {', '.join(map(str, seen)):>20} {median(took):9.1f} "
                f"{len(out.split()):7d}"
            )
        await cycle_profile(b, poller, accounts, db)
    finally:
        gone = [x for env_id in made if (x := await b.delete(env_id))]
        await slurm.close()
        await db.dispose()
        await b.run("scancel", "-u", b.user)
        await b.wait_gone(gone)
    constant = len(set(counts)) == 1
    print(
        f"  requests per cycle with 1, 20, 50 environments: {', '.join(map(str, counts))}  "
        f"({'constant' if constant else 'NOT constant'})"
    )
    return constant


# --- main ----------------------------------------------------------------------------------------------------


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="reach: alternate raw/gateway this many times")
    parser.add_argument("--scp-rounds", type=int, default=3, help="scp: alternate direct/gateway this many times")
    parser.add_argument("--scp-mb", type=int, default=500, help="scp: megabytes (10^6 bytes) copied each time")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="the worker's and raw squeue's interval")
    parser.add_argument("--client-interval", type=float, default=0.1, help="GET / callback look-ups, ssh retries")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: reach,scp,poll")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    phases = set(args.only.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    if os.geteuid() != 0:
        parser.error("runs as root (it creates a POSIX user, and jobs run as that user)")
    check = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(SUPERVISOR), "--help"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        parser.error(f"{SUPERVISOR} cannot be run by non-root users: {check.stderr.strip()[-300:]}")
    cluster = slurm_env()
    conf = cluster["SLURM_CONF"]
    admin = CliSlurmClient(slurm_conf=conf)
    user, account = f"rgb{uuid.uuid4().hex[:6]}", f"bench{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    missed = False
    try:
        with (
            tempfile.TemporaryDirectory(prefix="remotegpu-bench-env-") as tmp_name,
            database("sqlite", Path(tmp_name)) as url,
        ):
            tmp = Path(tmp_name)
            port, range_start = free_ports(1)[0], 34000 + uuid.uuid4().int % 50 * 100
            gateway_url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
            env.update(
                REMOTEGPU_DATABASE_URL=url,
                REMOTEGPU_SLURM_CONF=conf,
                REMOTEGPU_LOG_LEVEL="WARNING",
                REMOTEGPU_PASSWORD="bench-password",
                REMOTEGPU_PORT_RANGE_START=str(range_start),
                REMOTEGPU_PORT_RANGE_END=str(range_start + 99),
                REMOTEGPU_SESSION_SUPERVISOR=str(SUPERVISOR),
                REMOTEGPU_PORT=str(port),
                REMOTEGPU_PUBLIC_URL=gateway_url,
            )
            cli(env, "db", "upgrade")
            cli(env, "admin", "create-user", "root", "--admin")
            cli(env, "admin", "create-user", user)
            root_token, user_token = cli(env, "token", "create", "root"), cli(env, "token", "create", user)
            await admin.ensure_account(account)
            await admin.ensure_association(user, account)
            key = tmp / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            argv = [*remotegpu_command(), "serve", "--port", str(port), "--no-migrate"]
            with server("gateway", argv, env, gateway_url + "/readyz", tmp) as pid:
                async with httpx.AsyncClient(base_url=gateway_url, timeout=120) as http:
                    r = await http.post(
                        "/api/v1/workspaces",
                        headers={"Authorization": f"Bearer {root_token}"},
                        json={"slug": "bench", "name": "B", "owner": user, "slurm_account": account},
                    )
                    r.raise_for_status()
                    headers = {"Authorization": f"Bearer {user_token}"}
                    r = await http.post(
                        "/api/v1/me/ssh-keys", json={"public_key": key.with_suffix(".pub").read_text()}, headers=headers
                    )
                    r.raise_for_status()
                    b = Bench(
                        conf=conf,
                        user=user,
                        account=account,
                        home=f"/home/{user}",
                        http=http,
                        headers=headers,
                        key=key,
                        gateway_env=env,
                        gateway_pid=pid,
                        tmp=tmp,
                        poll_interval=args.poll_interval,
                        client_interval=args.client_interval,
                    )
                    print(f"gateway {gateway_url} (SQLite), supervisor {SUPERVISOR}, {os.cpu_count()} CPUs")
                    with worker(env, args.poll_interval, tmp):
                        if "reach" in phases:
                            missed |= await bench_reach(b, args.rounds, gateway_url) > REACH_GOAL
                        if "scp" in phases:
                            missed |= await bench_scp(b, args.scp_rounds, args.scp_mb) < SCP_GOAL
                    if "poll" in phases:
                        missed |= not await bench_poll(b)
    finally:
        subprocess.run(["scancel", "-u", user], env={"PATH": "/usr/bin:/bin", "SLURM_CONF": conf}, check=False)
        for _ in range(100):  # the account cannot be removed while its jobs run
            listed = subprocess.run(
                ["squeue", "-h", "-u", user, "-o", "%i"],
                env={"PATH": "/usr/bin:/bin", "SLURM_CONF": conf},
                capture_output=True,
                text=True,
                check=False,
            )
            if not listed.stdout.strip():
                break
            time.sleep(0.2)
        await admin.remove_account(account)
        remove_user(user)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
