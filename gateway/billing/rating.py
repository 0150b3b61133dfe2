"""Rating: what a job's allocation costs, as a pure function of its AllocTRES, start, billed minutes and prices.

* ``billing_minutes = ceil(elapsed_seconds / 60)``: a job that ran 61 s pays two minutes.
* Minute ``i`` of a job is the one starting at ``start + 60 s * i`` and is priced at the price valid then: a job
  running across a price change is split into one line per resource and price.
* Resources and their quantities per minute: ``gpu:TYPE`` (``gres/gpu:TYPE`` GPUs; priced at ``gpu:TYPE`` where
  that has a price at the time, else at ``gpu``), ``gpu`` (GPUs without a type), ``cpu`` (cores), ``mem`` (GB,
  i.e. GiB: AllocTRES ``mem`` MiB / 1024). ``storage`` is priced per GB-day (:func:`rate_storage`).
* Each line's amount is ``quantity * minutes * price`` rounded half up to 0.0001 (:func:`money.quantize`); a
  rating's amount is the sum of its lines, so the lines of any report add up to the charges exactly.
* A resource without a price at a time costs nothing then.

A running job is rated with the minutes it has run so far; the charge posted is the difference to what was
already charged, so the charges of a job always add up to the rating of its final accounting record.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal

import msgspec

from gateway.billing.money import ZERO, quantize

GPU = "gpu"
CPU = "cpu"
MEMORY = "mem"
STORAGE = "storage"
MINUTE = timedelta(minutes=1)
MIB_PER_GB = 1024
BYTES_PER_GB = 1024**3
RESOURCE_UNITS = {GPU: "GPU-minute", CPU: "core-minute", MEMORY: "GB-minute", STORAGE: "GB-day"}
"""What one unit of each resource's price buys (``gpu:TYPE`` is priced like ``gpu``)."""


def unit_of(resource: str) -> str:
    return RESOURCE_UNITS[resource.split(":", 1)[0]]


def billing_minutes(elapsed_seconds: int) -> int:
    """``ceil(elapsed_seconds / 60)`` in integers (no float anywhere); 0 for a job that never ran."""
    return -(-max(0, elapsed_seconds) // 60)


class Price(msgspec.Struct, frozen=True, kw_only=True):
    resource: str
    amount: Decimal
    valid_from: datetime
    valid_until: datetime | None = None
    """None: until further notice."""


class PriceBook:
    """The prices of one currency over time, looked up by resource and instant."""

    def __init__(self, prices: Iterable[Price]) -> None:
        series: dict[str, list[Price]] = {}
        for price in prices:
            series.setdefault(price.resource, []).append(price)
        self._series = {k: sorted(v, key=lambda p: p.valid_from) for k, v in series.items()}
        self._starts = {k: [p.valid_from for p in v] for k, v in self._series.items()}

    def price(self, resource: str, at: datetime) -> Decimal | None:
        """The price valid at ``at`` (``gpu:TYPE`` falls back to ``gpu``), None where there is none."""
        found = self._lookup(resource, at)
        if found is None and resource.startswith(f"{GPU}:"):
            found = self._lookup(GPU, at)
        return found

    def _lookup(self, resource: str, at: datetime) -> Decimal | None:
        starts = self._starts.get(resource)
        if not starts:
            return None
        index = bisect.bisect_right(starts, at) - 1
        if index < 0:
            return None
        price = self._series[resource][index]
        if price.valid_until is not None and at >= price.valid_until:
            return None
        return price.amount

    def changes(self, resource: str, after: datetime, before: datetime) -> list[datetime]:
        """Instants in ``(after, before)`` where the price of ``resource`` (or its fallback) may change."""
        names = [resource, GPU] if resource.startswith(f"{GPU}:") else [resource]
        out: set[datetime] = set()
        for name in names:
            for price in self._series.get(name, ()):
                for instant in (price.valid_from, price.valid_until):
                    if instant is not None and after < instant < before:
                        out.add(instant)
        return sorted(out)


def quantities(tres: Mapping[str, int]) -> dict[str, Decimal]:
    """What an AllocTRES holds per minute, by priced resource (zero quantities left out)."""
    out: dict[str, Decimal] = {}
    typed = 0
    for key, count in tres.items():
        if key.startswith("gres/gpu:") and count > 0:
            out[f"{GPU}:{key.removeprefix('gres/gpu:')}"] = Decimal(count)
            typed += count
    untyped = tres.get("gres/gpu", 0) - typed
    if untyped > 0:
        out[GPU] = Decimal(untyped)
    if tres.get("cpu", 0) > 0:
        out[CPU] = Decimal(tres["cpu"])
    if tres.get("mem", 0) > 0:
        out[MEMORY] = Decimal(tres["mem"]) / MIB_PER_GB
    return out


def gpus_of(tres: Mapping[str, int]) -> int:
    return max(tres.get("gres/gpu", 0), sum(c for k, c in tres.items() if k.startswith("gres/gpu:")))


def gpu_type_of(tres: Mapping[str, int]) -> str | None:
    """The GPU type of an allocation (the first by name when it holds several); None without typed GPUs."""
    types = sorted(k.removeprefix("gres/gpu:") for k, c in tres.items() if k.startswith("gres/gpu:") and c > 0)
    return types[0] if types else None


class Line(msgspec.Struct, frozen=True, kw_only=True):
    resource: str
    quantity: Decimal
    minutes: int
    unit_price: Decimal
    amount: Decimal


class Rating(msgspec.Struct, frozen=True, kw_only=True):
    minutes: int
    lines: tuple[Line, ...]
    amount: Decimal


def _minute_index(start: datetime, instant: datetime) -> int:
    """The first minute of a job (0-based) that starts at or after ``instant``."""
    seconds = (instant - start) // timedelta(microseconds=1)
    return -(-seconds // 60_000_000)


def rate(tres: Mapping[str, int], start: datetime, minutes: int, book: PriceBook) -> Rating:
    """The cost of ``minutes`` billed minutes of an allocation started at ``start`` (see the module's rules)."""
    lines: list[Line] = []
    if minutes > 0:
        end = start + minutes * MINUTE
        for resource, quantity in quantities(tres).items():
            bounds = [0, *(_minute_index(start, c) for c in book.changes(resource, start, end)), minutes]
            for first, stop in itertools.pairwise(bounds):
                if stop <= first:
                    continue
                price = book.price(resource, start + first * MINUTE)
                if price is None:
                    continue
                count = stop - first
                lines.append(
                    Line(
                        resource=resource,
                        quantity=quantity,
                        minutes=count,
                        unit_price=price,
                        amount=quantize(quantity * count * price),
                    )
                )
    return Rating(minutes=minutes, lines=tuple(lines), amount=sum((line.amount for line in lines), ZERO))


def rate_storage(stored_bytes: int, days: int, at: datetime, book: PriceBook) -> Rating:
    """The cost of keeping ``stored_bytes`` for ``days`` whole days from ``at`` (the datasets' stored bytes,
    charged once a day: one ``storage`` ledger entry per workspace and day)."""
    price = book.price(STORAGE, at)
    if price is None or stored_bytes <= 0 or days <= 0:
        return Rating(minutes=0, lines=(), amount=ZERO)
    quantity = Decimal(stored_bytes) / BYTES_PER_GB
    line = Line(
        resource=STORAGE, quantity=quantity, minutes=0, unit_price=price, amount=quantize(quantity * days * price)
    )
    return Rating(minutes=0, lines=(line,), amount=line.amount)
