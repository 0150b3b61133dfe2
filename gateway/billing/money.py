"""Money is ``Decimal`` and never a float, in Python and in every database.

Amounts are kept to :data:`AMOUNT_PLACES` decimal places (0.0001 of the currency), rounded half up where a
price times a quantity has more; the ledger stores them as whole numbers of that unit (``BIGINT``), so sums in
SQL are exact on SQLite too (whose ``NUMERIC`` is a float). Prices keep up to :data:`PRICE_PLACES` places and are
stored as their decimal text: they are multiplied in Python, never summed in SQL.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import BigInteger, String
from sqlalchemy.types import TypeDecorator

AMOUNT_PLACES = 4
QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)
PRICE_PLACES = 8
ZERO = Decimal(0)
MAX_DECIMAL = Decimal(10) ** 14
"""No amount or price reaches this (a ledger unit count must fit a BIGINT)."""


def quantize(value: Decimal) -> Decimal:
    """``value`` rounded half up to the ledger's unit (the one rounding of billing)."""
    return value.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def to_units(amount: Decimal) -> int:
    """An amount as whole ledger units; refuses one with more places than the ledger keeps (no silent rounding)."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"money must be a Decimal, not {type(amount).__name__}")
    units = amount.scaleb(AMOUNT_PLACES)
    if units != units.to_integral_value():
        raise ValueError(f"{amount} has more than {AMOUNT_PLACES} decimal places")
    return int(units)


def from_units(units: int | None) -> Decimal:
    return Decimal(int(units or 0)).scaleb(-AMOUNT_PLACES).quantize(QUANTUM)


def parse_decimal(text: str, *, places: int) -> Decimal:
    """A decimal from its text (API input), at most ``places`` places; ValueError naming what is wrong."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite() or abs(value) >= MAX_DECIMAL:
        raise ValueError(f"{text!r} is not a finite number below {MAX_DECIMAL:,}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise ValueError(f"{text!r} has more than {places} decimal places")
    return value


class Money(TypeDecorator[Decimal]):
    """An amount column: whole ledger units in a ``BIGINT``, a ``Decimal`` in Python."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> int | None:
        return None if value is None else to_units(value)

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else from_units(int(value))


class DecimalText(TypeDecorator[Decimal]):
    """A price column: the decimal's own text, exact on every backend."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"a price must be a Decimal, not {type(value).__name__}")
        return str(value)

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(value)
