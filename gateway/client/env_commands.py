"""``remotegpu env ...`` (development environments) and ``remotegpu ssh-key ...`` (the keys their sshd accepts).

The pure parts (options -> request body, rows of the tables, the ssh command line, what ``--wait`` makes of a
view) are functions of their own, tested without a gateway; the commands only glue them to the HTTP client.
Failures talking to the gateway are :class:`ClientError`, which the top-level group prints as one line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gateway.client.api import ApiError, GatewayClient
from gateway.environments.states import STATES
from slurm.directives import DirectiveError, memory, minutes

# --- shared plumbing (the client of this invocation, options, output) ----------------------------------------


def _client() -> GatewayClient:
    """The invocation's gateway client (REMOTEGPU_URL/TOKEN/WORKSPACE over ``remotegpu login``'s file)."""
    ctx = click.get_current_context()
    client: GatewayClient | None = ctx.meta.get("remotegpu.client")
    if client is None:
        client = ctx.meta["remotegpu.client"] = GatewayClient.from_environment()
    return client


workspace_option = click.option(
    "--workspace", "-W", help="Workspace slug (default: REMOTEGPU_WORKSPACE, the saved one, or your only one)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON (for scripts).")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, ``-`` for nothing; the last column is not padded."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1]
        for row in [list(headers), *cells]
    ]


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    for line in render_table(headers, rows):
        click.echo(line)


def age(since: str | None, now: datetime) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since an RFC 3339 instant (kubectl's AGE)."""
    if not since:
        return ""
    seconds = max(0, int((now - datetime.fromisoformat(since)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- ssh-key ------------------------------------------------------------------------------------------------

_KEY_FILE_LIMIT = 64 * 1024
_PRIVATE_MARKERS = ("PRIVATE KEY-----", "PuTTY-User-Key-File")


def public_key_line(text: str, source: str) -> str:
    """The one OpenSSH public key line in ``text`` (a ``.pub`` file or one ``authorized_keys`` entry).

    A private key is refused before anything is sent, naming its public half; the gateway checks the rest
    (key types, RSA sizes, base64).
    """
    if any(marker in text for marker in _PRIVATE_MARKERS):
        pub = f"{source}.pub"
        hint = f"give {pub}" if source != "-" and Path(pub).is_file() else "give its public half (the .pub file)"
        raise click.ClickException(f"{source} is a private key, which never leaves your machine: {hint}")
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise click.ClickException(
            f"{source} is an RFC 4716 (SSH2) public key: convert it with `ssh-keygen -i -f {source}` first"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise click.ClickException(f"{source} holds no public key")
    if len(lines) > 1:
        raise click.ClickException(f"{source} holds {len(lines)} keys: add them one at a time")
    return lines[0]


def _read_key_file(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(_KEY_FILE_LIMIT + 1)
        else:
            with Path(path).expanduser().open("rb") as handle:
                data = handle.read(_KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > _KEY_FILE_LIMIT:
        raise click.ClickException(f"{path} is too large to be a public key")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise click.ClickException(f"{path} is not a public key file (not text)") from None


@click.group("ssh-key")
def ssh_key_group() -> None:
    """Your SSH public keys: the sshd of each of your environments accepts exactly these."""


@ssh_key_group.command("add")
@click.argument("path", metavar="PATH")
@click.option("--name", help="A label (default: the key's comment).")
@json_option
def ssh_key_add(path: str, name: str | None, as_json: bool) -> None:
    """Add a public key from PATH: ~/.ssh/id_ed25519.pub, say ('-' reads standard input)."""
    body: dict[str, Any] = {"public_key": public_key_line(_read_key_file(path), path)}
    if name is not None:
        body["name"] = name
    added = _client().request("POST", "/me/ssh-keys", json=body)
    if as_json:
        _echo_json(added)
        return
    click.echo(f"added key {added['id']} {added['name']!r}: {added['key_type']} {added['bits']} {added['fingerprint']}")


@ssh_key_group.command("list")
@json_option
def ssh_key_list(as_json: bool) -> None:
    """Your public keys with their fingerprints (as `ssh-keygen -lf` prints them)."""
    keys = _client().request("GET", "/me/ssh-keys")
    if as_json:
        _echo_json(keys)
        return
    _table(["ID", "NAME", "TYPE", "BITS", "FINGERPRINT", "ADDED"], ssh_key_rows(keys))


def ssh_key_rows(keys: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for key in keys:
        yield [key["id"], key["name"], key["key_type"], key["bits"], key["fingerprint"], key["created_at"]]


@ssh_key_group.command("delete")
@click.argument("key_id", metavar="ID", type=int)
def ssh_key_delete(key_id: int) -> None:
    """Delete one of your keys by its ID (see `remotegpu ssh-key list`); running sessions keep what they read."""
    _client().request("DELETE", f"/me/ssh-keys/{key_id}")
    click.echo(f"deleted key {key_id}")


# --- env: the request body ----------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GPUS = re.compile(r"(?:(?P<type>[A-Za-z0-9_.-]+):)?(?P<count>\d+)")


class _Minutes(click.ParamType[int]):
    """A time limit as sbatch's ``-t`` takes it: minutes, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return minutes(str(value))
        except DirectiveError as exc:
            self.fail(str(exc), param, ctx)


class _MemoryMib(click.ParamType[int]):
    """A memory size as sbatch's ``--mem`` takes it (default unit M; K, M, G, T): MiB."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            mib = memory(str(value))
        except DirectiveError as exc:
            self.fail(str(exc), param, ctx)
        if mib == 0:
            self.fail("--mem=0 (all of a node's memory) is for batch jobs: give a size like 16G", param, ctx)
        return mib


class _Gpus(click.ParamType[tuple[int, str | None]]):
    """``N`` or ``TYPE:N`` (as sbatch's ``--gpus``)."""

    name = "[TYPE:]N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, str | None]:
        if isinstance(value, tuple):
            return value
        match = _GPUS.fullmatch(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not a GPU count: use N or TYPE:N (e.g. 2, a100:2)", param, ctx)
        return int(match["count"]), match["type"]


class _EnvVar(click.ParamType[tuple[str, str]]):
    name = "NAME=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            self.fail(f"{value!r} is not NAME=VALUE (a variable name, then '=')", param, ctx)
        return key, text


def create_body(
    name: str,
    *,
    description: str | None = None,
    start: bool = True,
    gpus: tuple[int, str | None] | None = None,
    gpu_type: str | None = None,
    cpus: int | None = None,
    mem_mib: int | None = None,
    time_minutes: int | None = None,
    partition: str | None = None,
    image: str | None = None,
    datasets: Sequence[str] = (),
    models: Sequence[str] = (),
    env: Sequence[tuple[str, str]] = (),
    ssh: bool = True,
    tensorboard: bool = False,
    tensorboard_logdir: str | None = None,
) -> dict[str, Any]:
    """The ``EnvironmentCreate`` body: what was given, nothing else (the gateway's defaults for the rest).

    ``--gpus a100:2`` and ``--gpu-type a100`` are one thing said twice; two different types are refused. A
    TensorBoard log directory asks for TensorBoard.
    """
    body: dict[str, Any] = {"name": name, "start": start}
    if description is not None:
        body["description"] = description
    if gpus is not None:
        count, typed = gpus
        if typed and gpu_type and typed != gpu_type:
            raise click.BadParameter(f"--gpus {typed}:{count} and --gpu-type {gpu_type} disagree", param_hint="--gpus")
        body["gpus"] = count
        gpu_type = gpu_type or typed
    if gpu_type is not None:
        body["gpu_type"] = gpu_type
    given = {
        "cpus": cpus,
        "mem_mib": mem_mib,
        "time_minutes": time_minutes,
        "partition": partition,
        "image": image,
        "tensorboard_logdir": tensorboard_logdir,
    }
    body |= {key: value for key, value in given.items() if value is not None}
    if datasets:
        body["datasets"] = list(datasets)
    if models:
        body["models"] = list(models)
    if env:
        body["env"] = dict(env)
    body["services"] = (["ssh"] if ssh else []) + (["tensorboard"] if tensorboard or tensorboard_logdir else [])
    return body


# --- env: finding one, showing them --------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdef")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")  # EnvironmentName's allow-list


def _environments_path(ws: str) -> str:
    return f"/workspaces/{ws}/environments"


def _pages(client: GatewayClient, ws: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every environment the filters match, page by page."""
    offset = 0
    while True:
        page = client.request("GET", _environments_path(ws), params={**params, "limit": 500, "offset": offset})
        yield from page["items"]
        offset += len(page["items"])
        if not page["items"] or (page.get("total") is not None and offset >= page["total"]):
            return


def pick(ref: str, by_name: Sequence[dict[str, Any]], by_prefix: Sequence[dict[str, Any]], me: str | None) -> Any:
    """Which environment ``ref`` names, given those with that name and those whose id starts with it.

    A name beats an id prefix. Several of one name (an admin sees everyone's ``dev``): the caller's own, if
    theirs is one of them; otherwise the user must give the id. ``None``: nothing matches.
    """
    if len(by_name) > 1:
        own = [env for env in by_name if env["user"] == me]
        if len(own) == 1:
            return own[0]
        users = ", ".join(sorted(env["user"] for env in by_name))
        raise ApiError(
            400, _problem("environment", f"{ref} names environments of several users ({users}): give its id")
        )
    if by_name:
        return by_name[0]
    if len(by_prefix) > 1:
        raise ApiError(400, _problem("environment", f"{ref} starts the ids of several environments: give more of it"))
    return by_prefix[0] if by_prefix else None


def resolve_environment(client: GatewayClient, ws: str, ref: str) -> dict[str, Any]:
    """The environment ``ref`` names in ``ws``: its id (32 hex digits), its name, or a unique id prefix (4+)."""
    lowered = ref.lower()
    if len(ref) == 32 and set(lowered) <= _HEX:
        try:
            found: dict[str, Any] = client.request("GET", f"{_environments_path(ws)}/{lowered}")
            return found
        except ApiError as exc:
            if exc.status != 404:
                raise
    is_name, is_prefix = bool(_NAME.fullmatch(ref)), 4 <= len(ref) < 32 and set(lowered) <= _HEX
    if not is_name and not is_prefix:
        raise ApiError(400, _problem("environment", f"{ref!r} is not an environment name or id"))
    by_name = [env for env in _pages(client, ws, {"name": ref}) if env["name"] == ref] if is_name else []
    by_prefix: list[dict[str, Any]] = []
    if not by_name and is_prefix:
        by_prefix = [env for env in _pages(client, ws, {}) if env["id"].startswith(lowered)]
    me = client.request("GET", "/me")["user"]["name"] if len(by_name) > 1 else None
    chosen = pick(ref, by_name, by_prefix, me)
    if chosen is None:
        raise ApiError(404, _problem("environment", f"no environment {ref} in workspace {ws}"))
    return dict(chosen)


def _problem(field: str, detail: str) -> dict[str, Any]:
    return {"detail": detail, "errors": [{"field": field, "message": detail}]}


def _short(env_id: str) -> str:
    return env_id[:8]


def gpus_text(spec: Mapping[str, Any]) -> str:
    count = spec.get("gpus") or 0
    return f"{spec['gpu_type']}:{count}" if count and spec.get("gpu_type") else str(count)


def _node(env: Mapping[str, Any]) -> str | None:
    session = env.get("session") or {}
    return session.get("node") if env["state"] in ("starting", "running", "stopping", "unknown") else None


def env_rows(envs: Iterable[Mapping[str, Any]], now: datetime) -> Iterator[list[Any]]:
    """``env list``'s rows: ID (short), NAME, USER, STATE, GPUS, NODE, SSH (the public port), AGE, REASON."""
    for env in envs:
        ssh = env.get("ssh") or {}
        yield [
            _short(env["id"]),
            env["name"],
            env["user"],
            env["state"],
            gpus_text(env.get("spec") or {}),
            _node(env),
            ssh.get("port"),
            age(env.get("created_at"), now),
            env.get("reason"),
        ]


ENV_HEADERS = ["ID", "NAME", "USER", "STATE", "GPUS", "NODE", "SSH", "AGE", "REASON"]


def _minutes_text(value: int | None) -> str | None:
    if value is None:
        return None
    days, rest = divmod(value, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02}:{rest % 60:02}:00"


def _mib_text(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value // 1024}G" if value % 1024 == 0 else f"{value}M"


def show_lines(env: Mapping[str, Any]) -> list[str]:
    """``env show``: every field, the ready-to-paste ssh command and the ``~/.ssh/config`` stanza."""
    spec = env.get("spec") or {}
    session = env.get("session") or {}
    ssh = env.get("ssh") or {}
    rows: list[tuple[str, Any]] = [
        ("Environment", env["id"]),
        ("Name", env["name"]),
        ("Description", env.get("description")),
        ("User", env["user"]),
        ("State", env["state"]),
        ("Reason", env.get("reason")),
        ("Starts", env.get("starts")),
        ("Slurm job", session.get("slurm_job_id")),
        ("Slurm state", session.get("slurm_state")),
        ("Node", session.get("node")),
        ("Started", session.get("started_at")),
        ("Ended", session.get("ended_at")),
        ("GPUs", gpus_text(spec)),
        ("CPUs", spec.get("cpus")),
        ("Memory", _mib_text(spec.get("mem_mib"))),
        ("Time limit", _minutes_text(spec.get("time_minutes")) or ("partition default" if spec else None)),
        ("Partition", spec.get("partition")),
        ("Image", spec.get("image")),
        ("Datasets", ", ".join(spec.get("datasets") or [])),
        ("Models", ", ".join(spec.get("models") or [])),
        ("Env", ", ".join(f"{k}={v}" for k, v in (spec.get("env") or {}).items())),
        ("Services", ", ".join(spec.get("services") or [])),
        ("TensorBoard", env.get("tensorboard_url")),
        ("SSH", ssh.get("command")),
        ("Created", env.get("created_at")),
        ("Updated", env.get("updated_at")),
    ]
    lines = [f"{label + ':':13} {'-' if value is None or value == '' else value}" for label, value in rows]
    if ssh.get("config"):
        lines += ["", "~/.ssh/config:", *(f"  {line}" for line in ssh["config"].rstrip("\n").splitlines())]
    return lines


def port_rows(ports: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for port in ports:
        released = port.get("released_at")
        reason = port.get("release_reason")
        yield [
            port["service"],
            port["public_port"],
            port.get("node"),
            port["node_port"],
            port.get("last_accessed_at"),
            f"{port['auto_release_hours']}h",
            f"{released} ({reason})" if released and reason else released,
        ]


PORT_HEADERS = ["SERVICE", "PUBLIC PORT", "NODE", "NODE PORT", "LAST ACCESSED", "IDLE RELEASE", "RELEASED"]


def event_rows(events: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for event in events:
        yield [event["at"], event["kind"], event.get("actor"), event.get("message")]


# --- env: ssh -----------------------------------------------------------------------------------------------


def ssh_argv(env: Mapping[str, Any], extra: Sequence[str]) -> list[str]:
    """``ssh -p PORT user@host`` from the environment's ``ssh`` field, then the caller's own ssh options or
    remote command (OpenSSH takes options after the destination too).

    The host key is remembered under the environment (``HostKeyAlias=remotegpu-env-ID``), not the gateway's
    ``[host]:port``: public ports are handed to other environments once released, and one environment keeps
    its host key across restarts and remapped ports. ``StrictHostKeyChecking=accept-new`` trusts that key on
    the first connection and refuses a changed one afterwards.
    """
    ssh = env.get("ssh")
    if not ssh:
        raise click.ClickException(not_reachable(env))
    return [
        "ssh",
        "-p",
        str(ssh["port"]),
        "-o",
        f"HostKeyAlias=remotegpu-env-{env['id']}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        f"{ssh['user']}@{ssh['host']}",
        *extra,
    ]


def not_reachable(env: Mapping[str, Any]) -> str:
    """Why there is no ssh to an environment, and what to do."""
    name, state, reason = env["name"], env["state"], env.get("reason")
    why = f" ({reason})" if reason else ""
    if state in ("stopped", "failed"):
        return f"environment {name} is {state}{why}: start it with `remotegpu env start {name} --wait`"
    if state in ("pending", "starting"):
        return f"environment {name} is {state}{why}: wait for it with `remotegpu env start {name} --wait`"
    if "ssh" not in ((env.get("spec") or {}).get("services") or []):
        return f"environment {name} runs no sshd: recreate it with --ssh"
    if state == "running":
        return f"environment {name} has no SSH port mapped: map one with `remotegpu env ports {name} --remap`"
    return f"environment {name} is {state}{why}: no SSH to it now"


# --- env: --wait --------------------------------------------------------------------------------------------

WAIT_POLL_SECONDS = 1.0


class Waiter:
    """What ``--wait`` makes of each view of an environment: a progress line when something changed, and
    whether the wait is over (done, or failed with why).

    Toward ``running``: the wait is over once it runs and, with SSH among its services, its ``ssh`` is set.
    A ``stopped`` seen before the new start got going (a restart stops the old session first) is not the end:
    only one of a session newer than ``prior_session``, or after pending/starting/running was seen.
    """

    def __init__(self, target: str, prior_session: int = 0) -> None:
        self.target = target
        self.prior_session = prior_session
        self.seen_active = False
        self.last: tuple[Any, ...] | None = None

    def progress(self, env: Mapping[str, Any]) -> str | None:
        ssh = env.get("ssh") or {}
        now = (env["state"], env.get("reason"), _node(env), ssh.get("port"))
        if now == self.last:
            return None
        self.last = now
        line = str(env["state"]) + (f" ({env['reason']})" if env.get("reason") else "")
        line += f" on {now[2]}" if now[2] else ""
        line += f", ssh port {now[3]}" if now[3] else ""
        return line

    def outcome(self, env: Mapping[str, Any]) -> tuple[bool, str] | None:
        """``(True, "")`` done, ``(False, why)`` failed, None: keep waiting."""
        state = env["state"]
        reason = f": {env['reason']}" if env.get("reason") else ""
        if self.target == "stopped":
            if state == "stopped":
                return True, ""
            if state == "failed":
                return False, f"environment {env['name']} failed{reason}"
            return None
        session = (env.get("session") or {}).get("number") or 0
        if state in ("pending", "starting", "running"):
            self.seen_active = True
        if state == "running" and self._reachable(env):
            return True, ""
        if state == "failed":
            return False, f"environment {env['name']} failed{reason}"
        if state == "stopped" and (self.seen_active or session > self.prior_session):
            return False, f"environment {env['name']} stopped{reason}"
        return None

    @staticmethod
    def _reachable(env: Mapping[str, Any]) -> bool:
        services = (env.get("spec") or {}).get("services") or []
        return "ssh" not in services or bool(env.get("ssh"))


def wait_for(
    client: GatewayClient,
    ws: str,
    env: dict[str, Any],
    waiter: Waiter,
    timeout: float,
) -> dict[str, Any]:
    """Poll the environment until ``waiter`` says it is over, printing progress on stderr; its last view.

    Ends the command with status 1 (and why) if it failed, stopped or ``timeout`` seconds (0: none) passed.
    """
    began = time.monotonic()
    path = f"{_environments_path(ws)}/{env['id']}"
    while True:
        if (line := waiter.progress(env)) is not None:
            click.echo(f"[{int(time.monotonic() - began):>4}s] {env['name']}: {line}", err=True)
        outcome = waiter.outcome(env)
        if outcome is not None:
            done, why = outcome
            if not done:
                raise click.ClickException(why)
            return env
        if timeout and time.monotonic() - began >= timeout:
            raise click.ClickException(
                f"environment {env['name']} is still {env['state']} after {int(timeout)}s (it goes on; "
                f"see `remotegpu env show {env['name']}`)"
            )
        time.sleep(WAIT_POLL_SECONDS)
        env = client.request("GET", path)


def _wait_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        default=600,
        show_default=True,
        help="With --wait: give up after this many seconds (0: never).",
    )(command)
    return click.option(
        "--wait", is_flag=True, help="Show progress until it is reachable (or stopped); non-zero if it fails."
    )(command)


def _session_number(env: Mapping[str, Any]) -> int:
    return int((env.get("session") or {}).get("number") or 0)


def _ready_message(env: Mapping[str, Any]) -> str:
    ssh = env.get("ssh") or {}
    lines = [f"environment {env['name']} is running" + (f" on {_node(env)}" if _node(env) else "")]
    if ssh.get("command"):
        lines.append(f"  {ssh['command']}")
    if env.get("tensorboard_url"):
        lines.append(f"  TensorBoard: {env['tensorboard_url']}")
    return "\n".join(lines)


# --- env: the commands --------------------------------------------------------------------------------------


@click.group("env")
def env_group() -> None:
    """Development environments: GPUs you keep, reached over SSH (and TensorBoard); /gemini/code persists."""


def _ws(client: GatewayClient, workspace: str | None) -> str:
    return workspace or client.default_workspace()


def _resource_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What an environment asks of Slurm, as ``create`` and ``set`` take it (``set``: the lists replace them)."""
    for option in reversed(
        [
            click.option("--gpus", type=_Gpus(), help="GPUs on its node: N or TYPE:N."),
            click.option("--gpu-type", help="GPU type (e.g. a100)."),
            click.option("-c", "--cpus", type=click.IntRange(1), help="CPUs."),
            click.option("--mem", type=_MemoryMib(), help="Memory as sbatch's --mem: 16G, 512M (default unit M)."),
            click.option(
                "-t",
                "--time",
                "time_limit",
                type=_Minutes(),
                help="Time limit of each start as sbatch's -t: 120, 2:00:00, 1-0.",
            ),
            click.option("-p", "--partition"),
            click.option("--image", help="Container image."),
            click.option("--dataset", "datasets", multiple=True, metavar="PATH", help="A dataset to mount (up to 3)."),
            click.option("--model", "models", multiple=True, metavar="PATH", help="A model to mount (up to 3)."),
            click.option(
                "--env", "env_vars", type=_EnvVar(), multiple=True, help="An environment variable (repeatable)."
            ),
        ]
    ):
        command = option(command)
    return command


@env_group.command("create")
@click.argument("name")
@workspace_option
@_resource_options
@click.option("--ssh/--no-ssh", default=True, show_default=True, help="Run sshd with your registered keys.")
@click.option("--tensorboard", is_flag=True, help="Run TensorBoard on the environment's output.")
@click.option("--tensorboard-logdir", metavar="PATH", help="TensorBoard's log directory (implies --tensorboard).")
@click.option("--description")
@click.option("--no-start", is_flag=True, help="Only define it (stopped); `remotegpu env start` later.")
@_wait_options
@json_option
def env_create(
    name: str,
    workspace: str | None,
    gpus: tuple[int, str | None] | None,
    gpu_type: str | None,
    cpus: int | None,
    mem: int | None,
    time_limit: int | None,
    partition: str | None,
    image: str | None,
    datasets: tuple[str, ...],
    models: tuple[str, ...],
    env_vars: tuple[tuple[str, str], ...],
    ssh: bool,
    tensorboard: bool,
    tensorboard_logdir: str | None,
    description: str | None,
    no_start: bool,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Create environment NAME and start it (a Slurm job as you, under the workspace's account)."""
    if wait and no_start:
        raise click.UsageError("--wait waits for a start: not with --no-start")
    body = create_body(
        name,
        description=description,
        start=not no_start,
        gpus=gpus,
        gpu_type=gpu_type,
        cpus=cpus,
        mem_mib=mem,
        time_minutes=time_limit,
        partition=partition,
        image=image,
        datasets=datasets,
        models=models,
        env=env_vars,
        ssh=ssh,
        tensorboard=tensorboard,
        tensorboard_logdir=tensorboard_logdir,
    )
    client = _client()
    ws = _ws(client, workspace)
    # (one Slurm refuses at its first start is not made: the error alone says it)
    created: dict[str, Any] = client.request("POST", _environments_path(ws), json=body)
    if not as_json:
        click.echo(f"created environment {created['name']} ({created['id']}) in {ws}: {created['state']}")
    if wait:
        created = wait_for(client, ws, created, Waiter("running"), wait_timeout)
        if not as_json:
            click.echo(_ready_message(created))
    if as_json:
        _echo_json(created)


@env_group.command("list")
@workspace_option
@click.option("--state", type=click.Choice(STATES), help="Only environments in this state.")
@click.option("--user", help="Only this user's (workspace admins see everyone's).")
@click.option("--json", "as_json", is_flag=True, help="Print them as the gateway's JSON, one list of every page.")
def env_list(workspace: str | None, state: str | None, user: str | None, as_json: bool) -> None:
    """Environments of the workspace you can see (yours; everyone's for admins and owners)."""
    client = _client()
    params = {k: v for k, v in (("state", state), ("user", user)) if v}
    envs = list(_pages(client, _ws(client, workspace), params))
    if as_json:
        _echo_json(envs)
        return
    _table(ENV_HEADERS, env_rows(envs, datetime.now(UTC)))


@env_group.command("show")
@click.argument("ref", metavar="ID|NAME")
@workspace_option
@json_option
def env_show(ref: str, workspace: str | None, as_json: bool) -> None:
    """One environment: its state, session, resources, and how to reach it (ssh line, ~/.ssh/config stanza)."""
    client = _client()
    env = resolve_environment(client, _ws(client, workspace), ref)
    if as_json:
        _echo_json(env)
        return
    for line in show_lines(env):
        click.echo(line)


def _control(action: str, target: str, help_text: str) -> None:
    @click.argument("ref", metavar="ID|NAME")
    @workspace_option
    @_wait_options
    @json_option
    def command(ref: str, workspace: str | None, wait: bool, wait_timeout: float, as_json: bool) -> None:
        client = _client()
        ws = _ws(client, workspace)
        env = resolve_environment(client, ws, ref)
        prior = _session_number(env)
        answer: dict[str, Any] = client.request("POST", f"{_environments_path(ws)}/{env['id']}/{action}")
        if not as_json:
            click.echo(f"{action} requested for {answer['name']} ({_short(answer['id'])}): {answer['state']}")
        if wait:
            answer = wait_for(client, ws, answer, Waiter(target, prior), wait_timeout)
            if not as_json:
                click.echo(
                    _ready_message(answer) if target == "running" else f"environment {answer['name']} is stopped"
                )
        if as_json:
            _echo_json(answer)

    command.__doc__ = help_text
    env_group.command(action)(command)


_control("stop", "stopped", "Stop an environment: its Slurm job ends and its GPUs are freed; /gemini/code stays.")
_control("start", "running", "Start a stopped environment again: a new Slurm job with the same settings.")
_control("restart", "running", "Stop an environment's session and start a new one.")


def patch_body(env: Mapping[str, Any], given: Mapping[str, Any], ssh: bool | None, tensorboard: bool | None) -> Any:
    """The ``EnvironmentPatch`` body: the options given, nothing else; services from the environment's own."""
    body = {key: value for key, value in given.items() if value not in (None, ())}
    for key in ("datasets", "models"):
        if key in body:
            body[key] = list(body[key])
    if "env" in body:
        body["env"] = dict(body["env"])
    if "gpus" in body:
        count, typed = body["gpus"]
        body["gpus"] = count
        if typed:
            body.setdefault("gpu_type", typed)
    if ssh is not None or tensorboard is not None:
        services = list(env["spec"].get("services", []))
        for service, wanted in (("ssh", ssh), ("tensorboard", tensorboard)):
            if wanted is True and service not in services:
                services.append(service)
            if wanted is False and service in services:
                services.remove(service)
        body["services"] = services
    return body


@env_group.command("set")
@click.argument("ref", metavar="ID|NAME")
@workspace_option
@click.option("--name", "new_name", help="A new name.")
@click.option("--description")
@_resource_options
@click.option("--ssh/--no-ssh", default=None, help="Run sshd or not.")
@click.option("--tensorboard/--no-tensorboard", default=None, help="Run TensorBoard or not.")
@json_option
def env_set(
    ref: str,
    workspace: str | None,
    new_name: str | None,
    description: str | None,
    gpus: tuple[int, str | None] | None,
    gpu_type: str | None,
    cpus: int | None,
    mem: int | None,
    time_limit: int | None,
    partition: str | None,
    image: str | None,
    datasets: tuple[str, ...],
    models: tuple[str, ...],
    env_vars: tuple[tuple[str, str], ...],
    ssh: bool | None,
    tensorboard: bool | None,
    as_json: bool,
) -> None:
    """Change an environment: name and description at once, the rest from its next start."""
    client = _client()
    ws = _ws(client, workspace)
    env = resolve_environment(client, ws, ref)
    given = {
        "name": new_name,
        "description": description,
        "gpus": gpus,
        "gpu_type": gpu_type,
        "cpus": cpus,
        "mem_mib": mem,
        "time_minutes": time_limit,
        "partition": partition,
        "image": image,
        "datasets": datasets,
        "models": models,
        "env": env_vars,
    }
    body = patch_body(env, given, ssh, tensorboard)
    if not body:
        raise click.UsageError("nothing to change: give an option")
    changed: dict[str, Any] = client.request("PATCH", f"{_environments_path(ws)}/{env['id']}", json=body)
    if as_json:
        _echo_json(changed)
        return
    later = " (from its next start)" if set(body) - {"name", "description"} else ""
    click.echo(f"changed environment {changed['name']} ({_short(changed['id'])}): {', '.join(sorted(body))}{later}")


@env_group.command("delete")
@click.argument("ref", metavar="ID|NAME")
@workspace_option
def env_delete(ref: str, workspace: str | None) -> None:
    """Delete an environment (a running session is stopped first); your /gemini/code is kept."""
    client = _client()
    ws = _ws(client, workspace)
    env = resolve_environment(client, ws, ref)
    client.request("DELETE", f"{_environments_path(ws)}/{env['id']}")
    click.echo(f"deleted environment {env['name']} ({_short(env['id'])})")


@env_group.command("ports")
@click.argument("ref", metavar="ID|NAME")
@workspace_option
@click.option("--remap", is_flag=True, help="Map the ports released (after 48 h idle) again.")
@json_option
def env_ports(ref: str, workspace: str | None, remap: bool, as_json: bool) -> None:
    """The gateway ports mapped to the environment's services (SSH, TensorBoard)."""
    client = _client()
    ws = _ws(client, workspace)
    env = resolve_environment(client, ws, ref)
    ports = client.request("POST" if remap else "GET", f"{_environments_path(ws)}/{env['id']}/ports")
    if as_json:
        _echo_json(ports)
        return
    _table(PORT_HEADERS, port_rows(ports))


@env_group.command("events")
@click.argument("ref", metavar="ID|NAME")
@workspace_option
@json_option
def env_events(ref: str, workspace: str | None, as_json: bool) -> None:
    """What happened to the environment: starts, stops, Slurm's state changes, ports mapped and released."""
    client = _client()
    ws = _ws(client, workspace)
    env = resolve_environment(client, ws, ref)
    events = client.request("GET", f"{_environments_path(ws)}/{env['id']}/events")
    if as_json:
        _echo_json(events)
        return
    _table(["AT", "EVENT", "BY", "MESSAGE"], event_rows(events))


@env_group.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("ref", metavar="ID|NAME")
@workspace_option
@click.option("--print", "print_only", is_flag=True, help="Print the ssh command instead of running it.")
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SSH ARGS | COMMAND]")
def env_ssh(ref: str, workspace: str | None, print_only: bool, ssh_args: tuple[str, ...]) -> None:
    """SSH into a running environment: `ssh -p PORT you@gateway-host`, then your ssh options or a command.

    This command's own options come before ID|NAME; everything after it goes to ssh, e.g.
    `remotegpu env ssh dev -- -L 6006:localhost:6006` or `remotegpu env ssh dev -- nvidia-smi`.

    The host key is remembered per environment (HostKeyAlias) and trusted on first use
    (StrictHostKeyChecking=accept-new); a changed key is refused.
    """
    client = _client()
    env = resolve_environment(client, _ws(client, workspace), ref)
    if env["state"] != "running" or not env.get("ssh"):
        raise click.ClickException(not_reachable(env))
    extra = list(ssh_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    argv = ssh_argv(env, extra)
    if print_only:
        click.echo(shlex.join(argv))
        return
    program = shutil.which("ssh")
    if program is None:
        raise click.ClickException("ssh is not installed here (OpenSSH's client: e.g. apt install openssh-client)")
    sys.stdout.flush()
    os.execv(program, argv)  # noqa: S606 - the user's own ssh, as they would run it; no shell
