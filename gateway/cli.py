"""The ``remotegpu`` command: run the service, manage the schema, bootstrap accounts."""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from gateway.client.api import ApiError, ClientError, GatewayClient, remove_credentials, save_credentials
from slurm.records import JobState

if TYPE_CHECKING:  # the server side (settings, database, Litestar) is imported by the commands that use it:
    # a researcher's `remotegpu submit` on a login node starts in a fraction of the time
    from gateway.config import Settings
    from gateway.db.session import Database

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    """The server's settings (``--config`` file, REMOTEGPU_* variables), read the first time a command needs them."""
    from gateway.config import SettingsError, load_settings

    root = ctx.find_root()
    if not isinstance(root.obj, _Config):
        raise click.ClickException("internal: no configuration context")
    if root.obj.settings is None:
        try:
            root.obj.settings = load_settings(root.obj.file)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from exc
    return root.obj.settings


class _Config:
    """What ``main`` leaves for the commands: the settings file named, and the settings once read."""

    def __init__(self, file: str | None) -> None:
        self.file = file
        self.settings: Settings | None = None


def _run_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    from gateway.db.session import Database
    from gateway.errors import GatewayError

    async def run() -> T:
        database = Database(settings.database_url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except GatewayError as exc:
        field = f" ({exc.errors[0].field})" if exc.errors else ""
        raise click.ClickException(f"{exc.detail}{field}") from exc


class _Main(click.Group):
    """The top-level group: a failure talking to the gateway (ClientError) is one line on stderr and exit
    status 1, whichever command met it; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="REMOTEGPU_CONFIG",
    help="TOML settings file (REMOTEGPU_CONFIG). Environment variables REMOTEGPU_* override it.",
)
@click.version_option(package_name="remotegpu")
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """RemoteGPU Gateway: a GPU platform on top of a Slurm cluster."""
    ctx.obj = _Config(config_file)


@main.command()
@click.option("--host", help="Address to listen on (REMOTEGPU_HOST, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (REMOTEGPU_PORT, default 8000).")
@click.option("--no-migrate", is_flag=True, help="Do not upgrade the database schema before starting.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, no_migrate: bool) -> None:
    """Run the HTTP API (one process; put several behind a load balancer to scale out)."""
    import msgspec
    import uvicorn

    from gateway.app import create_app
    from gateway.db import migrate
    from gateway.observability import configure_logging

    settings = _settings(ctx)
    # the flags win over the settings everywhere, e.g. in the URL environments' supervisors call back to
    settings = msgspec.structs.replace(
        settings, host=host or settings.host, port=port if port is not None else settings.port
    )
    configure_logging(settings.log_level, settings.log_format)
    if settings.auto_migrate and not no_migrate:
        migrate.upgrade(settings.database_url)
    import structlog

    structlog.get_logger("gateway").info(
        "starting",
        database=settings.database_url_redacted,
        host=host or settings.host,
        port=port or settings.port,
    )
    app = create_app(settings)
    # Move everything built at start-up out of the garbage collector's sight: full collections over it were
    # the p99 latency (tens of milliseconds every few seconds).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )


@main.command()
@click.option("--once", is_flag=True, help="Run one poll cycle and exit.")
@click.pass_context
def worker(ctx: click.Context, once: bool) -> None:
    """Run the background loops: the job poller (one squeue per cycle for every job of the cluster) and the
    reconciliation of Slurm accounts, associations and GrpTRES with workspaces, members and quotas."""
    from gateway.observability import configure_logging
    from gateway.worker import run_worker

    settings = _settings(ctx)
    configure_logging(settings.log_level, settings.log_format)
    _run_db(settings, lambda database: run_worker(settings, database, once=once))


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Upgrade the schema to REVISION (default: the latest)."""
    from gateway.db import migrate

    settings = _settings(ctx)
    migrate.upgrade(settings.database_url, revision)
    revision_now = migrate.current_revision(settings.database_url)
    click.echo(f"database {settings.database_url_redacted} at revision {revision_now}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' removes every table)."""
    from gateway.db import migrate

    migrate.downgrade(_settings(ctx).database_url, revision)


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the schema revision of the database and the latest one known."""
    from gateway.db import migrate

    url = _settings(ctx).database_url
    click.echo(f"current: {migrate.current_revision(url) or 'empty'}\nhead:    {migrate.head_revision()}")


@main.group()
def admin() -> None:
    """Operator commands that act on the database directly (bootstrap, recovery)."""


def _password_from_env_or_prompt(*, confirm: bool = True) -> str:
    password = os.environ.get("REMOTEGPU_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise click.ClickException("set REMOTEGPU_PASSWORD or run in a terminal to be prompted")
        password = click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return password


@admin.command("create-user")
@click.argument("name")
@click.option("--admin", "is_admin", is_flag=True, help="Make the user a platform administrator.")
@click.option("--posix-name", help="POSIX account the user's jobs run as (default: NAME).")
@click.option("--email")
@click.option("--user-type", type=click.Choice(["internal", "external"]), default="internal", show_default=True)
@click.option("--region", help="Region used to route data to the nearest replica.")
@click.option("--no-password", is_flag=True, help="Create the user without a password (token or SSO only).")
@click.pass_context
def create_user(
    ctx: click.Context,
    name: str,
    is_admin: bool,
    posix_name: str | None,
    email: str | None,
    user_type: str,
    region: str | None,
    no_password: bool,
) -> None:
    """Create user NAME. The password comes from REMOTEGPU_PASSWORD or a prompt."""
    import msgspec

    from gateway.accounts.schemas import UserCreate
    from gateway.accounts.users import create_user as create
    from gateway.actor import Actor

    password = None if no_password else _password_from_env_or_prompt()
    raw: dict[str, Any] = {
        "name": name,
        "password": password,
        "posix_name": posix_name,
        "email": email,
        "user_type": user_type,
        "region": region,
        "is_admin": is_admin,
    }
    try:
        data = msgspec.convert(raw, UserCreate)
    except msgspec.ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc}") from exc

    async def work(database: Database) -> None:
        async with database.session() as session:
            await create(session, Actor.system("cli"), data)

    _run_db(_settings(ctx), work)
    click.echo(f"created {'admin ' if is_admin else ''}user {name}")


@admin.command("rotate-secrets")
@click.pass_context
def rotate_secrets(ctx: click.Context) -> None:
    """Seal every storage source's keys again with the first key of REMOTEGPU_SECRET_KEYS (after putting a new
    key first); the old key can then be dropped from the setting."""
    from gateway.crypto import SecretKeyError
    from gateway.datasets.sources import rotate_secrets as rotate

    settings = _settings(ctx)
    changed: list[int] = []

    async def work(database: Database) -> None:
        changed.append(await rotate(database, settings))

    try:
        _run_db(settings, work)
    except SecretKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"sealed again with key {_current_key(settings)}: {changed[0]} storage source(s)")


def _current_key(settings: Settings) -> str:
    from gateway.crypto import KeyRing

    return KeyRing.parse(settings.secret_keys).current


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.argument("username")
@click.option("--name", default="cli", show_default=True, help="Label to tell the token apart.")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), help="Default: the token_ttl_days setting.")
@click.pass_context
def token_create(ctx: click.Context, username: str, name: str, expires_in_days: int | None) -> None:
    """Issue an API token for USERNAME and print it (operator command, acts on the database)."""
    from gateway.accounts.auth import issue_token
    from gateway.accounts.users import get_user
    from gateway.actor import Actor

    settings = _settings(ctx)

    async def work(database: Database) -> str:
        async with database.session() as session:
            user = await get_user(session, username)
            created = await issue_token(
                session,
                Actor.system("cli"),
                user,
                name=name,
                ttl_days=expires_in_days or settings.token_ttl_days,
            )
            return created.token

    click.echo(_run_db(settings, work))


# --- user commands: talk to a gateway over HTTP -------------------------------------------------------------
# Every one takes its client from ``pass_client`` (REMOTEGPU_URL/TOKEN/WORKSPACE over the saved credentials);
# what goes wrong on the way (ClientError) is turned into one line by the top-level group, never a traceback.

P = ParamSpec("P")
R = TypeVar("R")


def _client() -> GatewayClient:
    """The command's gateway client, made once per invocation."""
    ctx = click.get_current_context()
    client: GatewayClient | None = ctx.meta.get("remotegpu.client")
    if client is None:
        client = ctx.meta["remotegpu.client"] = GatewayClient.from_environment()
    return client


def pass_client(command: Callable[Concatenate[GatewayClient, P], R]) -> Callable[P, R]:
    """Give the command the gateway client as its first argument."""

    @functools.wraps(command)
    def with_client(*args: P.args, **kwargs: P.kwargs) -> R:
        return command(_client(), *args, **kwargs)

    return with_client


def _client_call(work: Callable[[GatewayClient], T]) -> T:
    return work(_client())


workspace_option = click.option(
    "--workspace", "-W", help="Workspace slug (default: REMOTEGPU_WORKSPACE, the saved one, or your only one)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON (for scripts).")


def _ws(client: GatewayClient, workspace: str | None) -> str:
    return workspace or client.default_workspace()


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Left-aligned columns as wide as their widest cell; the last one is not padded."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1])


@main.command()
@click.option("--url", envvar="REMOTEGPU_URL", required=True, help="Gateway URL, e.g. http://127.0.0.1:8000")
@click.option("--username", prompt=True)
@click.option("--workspace", help="Default workspace for later commands.")
def login(url: str, username: str, workspace: str | None) -> None:
    """Log in with a password (REMOTEGPU_PASSWORD or a prompt) and save a token for the other commands
    (a 0600 file in your config dir)."""
    gateway = GatewayClient(url)
    password = _password_from_env_or_prompt(confirm=False)
    body = {"username": username, "password": password, "name": "cli"}
    token = gateway.request("POST", "/auth/tokens", json=body)["token"]
    click.echo(f"logged in; credentials saved to {save_credentials(gateway.url, token, workspace)}")


@main.command()
@pass_client
def logout(client: GatewayClient) -> None:
    """Revoke the token in use on the gateway and remove the saved credentials."""
    try:
        client.request("DELETE", "/auth/tokens")
    except ApiError as exc:
        if exc.status != 401:  # already revoked or expired: nothing left to revoke
            raise
    removed = remove_credentials()
    click.echo("logged out" + (f"; removed {removed}" if removed else ""))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(args: tuple[str, ...]) -> None:
    """Submit a batch script like sbatch: remotegpu submit [sbatch options] SCRIPT [ARGS].

    Reads #SBATCH directives (the command line overrides them; a GPU-per-node form on the command line
    replaces the script's --gres=gpu/--gpus-per-node). GPUs as written: --gres=gpu[:type][:N] and
    --gpus-per-node (per node), -G/--gpus (per job), --gpus-per-task, --mem-per-gpu, --cpus-per-gpu,
    --ntasks-per-gpu, --gpu-bind. Also -J -N (N or MIN-MAX) -n -c --ntasks-per-node --mem --mem-per-cpu -t
    --time-min -p -q -a -d -o -e --open-mode --export --export-file -D -H --mail-type --mail-user --exclusive
    -C -w -x -b --deadline --signal --requeue --no-requeue --reservation --nice --comment --wckey -m -L
    --kill-on-invalid-dep --get-user-env, -A/--account (picks the workspace with that Slurm account), plus --workspace,
    --dataset, --model, --image. Any other option is refused, by name and why.
    """
    from gateway.client.sbatch import job_request
    from slurm.directives import DirectiveError, split_command_line

    options, script_name, script_args = split_command_line(list(args))
    if script_name is None:
        raise click.UsageError("give the batch script to submit")
    script_path = Path(script_name)
    try:
        script = script_path.read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {script_path}: {exc.strerror}") from exc
    try:
        request = job_request(
            str(script_path),
            script,
            [*options, "--", *script_args],
            cwd=str(Path.cwd()),
            environ=os.environ,
            read_file=lambda path: Path(path).read_bytes(),
        )
    except DirectiveError as exc:
        raise click.ClickException(str(exc)) from exc

    def send(client: Any) -> tuple[str, Any]:
        ws = client.workspace_for(request.workspace, request.account)
        return ws, client.request("POST", f"/workspaces/{ws}/jobs", json=request.body)

    if request.test_only:  # Slurm's answer, on stderr as sbatch prints it; nothing is submitted

        def ask(client: Any) -> Any:
            ws = client.workspace_for(request.workspace, request.account)
            return client.request("POST", f"/workspaces/{ws}/jobs/test", json=request.body)

        click.echo(_client_call(ask)["message"], err=True)
        return

    ws, job = _client_call(send)
    if request.parsable:  # sbatch's "jobid[;cluster]": for jid=$(remotegpu submit --parsable ...) and -d afterok:$jid
        click.echo(str(job["slurm_job_id"]))
    else:
        click.echo(f"Submitted job {job['id']} (Slurm job {job['slurm_job_id']})")
    if request.wait:
        sys.exit(_client_call(lambda client: _wait_for_end(client, ws, job["id"])))


_ENDED_UNSUBMITTED = "SUBMIT_FAILED"
WAIT_POLL_SECONDS = 2.0


def _wait_for_end(client: GatewayClient, ws: str, job_id: str) -> int:
    """``sbatch --wait``: poll the job until it has ended; its exit code (an array's: the highest of its tasks,
    which the gateway reports), 1 for a job that ended without one (cancelled, never submitted...)."""
    import time

    while True:
        job = client.request("GET", f"/workspaces/{ws}/jobs/{job_id}")
        state = job["state"]
        if (state == _ENDED_UNSUBMITTED or JobState.parse(state).is_terminal) and not job.get("state_unknown"):
            code = int(job.get("exit_code") or 0)
            return code if code or state == JobState.COMPLETED.value else 1
        time.sleep(WAIT_POLL_SECONDS)


JOB_STATES = sorted({*(s.value for s in JobState), "SUBMITTING", "SUBMIT_FAILED"})
_RUNNING_LIKE = {"RUNNING", "COMPLETING", "SUSPENDED"}


def _elapsed(job: dict[str, Any], now: datetime) -> str:
    """squeue's TIME: ``M:SS``, ``H:MM:SS`` or ``D-HH:MM:SS``; ``0:00`` before the job starts."""
    if not job.get("started_at"):
        return "0:00"
    start = datetime.fromisoformat(job["started_at"])
    end = datetime.fromisoformat(job["ended_at"]) if job.get("ended_at") else now
    seconds = max(0, int((end - start).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02}:{minutes:02}:{secs:02}"
    if hours:
        return f"{hours}:{minutes:02}:{secs:02}"
    return f"{minutes}:{secs:02}"


def _gpus(job: dict[str, Any]) -> str:
    """GPUs of the job: what Slurm allocated (``a100:2``), else what was asked for."""
    allocated = job.get("allocated") or {}
    typed = [(k.split(":", 1)[1], v) for k, v in allocated.items() if k.startswith("gres/gpu:")]
    if typed:
        return ",".join(f"{kind}:{count}" for kind, count in typed)
    if allocated.get("gres/gpu"):
        return str(allocated["gres/gpu"])
    asked = job.get("requested") or {}
    total = asked.get("gpus")
    if total is None and asked.get("gpus_per_node"):
        total = int(asked["gpus_per_node"]) * int(asked.get("nodes") or 1)
    if not total:
        return "0"
    return f"{asked['gpu_type']}:{total}" if asked.get("gpu_type") else str(total)


def _node_count(job: dict[str, Any]) -> str:
    return str(len(job["nodes"]) if job.get("nodes") else (job.get("requested") or {}).get("nodes") or 1)


def _where(job: dict[str, Any]) -> str:
    """squeue's NODELIST(REASON): the nodes of a running job, ``(reason)`` of a waiting one."""
    if job["state"] in _RUNNING_LIKE and job.get("nodes"):
        return ",".join(job["nodes"])
    if job.get("reason") and job["reason"] != "None":
        return f"({job['reason']})"
    return ",".join(job.get("nodes") or []) or ""


def _short(job_id: str) -> str:
    return job_id[:8]


@main.command("jobs")
@workspace_option
@click.option("--state", type=click.Choice(JOB_STATES, case_sensitive=False), help="Only jobs in this state.")
@click.option("--user", help="Only this user's jobs (workspace admins see everyone's).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@json_option
@pass_client
def jobs_command(
    client: GatewayClient, workspace: str | None, state: str | None, user: str | None, limit: int, as_json: bool
) -> None:
    """List your jobs, newest first (all jobs of the workspace for its admins), like squeue."""
    params: dict[str, Any] = (
        {"limit": limit} | ({"state": state.upper()} if state else {}) | ({"user": user} if user else {})
    )
    page = client.request("GET", f"/workspaces/{_ws(client, workspace)}/jobs", params=params)
    if as_json:
        _echo_json(page)
        return
    now = datetime.now(UTC)
    _table(
        ["ID", "SLURM", "PARTITION", "NAME", "USER", "STATE", "ELAPSED", "NODES", "GPUS", "NODELIST(REASON)"],
        (
            [
                _short(job["id"]),
                job["slurm_job_id"],
                (job.get("requested") or {}).get("partition"),
                job["name"],
                job["user"],
                job["state"] + ("?" if job.get("state_unknown") else ""),
                _elapsed(job, now),
                _node_count(job),
                _gpus(job),
                _where(job),
            ]
            for job in page["items"]
        ),
    )


@main.command("job")
@click.argument("job_ref", metavar="JOB")
@workspace_option
@json_option
@pass_client
def job_command(client: GatewayClient, job_ref: str, workspace: str | None, as_json: bool) -> None:
    """Show one job. JOB is its gateway id, a unique prefix of it, or its Slurm job id."""
    job = client.resolve_job(_ws(client, workspace), job_ref)
    if as_json:
        _echo_json(job)
        return
    asked = job.get("requested") or {}
    rows: list[tuple[str, Any]] = [
        ("Job", job["id"]),
        ("Slurm job", job["slurm_job_id"]),
        ("Name", job["name"]),
        ("User", job["user"]),
        ("State", job["state"] + (" (unknown: Slurm not reachable)" if job.get("state_unknown") else "")),
        ("Reason", job.get("reason")),
        ("Exit code", job.get("exit_code")),
        ("Partition", asked.get("partition")),
        ("Nodes", ",".join(job.get("nodes") or []) or _node_count(job)),
        ("GPUs", _gpus(job)),
        ("Elapsed", _elapsed(job, datetime.now(UTC))),
        ("Created", job.get("created_at")),
        ("Submitted", job.get("submitted_at")),
        ("Started", job.get("started_at")),
        ("Ended", job.get("ended_at")),
    ]
    if job.get("array_tasks"):
        rows.append(("Array tasks", ", ".join(f"{k}={v}" for k, v in job["array_tasks"].items())))
    rows += [("Requested", ", ".join(f"{k}={v}" for k, v in asked.items()))]
    if job.get("allocated"):
        rows.append(("Allocated", ", ".join(f"{k}={v}" for k, v in job["allocated"].items())))
    for label, value in rows:
        click.echo(f"{label + ':':12} {'-' if value is None or value == '' else value}")


def _control(action: str, done: str) -> click.Command:
    @workspace_option
    @click.argument("job_refs", metavar="JOB...", nargs=-1, required=True)
    @pass_client
    def command(client: GatewayClient, job_refs: tuple[str, ...], workspace: str | None) -> None:
        ws = _ws(client, workspace)
        for ref in job_refs:
            job = client.resolve_job(ws, ref)
            answer = client.request("POST", f"/workspaces/{ws}/jobs/{job['id']}/{action}")
            click.echo(f"{done} {_short(job['id'])} (Slurm job {job['slurm_job_id'] or '-'}): {answer['state']}")

    command.__doc__ = f"{action.capitalize()} jobs (gateway id, unique prefix or Slurm job id)."
    return main.command(action)(command)


_control("cancel", "cancel requested for")
_control("hold", "held")
_control("release", "released")


@main.command("logs")
@click.argument("job_ref", metavar="JOB")
@workspace_option
@click.option("-n", "--lines", default=100, show_default=True, help="How many of the last lines to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it ends.")
@click.option("--stderr", "stream", flag_value="stderr", default="stdout", help="The job's standard error.")
@click.option("--task", type=int, help="Which task of an array job.")
@pass_client
def logs_command(
    client: GatewayClient, job_ref: str, workspace: str | None, lines: int, follow: bool, stream: str, task: int | None
) -> None:
    """Print a job's output (JOB: gateway id, unique prefix or Slurm job id)."""
    params: dict[str, Any] = {"lines": lines, "stream": stream}
    if task is not None:
        params["task"] = task
    ws = _ws(client, workspace)
    path = f"/workspaces/{ws}/jobs/{client.resolve_job(ws, job_ref)['id']}/logs"
    if not follow:
        for line in client.request("GET", path, params=params)["lines"]:
            click.echo(line)
        return
    out = sys.stdout.buffer
    for chunk in client.stream(path, {**params, "follow": "true"}):
        out.write(chunk)
        out.flush()


# --- workspaces, members, quotas, tokens, the cluster --------------------------------------------------------


@main.group("workspace")
def workspace_group() -> None:
    """Workspaces (each one a Slurm account)."""


@workspace_group.command("list")
@click.option("--all", "everything", is_flag=True, help="Every workspace (platform admins), not only yours.")
@json_option
@pass_client
def workspace_list(client: GatewayClient, everything: bool, as_json: bool) -> None:
    """The workspaces you belong to."""
    page = client.request("GET", "/workspaces", params={"limit": 500} | ({} if everything else {"mine": True}))
    if as_json:
        _echo_json(page)
        return
    _table(
        ["SLUG", "ROLE", "STATUS", "ACCOUNT", "NAME"],
        ([w["slug"], w.get("role"), w["status"], w["slurm_account"], w["name"]] for w in page["items"]),
    )


@workspace_group.command("show")
@click.argument("slug", required=False)
@json_option
@pass_client
def workspace_show(client: GatewayClient, slug: str | None, as_json: bool) -> None:
    """One workspace (default: yours) with its quota."""
    ws = _ws(client, slug)
    found = client.request("GET", f"/workspaces/{ws}")
    if as_json:
        _echo_json(found)
        return
    for key in ("slug", "name", "description", "slurm_account", "status", "role", "currency", "created_at"):
        click.echo(f"{key + ':':15} {found.get(key) if found.get(key) not in (None, '') else '-'}")


@workspace_group.command("create")
@click.argument("slug")
@click.option("--name", help="Display name (default: SLUG).")
@click.option("--description", default="")
@click.option("--slurm-account", help="Slurm account to use (default: derived from SLUG).")
@click.option("--owner", help="Owner (platform admins creating it for someone else).")
@json_option
@pass_client
def workspace_create(
    client: GatewayClient,
    slug: str,
    name: str | None,
    description: str,
    slurm_account: str | None,
    owner: str | None,
    as_json: bool,
) -> None:
    """Create a workspace; you are its owner."""
    body: dict[str, Any] = {"slug": slug, "name": name or slug, "description": description}
    body |= {k: v for k, v in (("slurm_account", slurm_account), ("owner", owner)) if v is not None}
    created = client.request("POST", "/workspaces", json=body)
    if as_json:
        _echo_json(created)
    else:
        click.echo(f"created workspace {created['slug']} (Slurm account {created['slurm_account']})")


@main.group("member")
def member_group() -> None:
    """Members of a workspace and their roles."""


@member_group.command("list")
@workspace_option
@json_option
@pass_client
def member_list(client: GatewayClient, workspace: str | None, as_json: bool) -> None:
    """The workspace's members."""
    page = client.request("GET", f"/workspaces/{_ws(client, workspace)}/members", params={"limit": 500})
    if as_json:
        _echo_json(page)
        return
    _table(["USER", "ROLE", "SINCE"], ([m["username"], m["role"], m["since"]] for m in page["items"]))


@member_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["member", "admin", "owner"]), default="member", show_default=True)
@workspace_option
@pass_client
def member_add(client: GatewayClient, username: str, role: str, workspace: str | None) -> None:
    """Add USERNAME to the workspace."""
    ws = _ws(client, workspace)
    client.request("POST", f"/workspaces/{ws}/members", json={"username": username, "role": role})
    click.echo(f"added {username} to {ws} as {role}")


@member_group.command("remove")
@click.argument("username")
@workspace_option
@pass_client
def member_remove(client: GatewayClient, username: str, workspace: str | None) -> None:
    """Remove USERNAME from the workspace."""
    ws = _ws(client, workspace)
    client.request("DELETE", f"/workspaces/{ws}/members/{username}")
    click.echo(f"removed {username} from {ws}")


@main.group("quota")
def quota_group() -> None:
    """A workspace's quota (enforced by Slurm as the account's GrpTRES)."""


def _print_quota(quota: dict[str, Any]) -> None:
    by_type = ", ".join(f"{k}={v}" for k, v in (quota.get("gpus_by_type") or {}).items())
    rows = [
        ("gpus", quota.get("gpus")),
        ("gpus by type", by_type or None),
        ("cpus", quota.get("cpus")),
        ("memory", _bytes(quota.get("memory_bytes"))),
        ("storage", _bytes(quota.get("storage_bytes"))),
        ("environments", quota.get("concurrent_environments")),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':14} {'unlimited' if value is None else value}")


def _bytes(value: int | None) -> str | None:
    if value is None:
        return None
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


@quota_group.command("show")
@workspace_option
@json_option
@pass_client
def quota_show(client: GatewayClient, workspace: str | None, as_json: bool) -> None:
    """The workspace's quota."""
    quota = client.request("GET", f"/workspaces/{_ws(client, workspace)}/quota")
    _echo_json(quota) if as_json else _print_quota(quota)


class NoLimit(enum.Enum):
    """``none`` given for a limit: remove it (null in the PATCH body), unlike an option not given at all."""

    NONE = "none"


_NO_LIMIT_WORDS = ("NONE", "UNLIMITED")


class _Limit(click.ParamType[int | NoLimit]):
    """A count, or ``none`` for no limit."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | NoLimit:
        if isinstance(value, NoLimit | int):
            return value
        if str(value).strip().upper() in _NO_LIMIT_WORDS:
            return NoLimit.NONE
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'none'", param, ctx)
        if number < 0:
            self.fail(f"{value} is negative", param, ctx)
        return number


class _Size(click.ParamType[int | NoLimit]):
    """A size like sbatch's: ``512M``, ``64G``, ``2T`` (bytes without a unit), or ``none``."""

    name = "SIZE|none"
    UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | NoLimit:
        if isinstance(value, NoLimit | int):
            return value
        text = str(value).strip().upper()
        if text in _NO_LIMIT_WORDS:
            return NoLimit.NONE
        text = text.removesuffix("B").removesuffix("I")
        number, unit = text.rstrip("KMGT"), text[len(text.rstrip("KMGT")) :]
        if not number.isdigit() or unit not in self.UNITS:
            self.fail(f"{value!r} is not a size like 512M, 64G or 'none'", param, ctx)
        return int(number) * self.UNITS[unit]


class _GpuCount(click.ParamType[tuple[str, int | NoLimit]]):
    name = "TYPE=N"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int | NoLimit]:
        if isinstance(value, tuple):
            return value
        kind, sep, count = str(value).partition("=")
        if not sep or not kind:
            self.fail(f"{value!r} is not TYPE=N (e.g. a100=4, or a100=none)", param, ctx)
        return kind, _Limit().convert(count, param, ctx)


@quota_group.command("set")
@workspace_option
@click.option("--gpus", type=_Limit(), help="GPUs in all ('none': no limit).")
@click.option("--gpu", "gpu_types", type=_GpuCount(), multiple=True, help="GPUs of one type, TYPE=N (repeatable).")
@click.option("--cpus", type=_Limit())
@click.option("--memory", type=_Size(), help="Memory, e.g. 512G.")
@click.option("--storage", type=_Size(), help="Storage, e.g. 10T.")
@click.option("--environments", type=_Limit(), help="Concurrent environments.")
@json_option
@pass_client
def quota_set(
    client: GatewayClient,
    workspace: str | None,
    gpus: int | NoLimit | None,
    gpu_types: tuple[tuple[str, int | NoLimit], ...],
    cpus: int | NoLimit | None,
    memory: int | NoLimit | None,
    storage: int | NoLimit | None,
    environments: int | NoLimit | None,
    as_json: bool,
) -> None:
    """Change some limits of the workspace's quota; the others stay as they are (PATCH)."""
    given = {
        "gpus": gpus,
        "cpus": cpus,
        "memory_bytes": memory,
        "storage_bytes": storage,
        "concurrent_environments": environments,
    }
    body: dict[str, Any] = {k: None if v is NoLimit.NONE else v for k, v in given.items() if v is not None}
    ws = _ws(client, workspace)
    if gpu_types:
        by_type = dict(client.request("GET", f"/workspaces/{ws}/quota").get("gpus_by_type") or {})
        for kind, count in gpu_types:
            if count is NoLimit.NONE:
                by_type.pop(kind, None)
            else:
                by_type[kind] = count
        body["gpus_by_type"] = by_type
    if not body:
        raise click.UsageError("give at least one limit to change (--gpus, --gpu TYPE=N, --cpus, --memory, ...)")
    quota = client.request("PATCH", f"/workspaces/{ws}/quota", json=body)
    _echo_json(quota) if as_json else _print_quota(quota)


@token.command("list")
@json_option
@pass_client
def token_list(client: GatewayClient, as_json: bool) -> None:
    """Your API tokens (the one in use is marked *)."""
    tokens = client.request("GET", "/auth/tokens")
    if as_json:
        _echo_json(tokens)
        return
    _table(
        ["ID", "NAME", "PREFIX", "CREATED", "EXPIRES", "LAST USED", ""],
        (
            [t["id"], t["name"], t["prefix"], t["created_at"], t["expires_at"], t["last_used_at"], "*" * t["current"]]
            for t in tokens
        ),
    )


@token.command("revoke")
@click.argument("token_id", type=int)
@pass_client
def token_revoke(client: GatewayClient, token_id: int) -> None:
    """Revoke one of your tokens by its ID (see `remotegpu token list`)."""
    client.request("DELETE", f"/auth/tokens/{token_id}")
    click.echo(f"revoked token {token_id}")


@main.command("cluster")
@json_option
@pass_client
def cluster_command(client: GatewayClient, as_json: bool) -> None:
    """The cluster's partitions and GPU types with free counts (from the poller's last look)."""
    found = client.request("GET", "/cluster")
    if as_json:
        _echo_json(found)
        return
    when = found.get("updated_at") or "never"
    click.echo(f"cluster {found.get('cluster', '-')}, as of {when}" + (" (STALE)" if found.get("stale") else ""))
    click.echo()

    def gpus(part: dict[str, Any]) -> str:
        kinds = ",".join(part.get("gpu_types") or []) or "gpu"
        return f"{kinds} {part.get('free_gpus', 0)}/{part.get('total_gpus', 0)}"

    def limit(minutes: int | None) -> str:
        if minutes is None:
            return "infinite"
        days, rest = divmod(minutes, 1440)
        return (f"{days}-" if days else "") + f"{rest // 60:02}:{rest % 60:02}:00"

    _table(
        ["PARTITION", "STATE", "TIMELIMIT", "NODES", "GPUS FREE/TOTAL", "CPUS FREE/TOTAL"],
        (
            [
                p["name"] + ("*" if p.get("default") else ""),
                p.get("state"),
                limit(p.get("max_time_minutes")),
                ",".join(p.get("nodes") or []),
                gpus(p),
                f"{p.get('free_cpus', 0)}/{p.get('total_cpus', 0)}",
            ]
            for p in found.get("partitions") or []
        ),
    )
    click.echo()
    _table(
        ["GPU TYPE", "FREE", "ALLOCATED", "TOTAL"],
        ([g["type"], g["free"], g["allocated"], g["total"]] for g in found.get("gpu_types") or []),
    )


from gateway.client.env_commands import env_group, ssh_key_group  # noqa: E402 - they use the client, not this module

main.add_command(env_group)
main.add_command(ssh_key_group)

from gateway.client.billing_commands import billing_group, price_group  # noqa: E402 - as env_group above

main.add_command(billing_group)
main.add_command(price_group)

from gateway.client.data_commands import dataset_group, model_group  # noqa: E402 - as env_group above

main.add_command(dataset_group)
main.add_command(model_group)

from gateway.client.node_commands import node_group  # noqa: E402 - as env_group above

main.add_command(node_group)

if __name__ == "__main__":  # pragma: no cover
    main()
