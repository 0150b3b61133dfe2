"""Rating is a pure function: per-minute, Decimal only, split at price changes, monotonic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.billing.money import from_units, parse_decimal, quantize, to_units
from gateway.billing.rating import (
    Price,
    PriceBook,
    billing_minutes,
    gpu_type_of,
    gpus_of,
    quantities,
    rate,
    rate_storage,
)

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
BOOK = PriceBook(
    [
        Price(resource="gpu", amount=Decimal("0.05"), valid_from=T0 - timedelta(days=9)),
        Price(resource="gpu:a100", amount=Decimal("0.1"), valid_from=T0 - timedelta(days=9)),
        Price(resource="cpu", amount=Decimal("0.0033"), valid_from=T0 - timedelta(days=9)),
        Price(resource="mem", amount=Decimal("0.00012207"), valid_from=T0 - timedelta(days=9)),
        Price(resource="storage", amount=Decimal("0.02"), valid_from=T0 - timedelta(days=9)),
    ]
)

tres_strategy = st.fixed_dictionaries(
    {"cpu": st.integers(0, 256), "mem": st.integers(0, 2**21), "gres/gpu:a100": st.integers(0, 8)},
    optional={"gres/gpu": st.integers(0, 8)},
)


def test_billing_minutes_is_ceil_of_elapsed_over_60() -> None:
    assert [billing_minutes(s) for s in (0, 1, 59, 60, 61, 119, 120, 3601, -5)] == [0, 1, 1, 1, 2, 2, 2, 61, 0]


def test_a_known_job() -> None:
    rating = rate({"cpu": 2, "mem": 1024, "node": 1, "gres/gpu": 1, "gres/gpu:a100": 1}, T0, 10, BOOK)
    amounts = {line.resource: line.amount for line in rating.lines}
    assert amounts == {"gpu:a100": Decimal("1.0000"), "cpu": Decimal("0.0660"), "mem": Decimal("0.0012")}
    assert rating.amount == Decimal("1.0672") and rating.minutes == 10


def test_typed_gpus_fall_back_to_the_gpu_price_and_untyped_ones_use_it() -> None:
    assert quantities({"gres/gpu": 3, "gres/gpu:v100": 2}) == {"gpu:v100": 2, "gpu": 1}
    rating = rate({"gres/gpu": 3, "gres/gpu:v100": 2}, T0, 1, BOOK)
    assert rating.amount == Decimal("0.15")  # no v100 price: 3 GPUs at the gpu price
    assert gpus_of({"gres/gpu": 3, "gres/gpu:v100": 2}) == 3 and gpu_type_of({"gres/gpu:v100": 2}) == "v100"


def test_no_price_costs_nothing_and_a_price_ending_stops_the_charge() -> None:
    book = PriceBook([Price(resource="cpu", amount=Decimal(1), valid_from=T0, valid_until=T0 + timedelta(minutes=3))])
    assert rate({"cpu": 1}, T0 - timedelta(minutes=2), 10, book).amount == Decimal(3)


def test_money_never_goes_through_float() -> None:
    assert to_units(Decimal("0.1")) + to_units(Decimal("0.2")) == to_units(Decimal("0.3"))
    assert from_units(to_units(Decimal("-12345678.9012"))) == Decimal("-12345678.9012")
    with pytest.raises(TypeError):
        to_units(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decimal places"):
        to_units(Decimal("0.00001"))
    for bad in ("1e400", "NaN", "Infinity", "abc", "0.123456789"):
        with pytest.raises(ValueError):
            parse_decimal(bad, places=8)
    assert quantize(Decimal("0.00005")) == Decimal("0.0001") and quantize(Decimal("0.00004999")) == Decimal("0")


def test_storage_is_priced_per_gb_day() -> None:
    assert rate_storage(5 * 1024**3, 2, T0, BOOK).amount == Decimal("0.2")
    assert rate_storage(0, 2, T0, BOOK).amount == 0


@given(tres=tres_strategy, minutes=st.integers(0, 100_000), more=st.integers(0, 10_000))
def test_monotonic_in_time(tres: dict[str, int], minutes: int, more: int) -> None:
    assert rate(tres, T0, minutes, BOOK).amount <= rate(tres, T0, minutes + more, BOOK).amount


@given(tres=tres_strategy, minutes=st.integers(0, 10_000), extra=st.integers(0, 64))
def test_monotonic_in_resources(tres: dict[str, int], minutes: int, extra: int) -> None:
    bigger = {**tres, "cpu": tres["cpu"] + extra, "gres/gpu:a100": tres["gres/gpu:a100"] + extra % 3}
    assert rate(tres, T0, minutes, BOOK).amount <= rate(bigger, T0, minutes, BOOK).amount


@given(
    tres=tres_strategy,
    minutes=st.integers(1, 5_000),
    change_after=st.integers(0, 6_000),
    change_seconds=st.integers(0, 59),
    old=st.decimals(min_value=0, max_value=100, places=8),
    new=st.decimals(min_value=0, max_value=100, places=8),
)
def test_a_price_change_splits_the_job_and_the_parts_add_up(
    tres: dict[str, int], minutes: int, change_after: int, change_seconds: int, old: Decimal, new: Decimal
) -> None:
    change = T0 + timedelta(minutes=change_after, seconds=change_seconds)
    book = PriceBook(
        [
            Price(resource="cpu", amount=old, valid_from=T0 - timedelta(days=1), valid_until=change),
            Price(resource="cpu", amount=new, valid_from=change),
        ]
    )
    rating = rate(tres, T0, minutes, book)
    # minute i starts at T0 + i min; it is priced at the price valid then
    before = min(minutes, -(-(change - T0) // timedelta(minutes=1)))
    expected = Decimal(0)
    if tres["cpu"]:
        expected = quantize(tres["cpu"] * before * old) if before else Decimal(0)
        expected += quantize(tres["cpu"] * (minutes - before) * new) if minutes > before else Decimal(0)
    assert rating.amount == expected
    assert sum(line.minutes for line in rating.lines if line.resource == "cpu") == (minutes if tres["cpu"] else 0)
    assert all(isinstance(line.amount, Decimal) and line.amount == quantize(line.amount) for line in rating.lines)
