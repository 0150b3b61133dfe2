"""The ``remotegpu`` command: run the service, manage the schema, bootstrap accounts."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.actor import Actor
from gateway.config import Settings, SettingsError, load_settings
from gateway.db.session import Database
from gateway.errors import GatewayError

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _run_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    try:
        ctx.obj = load_settings(config_file)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--host", help="Address to listen on (REMOTEGPU_HOST, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (REMOTEGPU_PORT, default 8000).")
@click.option("--no-migrate", is_flag=True, help="Do not upgrade the database schema before starting.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, no_migrate: bool) -> None:
    """Run the HTTP API (one process; put several behind a load balancer to scale out)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.db import migrate
    from gateway.observability import configure_logging

    settings = _settings(ctx)
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
    import structlog

    from gateway.jobs.poller import Poller
    from gateway.observability import configure_logging
    from gateway.slurm_client import make_slurm_client
    from gateway.workspaces.slurm_sync import AccountSync
    from slurm.errors import SlurmError

    settings = _settings(ctx)
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("gateway.worker")

    async def run(database: Database) -> None:
        slurm = make_slurm_client(settings)
        poller, accounts = Poller(database, slurm), AccountSync(database, slurm)
        try:
            await loop(poller, accounts)
        finally:
            await slurm.close()

    async def loop(poller: Poller, accounts: AccountSync) -> None:
        while True:
            try:
                await cycle(poller, accounts)
            except Exception:
                if once:
                    raise
                # e.g. the database away for a moment: the next cycle starts from the database again
                log.exception("worker_cycle_failed")
            if once:
                return
            await asyncio.sleep(settings.poll_interval_seconds)

    async def cycle(poller: Poller, accounts: AccountSync) -> None:
        try:
            await accounts.reconcile()
        except SlurmError as exc:
            log.warning("account_sync_failed", error=exc.message)
        result = await poller.poll_once()
        log.info(
            "poll",
            changed=result.changed,
            adopted=result.adopted,
            reachable=result.reachable,
            orphans_cancelled=result.orphans_cancelled,
        )

    _run_db(settings, run)


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


def _password_from_env_or_prompt() -> str:
    password = os.environ.get("REMOTEGPU_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise click.ClickException("set REMOTEGPU_PASSWORD or run in a terminal to be prompted")
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
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

    from gateway.users.schemas import UserCreate
    from gateway.users.service import create_user as create

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
    from gateway.auth.service import issue_token
    from gateway.users.service import get_user

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


def _client_call(work: Callable[[Any], T]) -> T:
    from gateway.client.api import ApiError, GatewayClient

    try:
        return work(GatewayClient.from_environment())
    except ApiError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--url", envvar="REMOTEGPU_URL", required=True, help="Gateway URL, e.g. http://127.0.0.1:8000")
@click.option("--username", prompt=True)
@click.option("--workspace", help="Default workspace for later commands.")
def login(url: str, username: str, workspace: str | None) -> None:
    """Log in with a password and save a token for the other commands (0600 file in your config dir)."""
    from gateway.client.api import ApiError, GatewayClient, save_credentials

    password = _password_from_env_or_prompt()
    try:
        token = GatewayClient(url).request(
            "POST", "/auth/tokens", json={"username": username, "password": password, "name": "cli"}
        )["token"]
    except ApiError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"logged in; credentials saved to {save_credentials(url, token, workspace)}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(args: tuple[str, ...]) -> None:
    """Submit a batch script like sbatch: remotegpu submit [sbatch options] SCRIPT [ARGS].

    Reads #SBATCH directives (the command line overrides them). Supported: -J -N -n -c --ntasks-per-node --gres
    --gpus --gpus-per-node --mem --mem-per-cpu -t -p -q -a/--array -d/--dependency -o -e --export -D -H/--hold,
    -A/--account (picks the workspace with that Slurm account), plus --workspace, --dataset, --model, --image.
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

    def send(client: Any) -> Any:
        ws = client.workspace_for(request.workspace, request.account)
        return client.request("POST", f"/workspaces/{ws}/jobs", json=request.body)

    job = _client_call(send)
    click.echo(f"Submitted job {job['id']} (Slurm job {job['slurm_job_id']})")


@main.command("jobs")
@click.option("--workspace")
@click.option("--state")
def jobs_command(workspace: str | None, state: str | None) -> None:
    """List your jobs (all jobs of the workspace for its admins)."""

    def work(client: Any) -> Any:
        ws = workspace or client.default_workspace()
        return client.request("GET", f"/workspaces/{ws}/jobs", params={"state": state} if state else {})

    page = _client_call(work)
    click.echo(f"{'ID':32}  {'SLURM':>7}  {'STATE':12}  {'USER':12}  NAME")
    for job in page["items"]:
        click.echo(
            f"{job['id']:32}  {job['slurm_job_id'] or '-':>7}  {job['state']:12}  {job['user']:12}  {job['name']}"
        )


@main.command("job")
@click.argument("job_id")
@click.option("--workspace")
def job_command(job_id: str, workspace: str | None) -> None:
    """Show one job."""
    import json

    job = _client_call(lambda c: c.request("GET", f"/workspaces/{workspace or c.default_workspace()}/jobs/{job_id}"))
    click.echo(json.dumps(job, indent=2))


@main.command("cancel")
@click.argument("job_id")
@click.option("--workspace")
def cancel_command(job_id: str, workspace: str | None) -> None:
    """Cancel a job."""
    _client_call(lambda c: c.request("POST", f"/workspaces/{workspace or c.default_workspace()}/jobs/{job_id}/cancel"))
    click.echo(f"cancel requested for {job_id}")


@main.command("logs")
@click.argument("job_id")
@click.option("--workspace")
@click.option("-n", "--lines", default=100, show_default=True, help="How many of the last lines to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it ends.")
@click.option("--stderr", "stream", flag_value="stderr", default="stdout", help="The job's standard error.")
@click.option("--task", type=int, help="Which task of an array job.")
def logs_command(job_id: str, workspace: str | None, lines: int, follow: bool, stream: str, task: int | None) -> None:
    """Print a job's output."""
    params: dict[str, Any] = {"lines": lines, "stream": stream}
    if task is not None:
        params["task"] = task

    def work(client: Any) -> None:
        path = f"/workspaces/{workspace or client.default_workspace()}/jobs/{job_id}/logs"
        if not follow:
            for line in client.request("GET", path, params=params)["lines"]:
                click.echo(line)
            return
        out = sys.stdout.buffer
        for chunk in client.stream(path, {**params, "follow": "true"}):
            out.write(chunk)
            out.flush()

    _client_call(work)


if __name__ == "__main__":  # pragma: no cover
    main()
