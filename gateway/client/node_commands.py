"""``remotegpu node ...``: the GPU nodes (platform admins): add, list, show, provision (a dry run unless
``--apply``; ``--wait`` follows the run to its end), drain, resume, remove, bootstrap-command.

The pure parts (the request bodies, the rows of the tables, what a finished run prints) are functions of their
own, tested without a gateway (tests/unit/test_node_cli.py); the commands glue them to the HTTP client.
Failures talking to the gateway are :class:`ClientError`, printed by the top-level group as one line (exit 1).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import click

from gateway.client.api import GatewayClient
from gateway.client.env_commands import _echo_json, json_option, render_table

STATES = ("remotegpu", "gpu", "munge", "slurmd", "gemini", "users", "exporter")
_GPUS = re.compile(r"(?P<type>[a-z0-9][a-z0-9_.-]{0,31}):(?P<count>[0-9]{1,2})")
ENDED = ("done", "failed")


def _client() -> GatewayClient:
    ctx = click.get_current_context()
    client: GatewayClient | None = ctx.meta.get("remotegpu.client")
    if client is None:
        client = ctx.meta["remotegpu.client"] = GatewayClient.from_environment()
    return client


# --- pure parts ---------------------------------------------------------------------------------------------


def gpus_value(text: str | None) -> dict[str, Any] | str | None:
    """``--gpus a100:2`` → ``{"type": "a100", "count": 2}``; ``detect``; ``none`` or nothing → None."""
    if text is None or text == "none":
        return None
    if text == "detect":
        return "detect"
    found = _GPUS.fullmatch(text)
    if not found or int(found["count"]) < 1:
        raise click.BadParameter(f"{text!r} is not TYPE:COUNT (e.g. a100:2), detect or none", param_hint="--gpus")
    return {"type": found["type"], "count": int(found["count"])}


def add_body(name: str, address: str, region: str | None, gpus: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "address": address, "gpus": gpus_value(gpus)}
    if region is not None:
        body["region"] = region
    return body


def state_names(states: Sequence[str]) -> list[str]:
    """``munge`` or ``remotegpu.munge`` → ``remotegpu.munge``; none → everything (``remotegpu``)."""
    names = []
    for state in states or ("remotegpu",):
        short = state.removeprefix("remotegpu.")
        if short not in STATES:
            raise click.BadParameter(f"{state!r} is not one of {', '.join(STATES)}", param_hint="--state")
        names.append("remotegpu" if short == "remotegpu" else f"remotegpu.{short}")
    return names


def _gpus_cell(gpus: Mapping[str, Any]) -> str:
    if gpus["detect"] and not gpus["count"]:
        return "detect"
    if not gpus["count"]:
        return "-"
    return f"{gpus['type'] or 'gpu'}:{gpus['count']}"


def _slurm_gpus(slurm: Mapping[str, Any] | None) -> str:
    if not slurm or not slurm["gpus"]:
        return "-"
    return ",".join(f"{g['type'] or 'gpu'}:{g['allocated']}/{g['total']}" for g in slurm["gpus"])


def _last_run(run: Mapping[str, Any] | None) -> str:
    if not run:
        return "-"
    mode = "test" if run["test"] else "apply"
    return f"#{run['id']} {mode} {run['status']} (changed {run['states_changed']}, failed {run['states_failed']})"


NODE_HEADERS = ["NAME", "ADDRESS", "REGION", "GPUS", "KEY", "SLURM", "SLURM GPUS (USED/ALL)", "JOBS", "LAST RUN"]


def node_rows(nodes: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for n in nodes:
        slurm = n["slurm"]
        yield [
            n["name"],
            n["address"],
            n["region"],
            _gpus_cell(n["gpus"]),
            n["key_state"],
            slurm["state"] if slurm else "unknown",
            _slurm_gpus(slurm),
            len(n["jobs"]),
            _last_run(n["last_run"]),
        ]


def show_lines(node: Mapping[str, Any]) -> list[str]:
    slurm = node["slurm"]
    lines = [
        f"name:        {node['name']}",
        f"address:     {node['address']}",
        f"region:      {node['region']}",
        f"gpus:        {_gpus_cell(node['gpus'])}",
        f"key:         {node['key_state']}" + (f" ({node['bootstrapped_at']})" if node["bootstrapped_at"] else ""),
        f"slurm:       {slurm['state'] if slurm else 'not in the snapshot'}",
    ]
    if slurm:
        if slurm["reason"]:
            lines.append(f"reason:      {slurm['reason']}")
        lines += [
            f"partitions:  {','.join(slurm['partitions']) or '-'}",
            f"cpus:        {slurm['cpus_allocated']}/{slurm['cpus']}",
            f"memory:      {slurm['memory_allocated_mib']}/{slurm['memory_mib']} MiB",
            f"slurm gpus:  {_slurm_gpus(slurm)}",
        ]
    lines += [
        f"jobs:        {', '.join(str(j) for j in node['jobs']) or '-'}",
        f"last run:    {_last_run(node['last_run'])}",
    ]
    return lines


RESULT_HEADERS = ["NODE", "SLS", "STATE", "RESULT", "CHANGED", "MS", "COMMENT"]


def _result_word(result: bool | None) -> str:
    return {True: "ok", False: "FAILED", None: "would change"}[result]


def result_rows(results: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for r in results:
        comment = " ".join(str(r["comment"]).split())
        yield [
            r["node"],
            r["sls"],
            r["state_id"],
            _result_word(r["result"]),
            "yes" if r["changed"] else "no",
            f"{r['duration_ms']:.0f}" if r["duration_ms"] is not None else None,
            comment[:100] + ("..." if len(comment) > 100 else ""),
        ]


def run_summary(run: Mapping[str, Any]) -> list[str]:
    mode = "dry run (test=True)" if run["test"] else "apply"
    lines = [f"run {run['id']}: {mode} of {', '.join(run['states'])}: {run['status']}"]
    if run["error"]:
        lines.append(f"  {run['error']}")
    for t in run["targets"]:
        line = f"  {t['node']}: {t['status']}"
        if t["states_total"]:
            line += f", {t['states_total']} states, {t['states_changed']} changed, {t['states_failed']} failed"
        if t["error"]:
            line += f": {t['error'].splitlines()[0][:200]}"
        lines.append(line)
    return lines


# --- commands ------------------------------------------------------------------------------------------------


@click.group("node")
def node_group() -> None:
    """GPU nodes (platform admins): register, bootstrap, provision with Salt, drain and resume in Slurm."""


@node_group.command("add")
@click.argument("name")
@click.option("--address", required=True, help="Host name or IP address of the node.")
@click.option("--region", help="Free text, e.g. dc-1 (default: default).")
@click.option("--gpus", metavar="TYPE:COUNT|detect|none", help="Its GPUs, e.g. a100:8; detect: ask the node.")
@json_option
def node_add(name: str, address: str, region: str | None, gpus: str | None, as_json: bool) -> None:
    """Register node NAME (its Slurm NodeName) and print the one-time bootstrap command to run on it as root."""
    made = _client().request("POST", "/nodes", json=add_body(name, address, region, gpus))
    if as_json:
        _echo_json(made)
        return
    click.echo(f"registered node {made['node']['name']}")
    boot = made["bootstrap"]
    if boot is None:
        click.echo("the gateway bootstraps no node (node_bootstrap_secret, salt_api_url): no token was issued")
        return
    click.echo(f"run this on the node as root before {boot['expires_at']} (it works once):")
    click.echo(boot["command"])


@node_group.command("list")
@json_option
def node_list(as_json: bool) -> None:
    """Every node beside Slurm's state (the poller's last snapshot), its jobs and its last run."""
    listed = _client().request("GET", "/nodes")
    if as_json:
        _echo_json(listed)
        return
    for line in render_table(NODE_HEADERS, node_rows(listed["items"])):
        click.echo(line)
    if listed["stale"]:
        click.echo(f"(Slurm's view is stale: last read {listed['snapshot_at'] or 'never'})", err=True)


@node_group.command("show")
@click.argument("name")
@json_option
def node_show(name: str, as_json: bool) -> None:
    """One node, and the results of its last run."""
    client = _client()
    node = client.request("GET", f"/nodes/{name}")
    results = (
        client.request("GET", f"/nodes/runs/{node['last_run']['id']}/results", params={"node": name})
        if node["last_run"]
        else []
    )
    if as_json:
        _echo_json({**node, "last_run_results": results})
        return
    for line in show_lines(node):
        click.echo(line)
    if results:
        click.echo("")
        for line in render_table(RESULT_HEADERS, result_rows(results)):
            click.echo(line)


def _wait(client: GatewayClient, run_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.request("GET", f"/nodes/runs/{run_id}")
        if run["status"] in ENDED or time.monotonic() > deadline:
            return run
        time.sleep(1)


@node_group.command("provision")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every registered node.")
@click.option("--state", "states", multiple=True, help=f"A state to apply (repeatable): {', '.join(STATES)}.")
@click.option("--apply", "apply", is_flag=True, help="Apply for real (default: a dry run, test=True).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the run to its end.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds --wait waits.")
@json_option
def node_provision(
    names: tuple[str, ...], every: bool, states: tuple[str, ...], apply: bool, wait: bool, timeout: float, as_json: bool
) -> None:
    """Run Salt's state.apply on NAMES (or --all): a dry run first by default, --apply to change the nodes."""
    if bool(names) == every:
        raise click.UsageError("name the nodes, or give --all")
    body: dict[str, Any] = {"states": state_names(states), "apply": apply}
    client = _client()
    if len(names) == 1:
        run = client.request("POST", f"/nodes/{names[0]}/provision", json=body)
    else:
        run = client.request("POST", "/nodes/provision", json=body | ({"nodes": list(names)} if names else {}))
    if wait:
        run = _wait(client, run["id"], timeout)
    results = client.request("GET", f"/nodes/runs/{run['id']}/results") if run["status"] in ENDED else []
    if as_json:
        _echo_json({**run, "results": results})
    else:
        for line in run_summary(run):
            click.echo(line)
        if results:
            click.echo("")
            for line in render_table(RESULT_HEADERS, result_rows(results)):
                click.echo(line)
        if run["test"] and run["status"] == "done":
            click.echo("\nthat was a dry run: add --apply to change the nodes")
    if run["status"] == "failed":
        raise SystemExit(1)


@node_group.command("drain")
@click.argument("name")
@click.option("--reason", required=True, help="Why (Slurm shows it).")
@json_option
def node_drain(name: str, reason: str, as_json: bool) -> None:
    """Drain NAME in Slurm: running jobs finish, no new one starts there."""
    node = _client().request("POST", f"/nodes/{name}/drain", json={"reason": reason})
    _echo_json(node) if as_json else click.echo(f"{name}: {node['slurm']['state'] if node['slurm'] else 'drained'}")


@node_group.command("resume")
@click.argument("name")
@click.option("--reason", help="Recorded in the audit trail.")
@json_option
def node_resume(name: str, reason: str | None, as_json: bool) -> None:
    """Resume NAME in Slurm: it takes work again."""
    body = {"reason": reason} if reason else None
    node = _client().request("POST", f"/nodes/{name}/resume", json=body)
    _echo_json(node) if as_json else click.echo(f"{name}: {node['slurm']['state'] if node['slurm'] else 'resumed'}")


@node_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
def node_remove(name: str, yes: bool) -> None:
    """Forget NAME (its runs stay) and delete its minion key from the Salt master."""
    if not yes:
        click.confirm(f"remove node {name} and its Salt key?", abort=True)
    _client().request("DELETE", f"/nodes/{name}")
    click.echo(f"removed node {name}")


@node_group.command("bootstrap-command")
@click.argument("name")
@json_option
def node_bootstrap_command(name: str, as_json: bool) -> None:
    """A new one-time bootstrap command for NAME (good for 5 minutes, once)."""
    got = _client().request("GET", f"/nodes/{name}/bootstrap-command")
    _echo_json(got) if as_json else click.echo(got["command"])
