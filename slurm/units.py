"""Sizes and durations as Slurm writes and reads them (``2G``, ``1-02:30:00``)."""

from __future__ import annotations

import math
import re

_MIB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)$")
_DURATION = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"  # D-H, D-H:M, D-H:M:S
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"  # M, M:S, H:M:S
)
NO_LIMIT = frozenset({"UNLIMITED", "INFINITE", "PARTITION_LIMIT"})


def memory_mib(value: str) -> int:
    """``512`` (MiB, Slurm's default unit), ``256M``, ``2G``, ``1.5T``, ``1024K`` -> MiB (fractions round up).

    Rounding up: a request must never shrink below what was asked for.
    """
    match = _SIZE.fullmatch(value.strip().upper())
    if not match:
        raise ValueError(f"not a memory size: {value!r} (use a number with an optional K, M, G or T)")
    number, unit = match.groups()
    return math.ceil(float(number) * _MIB_PER_UNIT[unit or "M"])


def duration_seconds(value: str) -> int | None:
    """Slurm's duration formats -> seconds; ``UNLIMITED``/``INFINITE``/``Partition_Limit`` -> None.

    Like Slurm: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` (one number alone is minutes).
    """
    text = value.strip()
    if text.upper() in NO_LIMIT:
        return None
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"not a Slurm duration: {value!r} (use M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "days" in g:
        return ((g["days"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    if "c" in g:  # H:M:S
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]
    return g["a"] * 60 + g.get("b", 0)  # M or M:S


def duration_minutes(value: str) -> int | None:
    """Like :func:`duration_seconds`, in whole minutes rounded up (as Slurm rounds time limits)."""
    seconds = duration_seconds(value)
    return None if seconds is None else math.ceil(seconds / 60)
