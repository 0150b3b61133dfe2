"""TRES strings (``cpu=2,mem=2G,node=1,gres/gpu:a100=1``), as Slurm writes them."""

from __future__ import annotations

from slurm.units import memory_mib

__all__ = ["format_tres", "gpu_count", "memory_mib", "parse_tres"]


def parse_tres(text: str | None) -> dict[str, int]:
    """Parse a TRES string; ``mem`` becomes MiB (``256M``, ``2G``; a bare number is already MiB).

    Empty or missing gives ``{}``. A malformed entry raises ValueError naming it.
    """
    result: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"not a TRES entry: {part!r} (want name=count)")
        try:
            result[name] = memory_mib(value) if name == "mem" else int(float(value))
        except ValueError:
            raise ValueError(f"not a TRES count: {part!r}") from None
    return result


def format_tres(tres: dict[str, int | None]) -> str:
    """The inverse, for sacctmgr: ``None`` means no limit (``-1``)."""
    return ",".join(f"{name}={-1 if count is None else count}" for name, count in sorted(tres.items()))


def gpu_count(tres: dict[str, int]) -> int:
    return tres.get("gres/gpu", 0)
