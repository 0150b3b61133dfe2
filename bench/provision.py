"""Provisioning through the gateway against Salt's own CLI, on the dev Salt stack (deploy/dev/salt: n1, n2).

Each round times, on the same minions and states: (a) a hand-run ``salt -L n1,n2 state.apply STATES test=True``
with the stack's master config (the baseline), (b) one gateway call: ``POST /api/v1/nodes/provision`` through the
in-process API, the worker's ``run_due`` claiming it, one ``local_async`` job per node through salt-api, polled
every ``node_poll_seconds`` until each returned and its per-state results stored; the time is from the POST to
the run read back ``done``. Rounds alternate (a) and (b); prints each median and the ratio gateway / salt. The
issue's goal is <= 1.2x with 10 minions: the dev stack runs as many as asked,

    REMOTEGPU_SALT_MINIONS="$(echo n{1..10})" deploy/dev/salt/up >/dev/null
    .venv/bin/python bench/provision.py [--states remotegpu.gemini] [--rounds 5] [--backend sqlite|postgresql]
    REMOTEGPU_SALT_MINIONS="n1 n2" deploy/dev/salt/up >/dev/null      # back to the usual two

(the minions are the stack's, as deploy/dev/salt/up recorded them; ``--minions n1,n2`` picks some).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nodes import database  # noqa: E402
from gateway.accounts.auth import issue_token  # noqa: E402
from gateway.accounts.models import User  # noqa: E402
from gateway.actor import Actor  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.db import migrate  # noqa: E402
from gateway.db.session import Database  # noqa: E402
from gateway.nodes import runs  # noqa: E402

GOAL = 1.2
SALT_ROOT = Path(os.environ.get("REMOTEGPU_SALT_ROOT", "/var/tmp/remotegpu-salt"))
MINIONS: list[str] = []
"""The minions of the runs: ``--minions``, else every one the dev stack runs."""


def stack_minions() -> list[str]:
    recorded = SALT_ROOT / "minions"
    return recorded.read_text().split() if recorded.is_file() else ["n1", "n2"]


def salt_cli(states: str) -> float:
    """Seconds of one hand-run state.apply of ``states`` on the minions (test=True)."""
    argv = [str(SALT_ROOT / "venv/bin/salt"), "-c", str(SALT_ROOT / "etc/master"), "-L", ",".join(MINIONS),
            "state.apply", states, "test=True", "--out=json", "--static"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1) or not all(f'"{m}"' in done.stdout for m in MINIONS):
        raise SystemExit(f"salt state.apply failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


async def gateway_rounds(url: str, states: list[str], rounds: int, baseline: list[float]) -> list[float]:
    secret = (SALT_ROOT / "api-secret").read_text().strip()
    settings = Settings(
        database_url=url,
        log_level="WARNING",
        salt_api_url="http://127.0.0.1:10800",
        salt_api_username="remotegpu",
        salt_api_password=secret,
    )
    db = Database(url)
    try:
        async with db.session() as session:
            admin = User(name="bench-admin", posix_name="bench-admin", is_admin=True)
            session.add(admin)
            await session.flush()
            token = (await issue_token(session, Actor.system("bench"), admin, name="bench", ttl_days=1)).token
            await session.commit()
        headers = {"Authorization": f"Bearer {token}"}
        app = create_app(settings, database=db)
        transport = httpx.ASGITransport(app=cast(Any, app))
        times: list[float] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.bench") as api:
            for name in MINIONS:
                (
                    await api.post("/api/v1/nodes", json={"name": name, "address": "127.0.0.1"}, headers=headers)
                ).raise_for_status()
            for _ in range(rounds):
                baseline.append(await asyncio.to_thread(salt_cli, ",".join(states)))
                start = time.perf_counter()
                made = await api.post("/api/v1/nodes/provision", json={"states": states}, headers=headers)
                made.raise_for_status()
                run_id = made.json()["id"]
                await runs.run_due(db, settings)
                got = (await api.get(f"/api/v1/nodes/runs/{run_id}", headers=headers)).json()
                times.append(time.perf_counter() - start)
                if got["status"] != "done":
                    raise SystemExit(f"the gateway's run did not succeed: {got}")
        return times
    finally:
        await db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", default="remotegpu.gemini", help="comma-separated state ids")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--minions", help="comma-separated minion ids (default: the dev stack's)")
    args = parser.parse_args()
    MINIONS[:] = args.minions.split(",") if args.minions else stack_minions()
    states = args.states.split(",")
    print(
        f"provision benchmark: {', '.join(states)} test=True on {', '.join(MINIONS)}, {args.rounds} rounds, "
        f"{args.backend}; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    baseline: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="remotegpu-bench-provision-") as tmp,
        database(args.backend, Path(tmp)) as url,
    ):
        migrate.upgrade(url)
        gateway = asyncio.run(gateway_rounds(url, states, args.rounds, baseline))
    salt_median, gateway_median = statistics.median(baseline), statistics.median(gateway)
    print(f"salt CLI        median {salt_median:6.2f} s   ({', '.join(f'{t:.2f}' for t in baseline)})")
    print(f"gateway (API)   median {gateway_median:6.2f} s   ({', '.join(f'{t:.2f}' for t in gateway)})")
    ratio = gateway_median / salt_median
    print(f"gateway / salt: {ratio:.2f}x (goal <= {GOAL}x)  {'OK' if ratio <= GOAL else 'ABOVE GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
