"""JupyterHub benchmarks on the local Slurm cluster: our hub set-up against stock batchspawner, in the same run.

Ours: ``jupyterhub -f deploy/jupyterhub/jupyterhub_config.py`` (``spawners.auth.GatewayAuthenticator``,
``spawners.gateway.GatewaySpawner``) in front of ``remotegpu serve`` and ``remotegpu worker``; each named server is
a gateway environment, its session the Slurm job. Stock: a second hub with batchspawner's ``MultiSlurmSpawner``
(the verified recipe of /work/shared/notes/jupyterhub-batchspawner.md: ``runuser`` as ``exec_prefix``, the node
names resolved to 127.0.0.1), which runs ``sbatch``, ``squeue -j`` and ``scancel`` itself. Both start
``batchspawner-singleuser jupyterhub-singleuser`` from the same venv (``tests.cli_runner.user_venv()``) as the same
POSIX user, in the same partition, with 1 CPU and 256 MiB per server, hub poll interval ``--hub-poll`` (P) and
``startup_poll_interval`` 0.5 s on both. The two sides run one after the other (ours first), never at once.

1. poll: slurmctld requests (sdiag, without sdiag's own) per hub poll cycle with N running servers
   (``--sizes``, default 10 and 30): a window of ``--cycles`` cycles of P seconds, sdiag read at each cycle's end;
   the figure is the window's requests / cycles. Stock polls each server with ``squeue -h -j ID`` (three requests
   here: ``REQUEST_PARTITION_INFO``, ``REQUEST_FED_INFO``, ``REQUEST_JOB_INFO_SINGLE``), so it grows with N. Our
   hub polls the gateway, which reads its database; the worker's one ``squeue`` per interval is our cost,
   whatever N, and is what is counted. Ours is measured with the worker at each of ``--worker-intervals``
   (default 0.5 s, as during the spawns, and 5 s, the gateway's default ``REMOTEGPU_POLL_INTERVAL_SECONDS``): our
   count per hub cycle scales with P / interval, stock's with N. sdiag counts every client of the (shared)
   controller: other clients only add, so the request types and the bench user's own requests (sdiag's per-user
   count; stock's squeue runs as the user) are printed too.
   Goal: ours constant in N (at the largest N at most the smallest's + max(2, 25%)).
2. spawn: ``POST /hub/api/users/U/servers/S`` (admin service token) -> ``GET /user/U/S/api/status`` answers 200
   through the proxy, ``--spawns`` servers one at a time (the earlier ones keep running; the poll phase then fills
   up to N); p50; goal ours / stock <= 1.0. Where the time goes, per spawn: when the submission began (the hub log:
   stock's ``Spawner submitting command``, ours' ``gateway: start environment``), when the job's script and
   ``batchspawner-singleuser`` started (their processes' start times in /proc), when the spawner's ``start()``
   returned (the hub log's ``Notebook server job ... started at``: the job ran and the single-user server had told
   the hub its port), and, for ours, the gateway's timestamps (environment created, the supervisor's callback).
   The worker polls Slurm every ``--worker-interval`` s (default 0.5) during spawns; the client looks again every
   0.1 s.

    .venv/bin/python bench/hub.py [--sizes 10,30] [--spawns 5] [--only poll,spawn] [--hub-poll 5] [--cycles 4]
                                  [--worker-interval 0.5] [--worker-intervals 0.5,5] [--logs DIR] [--check]
Runs as root (it creates a POSIX user, a Slurm account and a partition of its own); needs deploy/dev/slurm/up (run by
it) and configurable-http-proxy in var/node (deploy/dev/lib/common.sh ensure_chp). The partition,
``rgbench<id>`` (``OverSubscribe=FORCE:8``: the two 4-CPU nodes hold 30 one-CPU servers), is created at start and
deleted at the end, with the servers, jobs, hubs, gateway, account and user. A full run takes ~7-8 minutes on the
2-core machine. ``--check`` exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from bench.api import cli, cpu_seconds, database, free_ports, remotegpu_command, remove_user, server
from bench.environments import counted, worker
from bench.jobs import controller_requests, reaped_children_cpu, slurm_env
from slurm.cli import CliSlurmClient
from tests.cli_runner import user_venv

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("poll", "spawn")
HUB_CONFIG = ROOT / "deploy/jupyterhub/jupyterhub_config.py"
PROXY = ROOT / "var/node/node_modules/.bin/configurable-http-proxy"
WS = "bench"
SPAWN_GOAL = 1.0
STARTUP_POLL = 0.5
"""batchspawner's ``startup_poll_interval`` (its default; the stock config sets it, ours keeps it)."""
CLIENT_INTERVAL = 0.1
SPAWN_TIMEOUT = 240.0
FILL_TIMEOUT = 420.0
HUB_START_TIMEOUT = 90.0
HUB_ENV_DROP = ("REMOTEGPU_", "JUPYTERHUB_", "CONFIGPROXY_")
HUB_LOG_LINE = r"^\[\w (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}) [^\]]*\] (?:{})"
SUBMITTING = re.compile(HUB_LOG_LINE.format("Spawner submitting command|gateway: start environment"), re.MULTILINE)
"""Stock: batchspawner runs sbatch now; ours: the spawner asks the gateway to start the environment now."""
STARTED = re.compile(HUB_LOG_LINE.format(r"Notebook server job (\S+) started at"), re.MULTILINE)
"""batchspawner's ``start()`` returns: the job runs and the single-user server told the hub its port."""
LAB_UP = re.compile(
    r"^\[I (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [^\]]*\] Jupyter Server \S+ is running at", re.MULTILINE
)
SDIAG_USER = re.compile(r"^\s+(\S+)\s+\(\s*(\d+)\)\s+count:(\d+)")


def log(message: str) -> None:
    """Progress, on stderr (the results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def requests_of_user(env: dict[str, str], user: str) -> int:
    """slurmctld's count of requests made by ``user`` so far (sdiag's per-user statistics)."""
    out = subprocess.run(["sdiag"], env=env, capture_output=True, text=True, check=True).stdout
    section = out.split("Remote Procedure Call statistics by user", 1)[1].split("Pending RPC", 1)[0]
    return sum(int(m[3]) for line in section.splitlines() if (m := SDIAG_USER.match(line)) and m[1] == user)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of the children it has reaped (squeue, sbatch, runuser, setpriv)."""
    return (cpu_seconds(pid) or 0.0) + reaped_children_cpu(pid)


def run_quiet(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)


def wait_no_jobs(env: dict[str, str], *selector: str, within: float = 120) -> bool:
    deadline = time.monotonic() + within
    while run_quiet(["squeue", "-h", *selector, "-o", "%i"], env).stdout.strip():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


# --- a hub ----------------------------------------------------------------------------------------------------


def process_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Hub:
    """A ``jupyterhub`` process of ours, its state directory and log, and its admin service token."""

    name: str
    url: str
    state: Path
    logfile: Path
    service_token: str
    process: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 4000) -> str:
        return self.logfile.read_text(errors="replace")[-chars:] if self.logfile.exists() else "(no log)"

    def proxy_pid(self) -> int | None:
        try:
            return int((self.state / "proxy.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.url}/hub/api", headers={"Authorization": f"token {self.service_token}"}, timeout=120
        )

    def logged(self, offset: int, line: re.Pattern[str]) -> re.Match[str] | None:
        """The first log line matching ``line`` after ``offset`` (its group 1: the time)."""
        with self.logfile.open("rb") as f:
            f.seek(offset)
            return line.search(f.read().decode(errors="replace"))


def log_time(found: re.Match[str] | None) -> float | None:
    """Wall-clock time of a JupyterHub / Jupyter Server log line (group 1: ``YYYY-mm-dd HH:MM:SS.mmm``)."""
    return None if found is None else datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def lab_listening(home: Path, job: str | None) -> float | None:
    """When the single-user server said ``Jupyter Server ... is running at`` (its log: stock's job output,
    ours' session log; ``job`` is the hub's job id: a Slurm job id or an environment id)."""
    if job is None:
        return None
    candidates = [
        home / f"jupyterhub_slurmspawner_{job}.log",
        *home.glob(f".remotegpu/environments/{job}/session-*.log"),
    ]
    for path in candidates:
        with contextlib.suppress(OSError):
            if found := LAB_UP.search(path.read_text(errors="replace")):
                return log_time(found)
    return None


@contextlib.contextmanager
def hub_process(name: str, config: Path, env: dict[str, str], state: Path, url: str, token: str) -> Iterator[Hub]:
    """``jupyterhub -f CONFIG`` until the block ends; stopped by its PID (SIGTERM), its proxy gone with it."""
    logfile = state.parent / f"{name}-hub.log"
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=state,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    hub = Hub(name, url, state, logfile, token, proc)
    try:
        deadline = time.monotonic() + HUB_START_TIMEOUT
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/hub/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} hub did not start:\n{hub.log_tail()}")
            time.sleep(0.2)
        yield hub
    finally:
        proxy = hub.proxy_pid()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proxy is not None:
            deadline = time.monotonic() + 10
            while process_running(proxy) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process_running(proxy):
                print(f"warning: the {name} hub's proxy (pid {proxy}) outlived it: killed", file=sys.stderr)
                os.kill(proxy, signal.SIGKILL)


def hub_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(HUB_ENV_DROP)}
    env.update(extra)
    return env


STOCK_CONFIG = """\
# Written by bench/hub.py: stock batchspawner MultiSlurmSpawner (the recipe of
# /work/shared/notes/jupyterhub-batchspawner.md), loopback only.
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {api}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.ConfigurableHTTPProxy.pid_file = {state!r} + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///" + {state!r} + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {state!r} + "/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = {state!r} + "/jupyterhub.pid"
c.JupyterHub.cleanup_servers = False  # as ours: the bench stops the servers through the API
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.spawner_class = "batchspawner.MultiSlurmSpawner"
c.MultiSlurmSpawner.daemon_resolver = {{"n1": "127.0.0.1", "n2": "127.0.0.1"}}
c.SlurmSpawner.exec_prefix = "/usr/sbin/runuser -u {{username}} --"
c.SlurmSpawner.batchspawner_singleuser_cmd = {venv!r} + "/bin/batchspawner-singleuser"
c.Spawner.cmd = [{venv!r} + "/bin/jupyterhub-singleuser"]
c.Spawner.environment = {{"SLURM_CONF": {conf!r}}}
c.SlurmSpawner.req_partition = {partition!r}
c.SlurmSpawner.req_runtime = "00:30:00"
c.SlurmSpawner.req_memory = "256M"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_options = "--account={account}"
c.SlurmSpawner.startup_poll_interval = {startup_poll}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300  # as ours
c.Spawner.http_timeout = 120
c.Spawner.poll_interval = {poll}
c.JupyterHub.services = [{{"name": "bench-admin", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["bench-admin"]}}]
"""


async def form_login(url: str, user: str, password: str) -> None:
    """A person's login through the hub's form (its ``_xsrf`` and cookie): the hub then holds their token."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as browser:
        form = await browser.get("/hub/login")
        found = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
        if form.status_code != 200 or found is None:
            raise RuntimeError(f"the login form: {form.status_code} {form.text[-500:]}")
        answer = await browser.post(
            "/hub/login", data={"username": user, "password": password, "_xsrf": found[1]}, follow_redirects=False
        )
        if answer.status_code != 302 or "/hub/login" in answer.headers.get("location", "/hub/login"):
            raise RuntimeError(f"login refused: {answer.status_code} {answer.text[-500:]}")


# --- what is measured -------------------------------------------------------------------------------------------


@dataclass
class Spawn:
    """One spawn, in seconds after the POST was sent (``None``: not seen)."""

    total: float
    submit: float | None
    """Stock: batchspawner runs sbatch; ours: the spawner calls the gateway's ``start`` (which runs sbatch)."""
    script: float | None
    """The job's script started (its process's start time; ours execs the supervisor in that process)."""
    singleuser: float | None
    """``batchspawner-singleuser`` started (the process that tells the hub its port, then runs JupyterLab)."""
    started: float | None
    """The spawner's ``start()`` returned: the job runs and the single-user server told the hub its port."""
    lab: float | None
    """The single-user server listens (its log's ``Jupyter Server ... is running at``)."""
    lab_cpu: float | None
    """CPU seconds ``batchspawner-singleuser`` (JupyterLab) had used once it answered."""
    gateway: dict[str, float] = field(default_factory=dict)
    """Ours: the gateway's timestamps (environment created, the supervisor's callback)."""

    def stages(self) -> dict[str, float | None]:
        """Consecutive stages: to the submission, the job's script, batchspawner-singleuser, JupyterLab listening,
        ready (api/status through the proxy: the hub's own check of the new server, with its backoff, and the
        proxy's route); the spawner's start() (job RUNNING and port known) falls between singleuser and ready."""
        points = [0.0, self.submit, self.script, self.singleuser, self.lab, self.total]
        names = (
            "to submit",
            "submit to script",
            "script to singleuser",
            "singleuser to listening",
            "listening to ready",
        )
        return {
            name: None if a is None or b is None else b - a
            for name, a, b in zip(names, points, points[1:], strict=False)
        }


def process_starts(uid: int, since: float) -> dict[str, float]:
    """Wall-clock start times of the user's processes started after ``since``: the earliest job script
    (``slurm_script``, or our supervisor, which the script execs), and the earliest ``batchspawner-singleuser``
    (and, as ``singleuser cpu``, the CPU seconds it has used so far: JupyterLab's start-up)."""
    tick, boot_now, wall_now = os.sysconf("SC_CLK_TCK"), time.clock_gettime(time.CLOCK_BOOTTIME), time.time()
    found: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = [Path(a.decode(errors="replace")).name for a in (entry / "cmdline").read_bytes().split(b"\0")[:2]]
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        at = wall_now - (boot_now - int(fields[19]) / tick)
        if at < since - 0.02 or not argv or argv[0] == "srun":
            continue
        kind = (
            "script"
            if "slurm_script" in argv or "remotegpu-session" in argv
            else "singleuser"
            if "batchspawner-singleuser" in argv
            else None
        )
        if kind is not None and at < found.get(kind, float("inf")):
            found[kind] = at
            if kind == "singleuser":
                found["singleuser cpu"] = (int(fields[11]) + int(fields[12])) / tick
    return found


@dataclass
class Window:
    """slurmctld requests over ``len(all_clients)`` hub poll cycles with ``servers`` servers running."""

    side: str
    servers: int
    worker_interval: float | None
    all_clients: list[int]
    by_user: list[int]
    kinds: dict[str, int]

    @property
    def per_cycle(self) -> float:
        return sum(self.all_clients) / len(self.all_clients)

    @property
    def user_per_cycle(self) -> float:
        return sum(self.by_user) / len(self.by_user)


@dataclass
class Side:
    """One hub set-up under test, and what was measured of it."""

    name: str
    hub: Hub
    user: str
    uid: int
    options: dict[str, Any]
    slurm: dict[str, str]
    gateway: httpx.AsyncClient | None = None
    """Ours: the gateway's API as the user (for its timestamps)."""
    processes: dict[str, int] = field(default_factory=dict)
    """Its own long-running processes (hub, gateway): their CPU during the spawns is reported."""
    servers: list[str] = field(default_factory=list)
    spawns: list[Spawn] = field(default_factory=list)
    spawn_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each of ``processes`` (and the worker) used during the spawn phase, with its reaped children."""
    spawn_seconds: float = 0.0
    windows: list[Window] = field(default_factory=list)


async def environment(side: Side, server_name: str) -> dict[str, Any]:
    assert side.gateway is not None
    r = await side.gateway.get(f"/api/v1/workspaces/{WS}/environments", params={"name": server_name, "user": side.user})
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items[0] if items else {}


def seconds_after(stamp: str | None, wall0: float) -> float | None:
    return None if not stamp else datetime.fromisoformat(stamp).timestamp() - wall0


async def spawn_one(side: Side, api: httpx.AsyncClient, http: httpx.AsyncClient) -> Spawn:
    """Start the next named server and wait until JupyterLab answers through the proxy."""
    name = f"s{len(side.servers) + 1}"
    offset = side.hub.logfile.stat().st_size
    status = f"{side.hub.url}/user/{side.user}/{name}/api/status"
    auth = {"Authorization": f"token {side.hub.service_token}"}
    wall0, t0 = time.time(), time.monotonic()
    r = await api.post(f"/users/{side.user}/servers/{name}", json=side.options)
    if r.status_code not in (201, 202):
        raise RuntimeError(f"{side.name}: POST servers/{name}: {r.status_code} {r.text}\n{side.hub.log_tail()}")
    side.servers.append(name)
    looks = 0
    while True:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get(status, headers=auth)).status_code == 200:
                break
        looks += 1
        if looks % 20 == 0:  # every ~2 s: did the spawn fail?
            found = (await api.get(f"/users/{side.user}")).json()["servers"]
            if name not in found:
                raise RuntimeError(f"{side.name}: server {name} is gone (spawn failed):\n{side.hub.log_tail()}")
        if time.monotonic() - t0 > SPAWN_TIMEOUT:
            raise RuntimeError(
                f"{side.name}: server {name} not answering in {SPAWN_TIMEOUT:.0f} s\n{side.hub.log_tail()}"
            )
        await asyncio.sleep(CLIENT_INTERVAL)
    total = time.monotonic() - t0
    starts = process_starts(side.uid, wall0)

    def after(at: float | None) -> float | None:
        return None if at is None else at - wall0

    started = side.hub.logged(offset, STARTED)
    spawn = Spawn(
        total,
        after(log_time(side.hub.logged(offset, SUBMITTING))),
        after(starts.get("script")),
        after(starts.get("singleuser")),
        after(log_time(started)),
        after(lab_listening(Path(pwd.getpwnam(side.user).pw_dir), None if started is None else started[2])),
        starts.get("singleuser cpu"),
    )
    if side.gateway is not None:
        view = await environment(side, name)
        session = view.get("session") or {}
        for label, stamp in (("created", view.get("created_at")), ("callback", session.get("reported_at"))):
            if (at := seconds_after(stamp, wall0)) is not None:
                spawn.gateway[label] = at
    return spawn


async def fill(side: Side, api: httpx.AsyncClient, count: int) -> None:
    """Start servers (all at once) until ``count`` run; wait until the hub says each is ready."""
    names = [f"s{i}" for i in range(len(side.servers) + 1, count + 1)]
    t0 = time.monotonic()
    answers = await asyncio.gather(*(api.post(f"/users/{side.user}/servers/{n}", json=side.options) for n in names))
    for n, r in zip(names, answers, strict=True):
        if r.status_code not in (201, 202):
            raise RuntimeError(f"{side.name}: POST servers/{n}: {r.status_code} {r.text}\n{side.hub.log_tail()}")
        side.servers.append(n)
    while True:
        found = (await api.get(f"/users/{side.user}")).json()["servers"]
        missing = [n for n in side.servers if n not in found]
        if missing:
            raise RuntimeError(f"{side.name}: servers {missing} are gone (spawn failed):\n{side.hub.log_tail()}")
        ready = sum(bool(found[n].get("ready")) for n in side.servers)
        if ready == len(side.servers):
            break
        if time.monotonic() - t0 > FILL_TIMEOUT:
            raise RuntimeError(f"{side.name}: {ready} of {count} servers ready in {FILL_TIMEOUT:.0f} s")
        await asyncio.sleep(2)
    log(f"{side.name}: {count} servers ready ({len(names)} started at once took {time.monotonic() - t0:.0f} s)")


async def window(side: Side, period: float, cycles: int, worker_interval: float | None) -> Window:
    """sdiag at the start and at the end of each of ``cycles`` hub poll cycles of ``period`` s."""

    async def snapshot() -> tuple[dict[str, int], int]:
        kinds = await asyncio.to_thread(controller_requests, side.slurm)
        return kinds, await asyncio.to_thread(requests_of_user, side.slurm, side.user)

    snaps = [await snapshot()]
    t0 = time.monotonic()
    for i in range(1, cycles + 1):
        await asyncio.sleep(max(0.0, t0 + i * period - time.monotonic()))
        snaps.append(await snapshot())
    all_clients = [sum(counted(a[0], b[0]).values()) for a, b in itertools.pairwise(snaps)]
    by_user = [b[1] - a[1] for a, b in itertools.pairwise(snaps)]
    result = Window(
        side.name, len(side.servers), worker_interval, all_clients, by_user, counted(snaps[0][0], snaps[-1][0])
    )
    log(
        f"{side.name}: {result.servers} servers, worker {worker_interval or '-'}: {result.per_cycle:.1f} requests "
        f"per cycle ({', '.join(map(str, all_clients))}); the user's {result.user_per_cycle:.1f}"
    )
    return result


async def stop_all(side: Side, api: httpx.AsyncClient) -> None:
    """Stop every server through the hub's API and wait until the hub and Slurm have let go of them."""
    if not side.servers:
        return
    await asyncio.gather(*(api.delete(f"/users/{side.user}/servers/{n}") for n in side.servers), return_exceptions=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if not (await api.get(f"/users/{side.user}")).json()["servers"]:
                break
        await asyncio.sleep(1)
    else:
        log(f"{side.name}: the hub still lists servers after 180 s")
    if not await asyncio.to_thread(wait_no_jobs, side.slurm, "-u", side.user):
        log(f"{side.name}: jobs of {side.user} still queued 120 s after the stop")
    side.servers.clear()


# --- one side's run -------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    phases: set[str]
    sizes: list[int]
    spawns: int
    period: int
    cycles: int
    worker_interval: float
    worker_intervals: list[float]
    logs: Path | None


class Worker:
    """``remotegpu worker`` (bench.environments.worker), restartable at another interval."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.interval: float | None = None
        self.pid: int | None = None
        self._stack = ExitStack()

    def run_at(self, interval: float) -> None:
        if interval == self.interval:
            return
        self.close()
        self.pid = self._stack.enter_context(worker(self.env, interval, self.logs))
        self.interval = interval
        time.sleep(2)  # its imports; its loops start

    def close(self) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self.interval = self.pid = None


async def run_side(side: Side, plan: Plan, workers: Worker | None) -> None:
    async with side.hub.api() as api, httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        try:
            if "spawn" in plan.phases:
                processes = dict(side.processes)
                if workers is not None:
                    workers.run_at(plan.worker_interval)
                    assert workers.pid is not None
                    processes["worker"] = workers.pid
                cpu0, t0 = {k: tree_cpu(pid) for k, pid in processes.items()}, time.monotonic()
                for _ in range(plan.spawns):
                    spawn = await spawn_one(side, api, http)
                    side.spawns.append(spawn)
                    log(f"{side.name}: spawn {len(side.spawns)} {spawn.total:.2f} s")
                side.spawn_seconds = time.monotonic() - t0
                side.spawn_cpu = {k: tree_cpu(pid) - cpu0[k] for k, pid in processes.items()}
            if "poll" in plan.phases:
                for n in plan.sizes:
                    if n > len(side.servers):
                        if workers is not None:
                            workers.run_at(plan.worker_interval)
                        await fill(side, api, n)
                    await asyncio.sleep(plan.period + 1)  # every server's poll timer runs; start-up bursts are over
                    if workers is None:
                        side.windows.append(await window(side, plan.period, plan.cycles, None))
                        continue
                    for interval in plan.worker_intervals:
                        if interval != workers.interval:
                            workers.run_at(interval)
                            await asyncio.sleep(min(interval, plan.period) + 1)  # past its first cycles
                        side.windows.append(await window(side, plan.period, plan.cycles, interval))
        finally:
            if workers is not None:
                workers.run_at(plan.worker_interval)  # ours: the stop goes through the gateway's state
            await stop_all(side, api)


# --- report -------------------------------------------------------------------------------------------------------


def fmt(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def report_spawn(sides: list[Side], plan: Plan) -> bool:
    print(
        f"spawn: POST /hub/api/users/U/servers/S -> GET /user/U/S/api/status 200 through the proxy; {plan.spawns} "
        f"spawn(s) per side, one at a time (earlier servers keep running); hub poll {plan.period} s, "
        f"startup_poll_interval {STARTUP_POLL} s on both; client looks every {CLIENT_INTERVAL} s; "
        f"ours: worker every {plan.worker_interval} s"
    )
    print(
        f"  {'':6} {'#':>2} {'total s':>7} {'submit':>7} {'script':>7} {'single':>7} {'start()':>7} {'listen':>7}"
        f"   ours: {'created':>7} {'callback':>8}"
    )
    for side in sides:
        for i, s in enumerate(side.spawns, 1):
            extra = f"         {fmt(s.gateway.get('created'))} {fmt(s.gateway.get('callback'), 8)}" if s.gateway else ""
            print(
                f"  {side.name:6} {i:2d} {s.total:7.2f} {fmt(s.submit)} {fmt(s.script)} {fmt(s.singleuser)} "
                f"{fmt(s.started)} {fmt(s.lab)}{extra}"
            )
    print(
        "  (seconds after the POST at which: submit: stock ran sbatch, ours called the gateway's start (it runs "
        "sbatch); the job's script started; batchspawner-singleuser started; the spawner's "
        "start() returned (the hub had the job RUNNING and the port); listen: JupyterLab said it is running; "
        "ours: the gateway's environment was created, "
        "the supervisor called the gateway back; total: api/status answered 200)"
    )
    p50: dict[str, float] = {}
    stages: dict[str, dict[str, float]] = {}
    for side in sides:
        p50[side.name] = median(s.total for s in side.spawns)
        stages[side.name] = {}
        for stage in side.spawns[0].stages():
            values = [v for s in side.spawns if (v := s.stages()[stage]) is not None]
            if values:
                stages[side.name][stage] = median(values)
        parts = [f"{stage} {seconds:.2f}" for stage, seconds in stages[side.name].items()]
        if started := [x.started for x in side.spawns if x.started is not None]:
            parts.append(f"start() at {median(started):.2f}")
        if lab_cpu := [x.lab_cpu for x in side.spawns if x.lab_cpu is not None]:
            parts.append(f"JupyterLab's CPU by ready {median(lab_cpu):.2f}")
        for label in ("created", "callback"):
            values = [s.gateway[label] for s in side.spawns if label in s.gateway]
            if values:
                parts.append(f"gateway {label} at {median(values):.2f}")
        print(f"  p50 {side.name:6} {p50[side.name]:.2f} s (medians: {', '.join(parts)})")
    for side in sides:
        used = ", ".join(
            f"{k} {cpu / len(side.spawns):.2f} s ({cpu / side.spawn_seconds:.0%})" for k, cpu in side.spawn_cpu.items()
        )
        print(f"  CPU per spawn {side.name:6} {used}  (% of one core over the spawn phase; 2 cores shared by all)")
    if {"ours", "stock"} <= stages.keys():
        common = [k for k in stages["ours"] if k in stages["stock"]]
        print(
            "  ours - stock, median of each stage: "
            + ", ".join(f"{k} {stages['ours'][k] - stages['stock'][k]:+.2f} s" for k in common)
        )
    ratio = p50["ours"] / p50["stock"]
    verdict = "OK" if ratio <= SPAWN_GOAL else "BELOW GOAL"
    print(f"  ratio (ours / stock) spawn p50: {ratio:.2f}  (goal <= {SPAWN_GOAL})  {verdict}")
    return ratio <= SPAWN_GOAL


OWN_REQUESTS = {
    "ours": {"REQUEST_JOB_INFO", "REQUEST_NODE_INFO", "REQUEST_PARTITION_INFO"},
    "stock": {"REQUEST_PARTITION_INFO", "REQUEST_FED_INFO", "REQUEST_JOB_INFO_SINGLE"},
}
"""The request types each set-up makes while its servers run: the worker's ``squeue --json`` (one JOB_INFO and
one NODE_INFO per cycle, PARTITION_INFO twice), stock's ``squeue -h -j`` (one of each of its three)."""


def disturbed(w: Window) -> str | None:
    """Why the window's count includes other clients' requests, when it visibly does."""
    foreign = {k: n for k, n in w.kinds.items() if k not in OWN_REQUESTS[w.side]}
    if foreign:
        return "requests this set-up does not make: " + ", ".join(
            f"{k.removeprefix('REQUEST_')} {n}" for k, n in foreign.items()
        )
    if w.side == "ours" and w.kinds.get("REQUEST_JOB_INFO", 0) != w.kinds.get("REQUEST_NODE_INFO", 0):
        return "more JOB_INFO than NODE_INFO (the worker makes them in pairs)"
    if w.side == "stock" and len({w.kinds.get(k, 0) for k in OWN_REQUESTS["stock"]}) > 1:
        return "its three request types in unequal numbers (each squeue -j makes one of each)"
    return None


def report_poll(sides: list[Side], plan: Plan) -> bool:
    print(
        f"poll: slurmctld requests (sdiag, all clients, without sdiag's own) per hub poll cycle of {plan.period} s, "
        f"over {plan.cycles} cycles, with N servers running; ours includes its worker's requests"
    )
    print(
        f"  {'side':6} {'worker s':>8} {'N':>4} {'per cycle':>9} {'each cycle':>20} {'user':>6}"
        "   request types (window)"
    )
    windows = [w for side in sides for w in side.windows]
    for w in windows:
        kinds = ", ".join(f"{k.removeprefix('REQUEST_')} {n}" for k, n in sorted(w.kinds.items(), key=lambda x: -x[1]))
        interval = "-" if w.worker_interval is None else f"{w.worker_interval:g}"
        each = ", ".join(map(str, w.all_clients))
        print(
            f"  {w.side:6} {interval:>8} {w.servers:4d} {w.per_cycle:9.1f} {each:>20} {w.user_per_cycle:6.1f}   {kinds}"
        )
    print("  (user: the requests sdiag counts for the bench's POSIX user: stock's squeue -j runs as the user)")
    for w in windows:
        if why := disturbed(w):
            interval = "" if w.worker_interval is None else f", worker every {w.worker_interval:g} s"
            print(f"  NOTE {w.side} N={w.servers}{interval}: {why}; other clients of the shared controller were busy")
    stock = {w.servers: w for w in windows if w.side == "stock"}
    ours = [w for w in windows if w.side == "ours"]
    ok = True
    for every in sorted({w.worker_interval for w in ours if w.worker_interval is not None}):
        mine = {w.servers: w for w in ours if w.worker_interval == every}
        ratios = [
            f"N={n}: {stock[n].per_cycle:.1f} / {mine[n].per_cycle:.1f} = {stock[n].per_cycle / mine[n].per_cycle:.1f}x"
            for n in sorted(mine)
            if n in stock and mine[n].per_cycle
        ]
        if ratios:
            print(f"  ratio (stock / ours, worker every {every:g} s) requests per cycle: {'; '.join(ratios)}")
        small, large = min(mine), max(mine)
        if small != large:
            slack = max(2.0, 0.25 * mine[small].per_cycle)
            constant = mine[large].per_cycle <= mine[small].per_cycle + slack
            ok &= constant
            print(
                f"  ours (worker every {every:g} s): {mine[small].per_cycle:.1f} at N={small}, "
                f"{mine[large].per_cycle:.1f} at N={large}  (goal: constant, within +{slack:.1f})  "
                f"{'OK' if constant else 'NOT constant'}"
            )
    if len(stock) > 1:
        sizes = sorted(stock)
        print(
            "  stock: "
            + ", ".join(f"{stock[n].per_cycle:.1f} at N={n} ({stock[n].per_cycle / n:.2f} per server)" for n in sizes)
        )
    return ok


# --- main -----------------------------------------------------------------------------------------------------------


def parse_args() -> tuple[Plan, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,30", help="poll: running servers, comma-separated")
    parser.add_argument("--spawns", type=int, default=5, help="spawn: servers started one at a time per side")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: poll,spawn")
    parser.add_argument("--hub-poll", type=int, default=5, help="both hubs' Spawner.poll_interval (seconds)")
    parser.add_argument("--cycles", type=int, default=4, help="poll: hub poll cycles per measured window")
    parser.add_argument("--worker-interval", type=float, default=0.5, help="ours: the worker's interval for spawns")
    parser.add_argument(
        "--worker-intervals", default="0.5,5", help="poll: the worker's intervals ours is measured at, comma-separated"
    )
    parser.add_argument(
        "--logs", type=Path, help="copy the hubs', gateway's, worker's and jobs' logs into this directory"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    phases = set(args.only.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    sizes = sorted({int(n) for n in args.sizes.split(",")})
    intervals = [float(x) for x in args.worker_intervals.split(",")]
    if min(sizes) < 1 or args.spawns < 1 or args.hub_poll < 1 or args.cycles < 1 or min(intervals) <= 0:
        parser.error("--sizes, --spawns, --hub-poll, --cycles and the worker intervals must be positive")
    if "poll" in phases and "spawn" in phases and args.spawns > min(sizes):
        parser.error("--spawns must not exceed the smallest of --sizes (the spawned servers keep running)")
    if os.geteuid() != 0:
        parser.error("runs as root (it creates a POSIX user, a Slurm account and a partition)")
    if not os.access(PROXY, os.X_OK):
        parser.error(f"no configurable-http-proxy at {PROXY} (deploy/dev/lib/common.sh ensure_chp installs it)")
    plan = Plan(phases, sizes, args.spawns, args.hub_poll, args.cycles, args.worker_interval, intervals, args.logs)
    return plan, args.check


@dataclass
class Setup:
    """What both sides share."""

    plan: Plan
    tmp: Path
    venv: Path
    conf: str
    slurm: dict[str, str]
    user: str
    account: str
    partition: str
    password: str


async def run_ours(s: Setup, sides: list[Side]) -> None:
    """The gateway (fresh SQLite database), its worker and our hub; the user logs in once through the form."""
    gw_port, public, api_port, proxy_api = free_ports(4)
    gateway_url, hub_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{public}"
    with database("sqlite", s.tmp) as url, ExitStack() as stack:
        range_start = 35000 + uuid.uuid4().int % 40 * 100
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
        env.update(
            REMOTEGPU_DATABASE_URL=url,
            REMOTEGPU_SLURM_CONF=s.conf,
            REMOTEGPU_LOG_LEVEL="WARNING",
            REMOTEGPU_PASSWORD=s.password,
            REMOTEGPU_PORT_RANGE_START=str(range_start),
            REMOTEGPU_PORT_RANGE_END=str(range_start + 99),
            REMOTEGPU_SESSION_SUPERVISOR=str(s.venv / "bin/remotegpu-session"),
            REMOTEGPU_PORT=str(gw_port),
            REMOTEGPU_PUBLIC_URL=gateway_url,
            REMOTEGPU_JUPYTERHUB_URL=hub_url,
        )
        cli(env, "db", "upgrade")
        cli(env, "admin", "create-user", "root", "--admin")
        cli(env, "admin", "create-user", s.user)
        root_token, user_token = cli(env, "token", "create", "root"), cli(env, "token", "create", s.user)
        argv = [*remotegpu_command(), "serve", "--port", str(gw_port), "--no-migrate"]
        gateway_pid = stack.enter_context(server("gateway", argv, env, gateway_url + "/readyz", s.tmp))
        r = httpx.post(
            f"{gateway_url}/api/v1/workspaces",
            headers={"Authorization": f"Bearer {root_token}"},
            json={"slug": WS, "name": "Hub bench", "owner": s.user, "slurm_account": s.account},
            timeout=60,
        )
        r.raise_for_status()
        workers = Worker(env, s.tmp)
        stack.callback(workers.close)
        state = s.tmp / "ours-hub"
        state.mkdir(mode=0o700)
        token = secrets.token_hex(32)
        variables = {
            "REMOTEGPU_URL": gateway_url,
            "REMOTEGPU_HUB_IP": "127.0.0.1",
            "REMOTEGPU_HUB_PORT": str(public),
            "REMOTEGPU_HUB_API_PORT": str(api_port),
            "REMOTEGPU_HUB_PROXY_API_PORT": str(proxy_api),
            "REMOTEGPU_HUB_STATE_DIR": str(state),
            "REMOTEGPU_HUB_PROXY_COMMAND": str(PROXY),
            "REMOTEGPU_HUB_SERVICE_TOKEN": token,
            "REMOTEGPU_HUB_NAMED_SERVER_LIMIT": "0",
            "REMOTEGPU_HUB_POLL_SECONDS": str(s.plan.period),
            "REMOTEGPU_HUB_IDLE_TIMEOUT_SECONDS": "0",
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        }
        hub = stack.enter_context(hub_process("ours", HUB_CONFIG, hub_env(variables), state, hub_url, token))
        await form_login(hub_url, s.user, s.password)
        options = {"workspace": WS, "cpus": 1, "mem_mib": 256, "time_minutes": 30, "partition": s.partition}
        headers = {"Authorization": f"Bearer {user_token}"}
        async with httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=60) as gateway:
            ours = Side("ours", hub, s.user, pwd.getpwnam(s.user).pw_uid, options, s.slurm, gateway=gateway)
            ours.processes = {"hub": hub.process.pid, "gateway": gateway_pid}
            sides.append(ours)
            log(f"ours: gateway {gateway_url}, hub {hub_url}")
            await run_side(ours, s.plan, workers)


async def run_stock(s: Setup, sides: list[Side]) -> None:
    """A hub with stock batchspawner (its config written here); the user made through the hub's API."""
    public, api_port, proxy_api = free_ports(3)
    hub_url = f"http://127.0.0.1:{public}"
    state = s.tmp / "stock-hub"
    state.mkdir(mode=0o700)
    token = secrets.token_hex(32)
    config = state / "jupyterhub_config.py"
    config.write_text(
        STOCK_CONFIG.format(
            public=public,
            api=api_port,
            proxy_api=proxy_api,
            proxy=str(PROXY),
            proxy_token=secrets.token_hex(32),
            state=str(state),
            venv=str(s.venv),
            conf=s.conf,
            partition=s.partition,
            account=s.account,
            startup_poll=STARTUP_POLL,
            poll=s.plan.period,
            token=token,
        )
    )
    with hub_process("stock", config, hub_env({"SLURM_CONF": s.conf}), state, hub_url, token) as hub:
        async with hub.api() as api:
            (await api.post(f"/users/{s.user}")).raise_for_status()
        stock = Side("stock", hub, s.user, pwd.getpwnam(s.user).pw_uid, {}, s.slurm)
        stock.processes = {"hub": hub.process.pid}
        sides.append(stock)
        log(f"stock: hub {hub_url}")
        await run_side(stock, s.plan, None)


async def main() -> int:
    plan, check = parse_args()
    began = time.monotonic()
    venv = user_venv()
    conf = slurm_env()["SLURM_CONF"]
    slurm = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": conf}
    admin = CliSlurmClient(slurm_conf=conf)
    tag = uuid.uuid4().hex[:6]
    user, account, partition = f"rgb{tag}", f"bench{tag}", f"rgbench{tag}"
    sides: list[Side] = []
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    try:
        create = ["scontrol", "create", f"PartitionName={partition}", "Nodes=ALL", "OverSubscribe=FORCE:8"]
        made = run_quiet([*create, "MaxTime=01:00:00", "State=UP"], slurm)
        if made.returncode != 0:
            raise RuntimeError(f"scontrol create partition: {made.stderr}")
        await admin.ensure_account(account)
        await admin.ensure_association(user, account)
        print(
            f"user {user}, account {account}, partition {partition} (OverSubscribe=FORCE:8); single-user venv "
            f"{venv}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )
        with tempfile.TemporaryDirectory(prefix="remotegpu-bench-hub-") as tmp:
            setup = Setup(plan, Path(tmp), venv, conf, slurm, user, account, partition, secrets.token_hex(12))
            try:
                await run_ours(setup, sides)
                await run_stock(setup, sides)
            finally:
                if plan.logs is not None:  # the hubs', the gateway's and the worker's logs
                    plan.logs.mkdir(parents=True, exist_ok=True)
                    for found in Path(tmp).glob("*.log"):
                        shutil.copy(found, plan.logs / found.name)
    finally:
        subprocess.run(["scancel", "-u", user], env=slurm, check=False)
        if plan.logs is not None:  # the jobs' logs: stock's job output, ours' session logs (JupyterLab's in both)
            home = Path(pwd.getpwnam(user).pw_dir)
            plan.logs.mkdir(parents=True, exist_ok=True)
            for found in [*home.glob("jupyterhub_slurmspawner_*.log"), *home.glob(".remotegpu/environments/*/*.log")]:
                shutil.copy(found, plan.logs / f"job-{found.parent.name}-{found.name}")
        if not wait_no_jobs(slurm, "-u", user):
            print(f"warning: jobs of {user} still queued", file=sys.stderr)
        wait_no_jobs(slurm, "-p", partition, within=30)
        gone = run_quiet(["scontrol", "delete", f"PartitionName={partition}"], slurm)
        if gone.returncode != 0:
            print(f"warning: scontrol delete PartitionName={partition}: {gone.stderr.strip()}", file=sys.stderr)
        await admin.remove_account(account)
        remove_user(user)
    missed = False
    print()
    if "spawn" in plan.phases:
        missed |= not report_spawn(sides, plan)
        print()
    if "poll" in plan.phases:
        missed |= not report_poll(sides, plan)
    print(f"\n(the run took {time.monotonic() - began:.0f} s, load {os.getloadavg()[0]:.1f})")
    return 1 if check and missed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
