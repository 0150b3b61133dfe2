"""``remotegpu billing ...`` (a workspace's balance, top-ups, ledger, usage records, reports) and ``remotegpu
price ...`` (the platform's prices).

Money is never a float here: amounts go to the gateway as the text the user typed and come back as the gateway's
decimal text, which is printed as it is. Dates are ``YYYY-MM-DD`` (midnight UTC) or RFC 3339 date-times with an
offset; a bad one is a usage error naming its option (exit 2) before anything is sent. The pure parts (parsing,
rows, tables) are functions of their own, tested without a gateway; failures talking to the gateway are
:class:`ClientError`, which the top-level group prints as one line (exit 1).
"""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.client.api import ApiError, ClientError, GatewayClient

TOPUP_KINDS = ("topup", "credit", "refund", "adjustment")
ENTRY_KINDS = ("usage", "storage", *TOPUP_KINDS)
RESOURCE_TYPES = ("training", "environment", "inference", "storage", "other")
GROUPS = ("user", "resource_type", "gpu_type", "day")
"""As the gateway's billing API names them (tests/unit/test_billing_cli.py holds them to gateway.billing's)."""

T = TypeVar("T")
PAGE = 500
"""The gateway's largest page."""
RETRY_PAUSE_SECONDS = 1.0


# --- parsing what the user types ----------------------------------------------------------------------------

_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


AMOUNT_PLACES = 4
"""Decimal places of an amount of money (a top-up); a price has up to ``PRICE_PLACES``."""
PRICE_PLACES = 8
INTEGER_DIGITS = 12


def decimal_text(text: str, places: int = AMOUNT_PLACES, *, signed: bool = True) -> str:
    """``text`` itself if it is a plain decimal number (``100``, ``12.50``, ``-3.5``) the gateway can hold: no
    exponent, no ``+``, no separators, at most ``places`` decimal places and 12 digits before the point. The
    gateway checks the rest (the sign a kind of entry needs, zero, its largest amount) and says so."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{text!r} is not a decimal number like 100 or 12.50")
    if not signed and text.startswith("-"):
        raise ValueError(f"{text!r} is negative: a price is never below zero")
    whole, _, fraction = text.removeprefix("-").partition(".")
    if len(fraction) > places:
        raise ValueError(f"{text!r} has more than {places} decimal places")
    if len(whole) > INTEGER_DIGITS:
        raise ValueError(f"{text!r} has more than {INTEGER_DIGITS} digits before the decimal point")
    return text


def parse_instant(text: str) -> datetime:
    """An instant (UTC) from ``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 date-time with its offset."""
    value = text.strip()
    try:
        if _DATE.fullmatch(value):
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        match = _DATE_TIME.fullmatch(value)
        if match and match["offset"] is None:
            raise ValueError(f"{text!r} has no UTC offset: add Z or +HH:MM (or give a date, YYYY-MM-DD)")
        if match:
            return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        if "offset" in str(exc):
            raise
        raise ValueError(f"{text!r} is not a valid date: {exc}") from None
    raise ValueError(f"{text!r} is not a date (YYYY-MM-DD, midnight UTC) or a date-time like 2026-01-31T12:00:00Z")


def instant_text(moment: datetime) -> str:
    """An instant as the gateway's query parameters take it (RFC 3339, UTC, ``Z``)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def shown_time(value: str | None) -> str | None:
    """A date-time of the gateway's as a table shows it: UTC to the second, ``2026-01-31T12:00:00Z``."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Decimal(click.ParamType[str]):
    """A decimal number, kept as the text typed."""

    name = "DECIMAL"

    def __init__(self, places: int, *, signed: bool = True) -> None:
        self.places = places
        self.signed = signed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text.startswith("-") and not text[1:2].isdigit():  # `topup` takes `-5`: an unknown option lands here
            self.fail(f"{text} is neither an option of this command nor an amount", param, ctx)
        try:
            return decimal_text(text, self.places, signed=self.signed)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Instant(click.ParamType[str]):
    """``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 date-time: the RFC 3339 text (UTC) to send."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return instant_text(parse_instant(str(value)))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _IdempotencyKey(click.ParamType[str]):
    name = "KEY"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not _IDEMPOTENCY_KEY.fullmatch(str(value)):
            self.fail(f"{value!r} is not a key: 1 to 128 of A-Z a-z 0-9 . _ : -", param, ctx)
        return str(value)


def new_idempotency_key() -> str:
    return f"cli-{uuid.uuid4().hex}"


# --- output --------------------------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()) -> list[str]:
    """Columns as wide as their widest cell, ``-`` for nothing; the columns in ``right`` (numbers, amounts)
    right-aligned, the rest left-aligned; no trailing blanks."""
    flush_right = set(right)
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    return [
        "  ".join(
            c.rjust(w) if i in flush_right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [list(headers), *cells]
    ]


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()) -> None:
    for line in render_table(headers, rows, right=right):
        click.echo(line)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def balance_lines(balance: Mapping[str, Any]) -> list[str]:
    """``billing balance``: the amount with its currency, the status, and the overdue dates when set."""
    rows: list[tuple[str, Any]] = [
        ("workspace", balance["workspace"]),
        ("balance", f"{balance['balance']} {balance['currency']}"),
        ("status", balance["status"]),
    ]
    if balance.get("overdue_since"):
        rows.append(("overdue since", shown_time(balance["overdue_since"])))
    if balance.get("suspend_at"):
        rows.append(("suspend at", shown_time(balance["suspend_at"])))
    rows += [("entries", balance.get("entries")), ("updated", shown_time(balance.get("updated_at")))]
    return [f"{label + ':':15}{'-' if value is None or value == '' else value}" for label, value in rows]


ENTRY_HEADERS = ["ID", "AT", "KIND", "AMOUNT", "CURRENCY", "MINUTES", "GPU MINUTES", "NOTE"]
ENTRY_RIGHT = (0, 3, 5, 6)


def entry_rows(entries: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for e in entries:
        minutes = e["minutes"] if e["kind"] in ("usage", "storage") else None
        gpu_minutes = e["gpu_minutes"] if e["kind"] in ("usage", "storage") else None
        yield [e["id"], shown_time(e["at"]), e["kind"], e["amount"], e["currency"], minutes, gpu_minutes, e["note"]]


RECORD_HEADERS = ["JOBID", "USER", "TYPE", "NAME", "GPUS", "GPU TYPE", "START", "MINUTES", "AMOUNT", "FINAL"]
RECORD_RIGHT = (4, 7, 8)


def job_id_text(record: Mapping[str, Any]) -> str:
    """As squeue and sacct write it: ``ARRAYJOBID_TASKID`` for an array task, else the job id."""
    if record.get("array_job_id") is not None and record.get("array_task_id") is not None:
        return f"{record['array_job_id']}_{record['array_task_id']}"
    return str(record["slurm_job_id"])


def record_rows(records: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for r in records:
        yield [
            job_id_text(r),
            r["user"],
            r["resource_type"],
            r["name"],
            r["gpus"],
            r.get("gpu_type"),
            shown_time(r["start_time"]),
            r["minutes"],
            r["amount"],
            "yes" if r["final"] else "no",
        ]


REPORT_RIGHT = (1, 2, 3, 4)


def report_table(report: Mapping[str, Any]) -> list[str]:
    """``billing report``'s table: a title, one row per group, a total row (the gateway's total: the rows add
    up to it exactly)."""
    group = str(report["group_by"])
    title = (
        f"workspace {report['workspace']}: charges from {shown_time(report['start'])} to "
        f"{shown_time(report['end'])} in {report['currency']}, by {group.replace('_', ' ')}"
    )
    rows = [[r["key"], r["amount"], r["minutes"], r["gpu_minutes"], r["jobs"]] for r in report["rows"]]
    rows.append(["total", report["total"], report["minutes"], report["gpu_minutes"], None])
    headers = [group.upper().replace("_", " "), "AMOUNT", "MINUTES", "GPU MINUTES", "JOBS"]
    return [title, *render_table(headers, rows, right=REPORT_RIGHT)]


PRICE_HEADERS = ["ID", "RESOURCE", "AMOUNT", "CURRENCY", "UNIT", "FROM", "UNTIL"]


def price_rows(prices: Iterable[Mapping[str, Any]]) -> Iterator[list[Any]]:
    for p in prices:
        yield [
            p["id"],
            p["resource"],
            p["amount"],
            p["currency"],
            p["unit"],
            shown_time(p["valid_from"]),
            shown_time(p["valid_until"]),
        ]


# --- talking to the gateway ----------------------------------------------------------------------------------


def _client() -> GatewayClient:
    """The invocation's gateway client (REMOTEGPU_URL/TOKEN/WORKSPACE over ``remotegpu login``'s file)."""
    ctx = click.get_current_context()
    client: GatewayClient | None = ctx.meta.get("remotegpu.client")
    if client is None:
        client = ctx.meta["remotegpu.client"] = GatewayClient.from_environment()
    return client


def _ws(client: GatewayClient, workspace: str | None) -> str:
    return workspace or client.default_workspace()


def _billing(ws: str) -> str:
    return f"/workspaces/{ws}/billing"


def collect(client: GatewayClient, path: str, params: Mapping[str, Any], limit: int) -> tuple[list[Any], int | None]:
    """Up to ``limit`` items of a paged list, page by page; with how many match in all (None: over 1,000)."""
    items: list[Any] = []
    total: int | None = None
    while len(items) < limit:
        page = client.request(
            "GET", path, params={**params, "limit": min(PAGE, limit - len(items)), "offset": len(items)}
        )
        items += page["items"]
        total = page.get("total")
        if not page["items"] or (total is not None and len(items) >= total):
            break
    return items, total


def _more_note(shown: int, total: int | None) -> None:
    """On stderr (the table stays parseable): that there is more than shown."""
    if total is None or total > shown:
        of = f"of {total}" if total is not None else "of more than 1000"
        click.echo(f"(showing {shown} {of}; --limit N for more)", err=True)


workspace_option = click.option(
    "--workspace",
    "-w",
    "-W",
    "workspace",
    help="Workspace slug (default: REMOTEGPU_WORKSPACE, the saved one, or your only one).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON (for scripts).")
limit_option = click.option(
    "--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="Show at most this many."
)


# --- billing: the commands -----------------------------------------------------------------------------------


@click.group("billing")
def billing_group() -> None:
    """A workspace's money: its balance, top-ups, the ledger, usage records and reports."""


@billing_group.command("balance")
@workspace_option
@json_option
def billing_balance(workspace: str | None, as_json: bool) -> None:
    """The workspace's balance and billing status (overdue: new work is refused until it is topped up)."""
    client = _client()
    balance = client.request("GET", f"{_billing(_ws(client, workspace))}/balance")
    if as_json:
        _echo_json(balance)
        return
    for line in balance_lines(balance):
        click.echo(line)


def send_at_most_once(send: Callable[[], T], retry: str) -> T:
    """``send()``, once more if no answer came (its Idempotency-Key makes the two one); if none comes again, the
    error names the command that retries it safely. The gateway's refusals (ApiError) are not retried."""
    for attempt in range(2):
        try:
            return send()
        except ApiError:
            raise
        except ClientError as exc:
            if attempt:
                raise ClientError(f"{exc}; to retry without paying twice: {retry}") from None
            time.sleep(RETRY_PAUSE_SECONDS)
    raise AssertionError("unreachable")


def topup_body(amount: str, kind: str, note: str | None) -> dict[str, Any]:
    """The ``TopUpCreate`` body: the amount as the text typed (never a number)."""
    body: dict[str, Any] = {"amount": decimal_text(amount), "kind": kind}
    if note is not None:
        body["note"] = note
    return body


# ignore_unknown_options: a negative adjustment (`topup -5 --kind adjustment`) is AMOUNT, not an unknown option
@billing_group.command("topup", context_settings={"ignore_unknown_options": True})
@click.argument("amount", type=_Decimal(AMOUNT_PLACES))
@click.option(
    "--kind",
    type=click.Choice(TOPUP_KINDS),
    default="topup",
    show_default=True,
    help="credit, refund and adjustment (either sign) are for platform admins.",
)
@click.option("--note", help="A note kept with the entry (up to 500 characters).")
@click.option(
    "--idempotency-key",
    type=_IdempotencyKey(),
    help="Make the top-up once however often it is sent with this key (default: a new key per run).",
)
@workspace_option
@json_option
def billing_topup(
    amount: str, kind: str, note: str | None, idempotency_key: str | None, workspace: str | None, as_json: bool
) -> None:
    """Add AMOUNT to the workspace's balance, in its currency, and print the new balance.

    AMOUNT is a decimal number, up to 4 decimal places: 100, 12.50 (a negative adjustment: -5). Workspace
    owners top up. A request whose answer was lost is sent again with the same Idempotency-Key, so it is made
    once; if the gateway still cannot be reached, the key to retry it with is printed.
    """
    client = _client()
    ws = _ws(client, workspace)
    key = idempotency_key or new_idempotency_key()
    body = topup_body(amount, kind, note)
    path = f"{_billing(ws)}/topups"
    retry = ["remotegpu", "billing", "topup", amount, "--kind", kind, "-w", ws, "--idempotency-key", key]
    retry += ["--note", note] if note is not None else []
    made = send_at_most_once(
        lambda: client.request("POST", path, json=body, headers={"Idempotency-Key": key}), shlex.join(retry)
    )
    if as_json:
        _echo_json(made)
        return
    entry = made["entry"]
    click.echo(
        f"{entry['kind']} of {entry['amount']} {entry['currency']} to {ws} (entry {entry['id']}): "
        f"balance {made['balance']} {entry['currency']}, {made['status']}"
    )


@billing_group.command("topups")
@click.option("--kind", type=click.Choice(TOPUP_KINDS), help="Only this kind.")
@limit_option
@workspace_option
@json_option
def billing_topups(kind: str | None, limit: int, workspace: str | None, as_json: bool) -> None:
    """Top-ups, credits, refunds and adjustments, newest first (workspace admins and owners)."""
    client = _client()
    ws = _ws(client, workspace)
    path, params = (f"{_billing(ws)}/entries", {"kind": kind}) if kind else (f"{_billing(ws)}/topups", {})
    _show_entries(*collect(client, path, params, limit), as_json)


@billing_group.command("entries")
@click.option("--kind", type=click.Choice(ENTRY_KINDS), help="Only this kind.")
@limit_option
@workspace_option
@json_option
def billing_entries(kind: str | None, limit: int, workspace: str | None, as_json: bool) -> None:
    """The workspace's ledger, newest first: usage charged, top-ups, credits, refunds, adjustments (workspace
    admins and owners)."""
    client = _client()
    params = {"kind": kind} if kind else {}
    _show_entries(*collect(client, f"{_billing(_ws(client, workspace))}/entries", params, limit), as_json)


def _show_entries(entries: list[Any], total: int | None, as_json: bool) -> None:
    if as_json:
        _echo_json(entries)
        return
    _table(ENTRY_HEADERS, entry_rows(entries), right=ENTRY_RIGHT)
    _more_note(len(entries), total)


@billing_group.command("records")
@click.option("--user", help="Only this user's (workspace admins; members see their own).")
@click.option("--type", "resource_type", type=click.Choice(RESOURCE_TYPES), help="Only this kind of work.")
@click.option("--from", "start", type=_Instant(), help="Only jobs running at or after DATE (YYYY-MM-DD or RFC 3339).")
@click.option("--to", "end", type=_Instant(), help="Only jobs started before DATE.")
@limit_option
@workspace_option
@json_option
def billing_records(
    user: str | None,
    resource_type: str | None,
    start: str | None,
    end: str | None,
    limit: int,
    workspace: str | None,
    as_json: bool,
) -> None:
    """Usage records, one per Slurm job, newest first, with what each was charged (FINAL: no while it runs)."""
    client = _client()
    given = {"user": user, "resource_type": resource_type, "from": start, "to": end}
    params = {k: v for k, v in given.items() if v is not None}
    records, total = collect(client, f"{_billing(_ws(client, workspace))}/records", params, limit)
    if as_json:
        _echo_json(records)
        return
    _table(RECORD_HEADERS, record_rows(records), right=RECORD_RIGHT)
    _more_note(len(records), total)


@billing_group.command("report")
@click.option("--from", "start", type=_Instant(), required=True, help="From DATE (YYYY-MM-DD: midnight UTC).")
@click.option("--to", "end", type=_Instant(), required=True, help="To DATE, not included.")
@click.option("--group-by", type=click.Choice(GROUPS), default="user", show_default=True)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file, not standard output.")
@workspace_option
def billing_report(
    start: str, end: str, group_by: str, output_format: str, output: str | None, workspace: str | None
) -> None:
    """Charges for usage in [--from, --to), grouped, with their total (workspace admins and owners).

    csv is the gateway's own, for a spreadsheet: `remotegpu billing report --from 2026-11-01 --to 2026-12-01
    --format csv -o november.csv`.
    """
    client = _client()
    path = f"{_billing(_ws(client, workspace))}/report"
    params = {"from": start, "to": end, "group_by": group_by}
    data: bytes
    if output_format == "csv":
        data = b"".join(client.stream(path, {**params, "format": "csv"}))
    else:
        report = client.request("GET", path, params={**params, "format": "json"})
        text = json.dumps(report, indent=2) if output_format == "json" else "\n".join(report_table(report))
        data = (text + "\n").encode()
    if output is None:
        click.echo(data, nl=False)
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)


# --- price: the commands -------------------------------------------------------------------------------------


@click.group("price")
def price_group() -> None:
    """Prices: per minute of a GPU (by type), a CPU core or a GB of memory; per day of a GB stored."""


@price_group.command("list")
@click.option("--currency", help="Only prices in this currency (e.g. CNY).")
@click.option("--resource", help="Only this resource: gpu, gpu:TYPE, cpu, mem, storage.")
@click.option("--at", type=_Instant(), help="Only prices valid at DATE (YYYY-MM-DD or RFC 3339).")
@json_option
def price_list(currency: str | None, resource: str | None, at: str | None, as_json: bool) -> None:
    """Every price (or those valid --at a moment), by currency, resource and start."""
    given = {"currency": currency, "resource": resource, "at": at}
    prices = _client().request("GET", "/prices", params={k: v for k, v in given.items() if v is not None})
    if as_json:
        _echo_json(prices)
        return
    _table(PRICE_HEADERS, price_rows(prices), right=(0,))


def price_body(resource: str, amount: str, currency: str, valid_from: str | None) -> dict[str, Any]:
    """The ``PriceCreate`` body: the amount as the text typed (never a number)."""
    body: dict[str, Any] = {
        "resource": resource,
        "amount": decimal_text(amount, PRICE_PLACES, signed=False),
        "currency": currency,
    }
    if valid_from is not None:
        body["valid_from"] = valid_from
    return body


@price_group.command("set")
@click.argument("resource")
@click.argument("amount", type=_Decimal(PRICE_PLACES, signed=False))
@click.option("--currency", required=True, help="ISO 4217 code, e.g. CNY.")
@click.option("--from", "valid_from", type=_Instant(), help="Start (default: now; never in the past).")
@json_option
def price_set(resource: str, amount: str, currency: str, valid_from: str | None, as_json: bool) -> None:
    """Set RESOURCE's price (platform admins): gpu:TYPE, gpu (a GPU of no priced type), cpu, mem, storage.

    AMOUNT is per GPU-, core- or GB-minute (storage: per GB-day), up to 8 decimal places. The resource's
    previous price in that currency ends where this one starts; what was charged keeps its prices.
    """
    made = _client().request("POST", "/prices", json=price_body(resource, amount, currency, valid_from))
    if as_json:
        _echo_json(made)
        return
    click.echo(
        f"price {made['id']}: {made['resource']} {made['amount']} {made['currency']} per {made['unit']} "
        f"from {shown_time(made['valid_from'])}"
    )
