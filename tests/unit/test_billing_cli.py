"""``remotegpu billing`` and ``remotegpu price`` without a gateway: dates and amounts as typed, the request bodies
(checked against the API's own schemas), the tables, and usage errors before anything is sent. Against a real
gateway: tests/integration/test_billing_cli.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from gateway.billing import models, service
from gateway.billing.schemas import (
    BalanceOut,
    EntryOut,
    PriceCreate,
    PriceOut,
    ReportOut,
    ReportRow,
    TopUpCreate,
    UsageOut,
)
from gateway.cli import main
from gateway.client import billing_commands as billing
from gateway.client.api import ApiError, ClientError, GatewayClient
from gateway.schemas import RFC3339_PATTERN, instant

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def as_api(value: msgspec.Struct) -> Any:
    """A response struct of the gateway's as the CLI receives it: through JSON."""
    return json.loads(msgspec.json.encode(value))


# --- dates -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),  # a date: midnight UTC
        (" 2026-02-28 ", datetime(2026, 2, 28, tzinfo=UTC)),
        ("2028-02-29", datetime(2028, 2, 29, tzinfo=UTC)),
        ("2026-11-30T10:00:00Z", T0),
        ("2026-11-30t10:00:00z", T0),
        ("2026-11-30T18:00:00+08:00", T0),
        ("2026-11-30T05:30:00-04:30", T0),
        ("2026-11-30T10:00:00.5Z", T0 + timedelta(milliseconds=500)),
        ("2026-11-30T10:00:00.123456789Z", T0 + timedelta(microseconds=123456)),
    ],
)
def test_dates_and_date_times(typed: str, meant: datetime) -> None:
    parsed = billing.parse_instant(typed)
    assert parsed == meant and parsed.utcoffset() == timedelta(0)
    sent = billing.instant_text(parsed)
    # what is sent is what the gateway's query parameters take, and means the same instant there
    assert re.fullmatch(RFC3339_PATTERN, sent) and sent.endswith("Z"), sent
    assert instant("from", sent) == meant


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("2026-11-30T10:00:00", "no UTC offset"),  # a wall-clock time of no one zone
        ("2026-02-30", "day is out of range"),
        ("2026-13-01", "month must be in 1..12"),
        ("2026-11-30T25:00:00Z", "not a valid date"),
        ("yesterday", "is not a date"),
        ("2026-1-5", "is not a date"),
        ("1764496800", "is not a date"),  # seconds since 1970: not taken for a date
        ("2026-11-30 10:00:00Z", "is not a date"),
        ("2026-11-30T10:00Z", "is not a date"),
        ("", "is not a date"),
    ],
)
def test_bad_dates_are_refused_saying_why(typed: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        billing.parse_instant(typed)


def test_times_are_shown_in_utc_to_the_second() -> None:
    assert billing.shown_time("2026-11-30T18:00:00.654321+08:00") == "2026-11-30T10:00:00Z"
    assert billing.shown_time("2026-11-30T10:00:00Z") == "2026-11-30T10:00:00Z"
    assert billing.shown_time("2026-11-30T10:00:00") == "2026-11-30T10:00:00Z"  # naive: the gateway's UTC
    assert billing.shown_time(None) is None and billing.shown_time("") is None
    assert billing.shown_time("soon") == "soon"  # never a traceback over a value it cannot read


# --- amounts -----------------------------------------------------------------------------------------------

EXACT = ["0.1", "0.10", "0.2", "0.3", "1.0001", "100", "100.00", "999999999999.9999", "-5", "007"]


@pytest.mark.parametrize("typed", EXACT)
def test_amounts_are_sent_as_typed(typed: str) -> None:
    body = billing.topup_body(typed, "topup", None)
    assert body["amount"] == typed and isinstance(body["amount"], str)
    assert f'"amount": "{typed}"' in json.dumps(body)  # text in the JSON, never a number
    for price in (typed.removeprefix("-"), "0.00012207"):  # a price is never negative
        assert billing.price_body("gpu:a100", price, "CNY", None)["amount"] == price


CANDIDATES = [
    "1", "0.1", "0.1234", "0.12345", "0.12345678", "0.123456789", "-5", "-0.0001", "00", "123456789012",
    "1234567890123", "123456789012.1234", "-123456789012.12345", "1e3", "+5", ".5", "5.", "1,0", "١٢", "", "-",
]  # fmt: skip


@pytest.mark.parametrize("typed", CANDIDATES)
def test_the_cli_takes_the_amounts_the_api_takes(typed: str) -> None:
    """The CLI refuses up front (exit 2, in words) exactly what the API's schemas would refuse (a regex)."""
    for places, signed, schema, body in (
        (billing.AMOUNT_PLACES, True, TopUpCreate, {"amount": typed}),
        (billing.PRICE_PLACES, False, PriceCreate, {"amount": typed, "resource": "cpu", "currency": "CNY"}),
    ):
        try:
            msgspec.convert(body, schema)
            api_takes = True
        except msgspec.ValidationError:
            api_takes = False
        try:
            billing.decimal_text(typed, places, signed=signed)
            cli_takes = True
        except ValueError:
            cli_takes = False
        assert cli_takes == api_takes, (typed, schema)


def test_too_precise_or_too_large_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="more than 4 decimal places"):
        billing.decimal_text("0.00001")
    with pytest.raises(ValueError, match="more than 8 decimal places"):
        billing.decimal_text("0.000000001", billing.PRICE_PLACES)
    with pytest.raises(ValueError, match="more than 12 digits"):
        billing.decimal_text("-1000000000000")


@pytest.mark.parametrize(
    "bad", ["1e3", "1E-2", "NaN", "Infinity", "+5", "1,000", "1_000", ".5", "5.", "", " 5", "0x10", "١٢", "12.5.1"]
)
def test_what_is_not_a_decimal_is_refused(bad: str) -> None:
    # "١٢" (Arabic-Indic digits) and "1_000" are numbers to Python's Decimal: not to the CLI
    with pytest.raises(ValueError, match="is not a decimal number"):
        billing.decimal_text(bad)


def test_bodies_are_what_the_api_takes() -> None:
    topup = msgspec.convert(billing.topup_body("12.50", "credit", "welcome"), TopUpCreate)
    assert (topup.amount, topup.kind, topup.note) == ("12.50", "credit", "welcome")
    assert billing.topup_body("1", "topup", None) == {"amount": "1", "kind": "topup"}  # the gateway's default note
    start = billing.instant_text(billing.parse_instant("2026-12-01"))
    price = msgspec.convert(billing.price_body("gpu:a100", "0.00012207", "CNY", start), PriceCreate, strict=False)
    assert price.amount == "0.00012207" and price.valid_from == datetime(2026, 12, 1, tzinfo=UTC)
    assert "valid_from" not in billing.price_body("cpu", "1", "CNY", None)  # now, by the gateway's clock


def test_choices_are_the_apis() -> None:
    assert set(billing.ENTRY_KINDS) == set(models.ENTRY_KINDS)
    assert set(billing.RESOURCE_TYPES) == set(models.RESOURCE_TYPES)
    assert billing.TOPUP_KINDS == ("topup", "credit", "refund", "adjustment")
    assert set(billing.GROUPS) == set(service.GROUPS)


# --- tables ------------------------------------------------------------------------------------------------


def test_table_alignment() -> None:
    lines = billing.render_table(["ID", "AMOUNT", "NOTE"], [[1, "0.5000", None], [12, "100.0000", "x"]], right=(0, 1))
    assert lines == [
        "ID    AMOUNT  NOTE",
        " 1    0.5000  -",
        "12  100.0000  x",
    ]
    assert billing.render_table(["A", "B"], [["a", None]], right=(1,)) == ["A  B", "a  -"]
    assert all(line == line.rstrip() for line in lines)


def usage(job_id: int, **values: Any) -> UsageOut:
    fields: dict[str, Any] = {
        "id": job_id,
        "slurm_job_id": job_id,
        "array_job_id": None,
        "array_task_id": None,
        "user": "alice",
        "resource_type": "training",
        "resource_id": None,
        "name": f"job{job_id}",
        "partition": "gpu",
        "state": "COMPLETED",
        "gpu_type": "a100",
        "gpus": 2,
        "cpus": 4,
        "memory_mib": 1024,
        "start_time": T0,
        "end_time": T0 + timedelta(minutes=10),
        "elapsed_seconds": 600,
        "minutes": 10,
        "amount": "0.3000",
        "currency": "CNY",
        "final": True,
    }
    return UsageOut(**(fields | values))


def test_records_like_sacct() -> None:
    records = [
        as_api(usage(7)),
        as_api(usage(31, array_job_id=30, array_task_id=1, gpu_type=None, gpus=0, final=False, user="bob")),
        as_api(usage(8, amount="999999999999.9999", start_time=T0.astimezone(timezone(timedelta(hours=8))))),
    ]
    rows = list(billing.record_rows(records))
    assert rows[0] == ["7", "alice", "training", "job7", 2, "a100", "2026-11-30T10:00:00Z", 10, "0.3000", "yes"]
    assert rows[1][0] == "30_1" and rows[1][5] is None and rows[1][-1] == "no"  # an array task, as squeue says
    assert rows[2][6] == "2026-11-30T10:00:00Z" and rows[2][8] == "999999999999.9999"
    lines = billing.render_table(billing.RECORD_HEADERS, rows, right=billing.RECORD_RIGHT)
    assert re.split(r"\s{2,}", lines[0]) == billing.RECORD_HEADERS
    assert lines[1].endswith("           0.3000  yes") and "  -  " in lines[2]  # amounts flush right, as they came


def test_entries_show_minutes_only_for_usage() -> None:
    common: dict[str, Any] = {"currency": "CNY", "at": T0, "created_at": T0, "usage_id": None, "note": ""}
    charged = EntryOut(id=2, kind="usage", amount="-1.0672", minutes=10, gpu_minutes=10, **common)
    paid = EntryOut(id=1, kind="topup", amount="0.1000", minutes=0, gpu_minutes=0, **(common | {"note": "po 7"}))
    rows = list(billing.entry_rows([as_api(charged), as_api(paid)]))
    assert rows == [
        [2, "2026-11-30T10:00:00Z", "usage", "-1.0672", "CNY", 10, 10, ""],
        [1, "2026-11-30T10:00:00Z", "topup", "0.1000", "CNY", None, None, "po 7"],
    ]


def test_report_table_has_its_total() -> None:
    rows = [
        ReportRow(key="a100", amount="0.1000", minutes=1, gpu_minutes=1, jobs=1),
        ReportRow(key=None, amount="0.2000", minutes=2, gpu_minutes=0, jobs=1),
    ]
    report = ReportOut(
        workspace="lab", currency="CNY", start=T0, end=T0 + timedelta(days=1), group_by="gpu_type", rows=rows,
        total="0.3000", minutes=3, gpu_minutes=1,
    )  # fmt: skip
    lines = billing.report_table(as_api(report))
    assert lines[0] == ("workspace lab: charges from 2026-11-30T10:00:00Z to 2026-12-01T10:00:00Z in CNY, by gpu type")
    assert [re.split(r"\s{2,}", line.strip()) for line in lines[1:]] == [
        ["GPU TYPE", "AMOUNT", "MINUTES", "GPU MINUTES", "JOBS"],
        ["a100", "0.1000", "1", "1", "1"],
        ["-", "0.2000", "2", "0", "1"],  # no GPU
        ["total", "0.3000", "3", "1", "-"],  # 0.1 + 0.2, exactly: the gateway's total, not a float's sum
    ]
    amounts = [Decimal(re.split(r"\s{2,}", line.strip())[1]) for line in lines[2:4]]
    assert sum(amounts) == Decimal("0.3000")


def test_balance_shows_when_overdue() -> None:
    active = BalanceOut(
        workspace="lab", currency="CNY", balance="0.3000", status="active", overdue_since=None, suspend_at=None,
        entries=3, updated_at=T0,
    )  # fmt: skip
    lines = billing.balance_lines(as_api(active))
    assert lines[:3] == ["workspace:     lab", "balance:       0.3000 CNY", "status:        active"]
    assert not any("overdue" in line or "suspend" in line for line in lines)
    overdue = msgspec.structs.replace(
        active, balance="-0.5672", status="overdue", overdue_since=T0, suspend_at=T0 + timedelta(hours=24)
    )
    lines = billing.balance_lines(as_api(overdue))
    assert "balance:       -0.5672 CNY" in lines
    assert "overdue since: 2026-11-30T10:00:00Z" in lines and "suspend at:    2026-12-01T10:00:00Z" in lines


def test_prices_table() -> None:
    price = PriceOut(
        id=3, resource="gpu:a100", unit="GPU-minute", amount="0.00012207", currency="CNY", valid_from=T0,
        valid_until=None, created_at=T0,
    )  # fmt: skip
    assert list(billing.price_rows([as_api(price)])) == [
        [3, "gpu:a100", "0.00012207", "CNY", "GPU-minute", "2026-11-30T10:00:00Z", None]
    ]


# --- the commands, up to the point where they would send something -------------------------------------------


def run(*args: str) -> Any:
    # a gateway that is not there: a usage error must come before anything is sent
    env = {"REMOTEGPU_URL": "http://127.0.0.1:9", "REMOTEGPU_TOKEN": "t", "REMOTEGPU_WORKSPACE": "lab"}
    return CliRunner().invoke(main, list(args), env=env)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["billing", "topup", "1e3"], "'AMOUNT'"),
        (["billing", "topup", "ten"], "'AMOUNT'"),
        (["billing", "topup", "0.00001"], "'AMOUNT'"),
        (["billing", "topup", "--nte", "x", "5"], "--nte is neither an option of this command nor an amount"),
        (["billing", "topup", "5", "--kind", "gift"], "'--kind'"),
        (["billing", "topup", "5", "--idempotency-key", "a key"], "'--idempotency-key'"),
        (["billing", "report", "--from", "yesterday", "--to", "2026-12-01"], "'--from'"),
        (["billing", "report", "--from", "2026-11-01", "--to", "2026-11-31"], "'--to'"),
        (["billing", "report", "--from", "2026-11-01"], "'--to'"),
        (["billing", "report", "--from", "2026-11-01", "--to", "2026-12-01", "--group-by", "node"], "'--group-by'"),
        (["billing", "records", "--from", "2026-11-01T00:00:00"], "'--from'"),
        (["billing", "records", "--type", "gpu"], "'--type'"),
        (["billing", "entries", "--limit", "0"], "'--limit'"),
        (["price", "set", "cpu", "0,5", "--currency", "CNY"], "'AMOUNT'"),
        (["price", "set", "cpu", "0.5"], "'--currency'"),
        (["price", "set", "cpu", "0.5", "--currency", "CNY", "--from", "tomorrow"], "'--from'"),
        (["price", "list", "--at", "now"], "'--at'"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_option(args: list[str], option: str) -> None:
    result = run(*args)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and option in errors[0], result.output
    assert "cannot connect" not in result.output


def test_a_negative_adjustment_is_an_amount_not_an_option() -> None:
    result = run("billing", "topup", "-5", "--kind", "adjustment", "-w", "lab")
    # it got past the options to the gateway (which is not there): one line naming the key to retry with
    assert result.exit_code == 1 and "cannot connect to the gateway" in result.output, result.output
    assert re.search(r"topup -5 --kind adjustment -w lab --idempotency-key cli-[0-9a-f]{32}$", result.output.strip())
    assert len(result.output.strip().splitlines()) == 1


def test_no_answer_is_sent_once_more_with_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(billing, "RETRY_PAUSE_SECONDS", 0)
    calls: list[str] = []

    def lost_once() -> str:
        calls.append("sent")
        if len(calls) == 1:
            raise ClientError("the gateway at http://gw did not answer in time (ReadTimeout)")
        return "made"

    assert billing.send_at_most_once(lost_once, "retry-line") == "made" and len(calls) == 2

    def refused() -> str:
        calls.append("refused")
        raise ApiError(403, {"detail": "this needs the workspace role 'owner' or higher"})

    with pytest.raises(ApiError, match="owner"):
        billing.send_at_most_once(refused, "retry-line")
    assert calls.count("refused") == 1  # a refusal is an answer: not sent again

    def never() -> str:
        raise ClientError("cannot connect to the gateway at http://gw: refused")

    with pytest.raises(ClientError, match=r"refused; to retry without paying twice: retry-line$"):
        billing.send_at_most_once(never, "retry-line")


def test_lists_are_read_page_by_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(billing, "PAGE", 2)
    ledger = [{"id": i} for i in range(5, 0, -1)]
    asked: list[tuple[int, int]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        limit, offset = int(request.url.params["limit"]), int(request.url.params["offset"])
        asked.append((limit, offset))
        assert request.url.params["kind"] == "topup"
        page = {"items": ledger[offset : offset + limit], "total": len(ledger), "limit": limit, "offset": offset}
        return httpx.Response(200, json=page)

    client = GatewayClient("http://gw", "t", transport=httpx.MockTransport(answer))
    items, total = billing.collect(client, "/workspaces/lab/billing/entries", {"kind": "topup"}, 3)
    assert [e["id"] for e in items] == [5, 4, 3] and total == 5 and asked == [(2, 0), (1, 2)]
    asked.clear()
    items, _ = billing.collect(client, "/workspaces/lab/billing/entries", {"kind": "topup"}, 100)
    assert len(items) == 5 and asked == [(2, 0), (2, 2), (2, 4)]
