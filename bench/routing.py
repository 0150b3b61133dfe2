"""Replica routing latency: ``gateway.datasets.routing.route`` per decision against the goal of 1 ms.

Builds --scenarios realistic inputs (3-8 sources each: a site MinIO or two, cloud stores in the node's region and
elsewhere; health mostly ok, some degraded, unknown or down, a few disabled; latencies from 1 ms to 2 s or not yet
measured; reads and uploads, internal and external users, some with a preferred source; a key per request), then
times --decisions calls of ``route()`` cycling through them, each call on its own (``perf_counter_ns``), and prints
p50/p99/max per decision in µs and p99 / 1 ms. A second pass times ``route()`` plus ``log_decision()`` through the
gateway's own logging set-up (structlog JSON lines, written to /dev/null), which is what a decision costs in the
service. The inputs come from a seeded RNG, so runs differ only by the machine.

    .venv/bin/python bench/routing.py [--decisions 100000] [--scenarios 1000] [--seed 12] [--check]

``--check`` exits 1 when a pass's p99 is >= 1 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.datasets.routing import RouteRequest, Source, log_decision, route  # noqa: E402
from gateway.observability import configure_logging  # noqa: E402

GOAL_US = 1000.0
REGIONS = ("cn-hangzhou", "cn-beijing", "eu-central-1", "us-east-1")
HEALTH = ("ok",) * 14 + ("degraded", "degraded", "unknown", "unknown", "down")
Scenario = tuple[RouteRequest, tuple[Source, ...]]


def scenarios(count: int, seed: int) -> list[Scenario]:
    """Random but plausible sites: a node region, local private stores in it, public stores here and elsewhere."""
    rnd = random.Random(seed)
    out: list[Scenario] = []
    for n in range(count):
        site = rnd.choice(REGIONS)
        size = rnd.randint(3, 8)
        sources: list[Source] = []
        for i in range(size):
            local = i < rnd.randint(1, 2)
            latency = None if rnd.random() < 0.1 else round(rnd.lognormvariate(3.0, 1.3), 1)
            sources.append(
                Source(
                    id=100 * n + i,
                    name=f"store-{n}-{i}",
                    region=(site if local or rnd.random() < 0.4 else rnd.choice(REGIONS))
                    if rnd.random() > 0.05
                    else None,
                    public=not local,
                    priority=rnd.choice((10, 10, 20, 50, 100)),
                    weight=rnd.choice((0, 50, 100, 100, 200)),
                    health=rnd.choice(HEALTH),  # type: ignore[arg-type]
                    latency_ms=min(latency, 2000.0) if latency is not None else None,
                    enabled=rnd.random() > 0.05,
                )
            )
        rnd.shuffle(sources)
        request = RouteRequest(
            user_type=rnd.choice(("internal", "internal", "external")),
            node_region=site if rnd.random() < 0.9 else None,
            purpose="read" if rnd.random() < 0.8 else "upload",
            preferred_source=rnd.choice(sources).id if rnd.random() < 0.15 else None,
            key=f"{rnd.randint(1, 50_000)}:gpu-{rnd.randint(1, 64):02d}",
        )
        out.append((request, tuple(sources)))
    return out


def timed(
    decisions: int, inputs: Sequence[Scenario], decide: Callable[[RouteRequest, Sequence[Source]], Any]
) -> list[int]:
    """Nanoseconds of each call, sorted."""
    clock = time.perf_counter_ns
    times = [0] * decisions
    count = len(inputs)
    for i in range(decisions):
        request, sources = inputs[i % count]
        start = clock()
        decide(request, sources)
        times[i] = clock() - start
    times.sort()
    return times


def report(name: str, times: list[int]) -> float:
    """Print one pass's line; return its p99 in µs."""
    p50 = times[len(times) // 2] / 1000
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000
    mean = sum(times) / len(times) / 1000
    verdict = "OK" if p99 < GOAL_US else "BELOW GOAL"
    print(
        f"{name:<34} p50 {p50:7.1f} µs   p99 {p99:7.1f} µs   max {times[-1] / 1000:8.1f} µs   mean {mean:6.1f} µs"
        f"   p99 / 1 ms = {p99 / GOAL_US:.4f}  {verdict}",
        flush=True,
    )
    return p99


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--scenarios", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--check", action="store_true", help="exit 1 when a p99 is >= 1 ms")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    inputs = scenarios(args.scenarios, args.seed)
    sizes = [len(sources) for _, sources in inputs]
    print(
        f"routing benchmark: {args.decisions} decisions over {len(inputs)} scenarios ({min(sizes)}-{max(sizes)} "
        f"sources, mean {sum(sizes) / len(sizes):.1f}), seed {args.seed}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    timed(min(args.decisions, 5000), inputs, route)  # warm-up
    p99s = [report("route()", timed(args.decisions, inputs, route))]

    configure_logging("INFO", "json")
    devnull = Path(os.devnull).open("w")  # noqa: SIM115 - lives as long as the process's logging
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    logger = structlog.get_logger("gateway.datasets.routing")

    def decide_and_log(request: RouteRequest, sources: Sequence[Source]) -> None:
        log_decision(logger, who="bench", what=request.key, request=request, decision=route(request, sources))

    timed(min(args.decisions, 5000), inputs, decide_and_log)
    p99s.append(report("route() + log_decision() (JSON)", timed(args.decisions, inputs, decide_and_log)))
    if args.check and max(p99s) >= GOAL_US:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
