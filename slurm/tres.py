"""TRES strings (``cpu=2,mem=2G,node=1,gres/gpu:a100=1``) and memory sizes, as Slurm writes them."""

from __future__ import annotations

_MIB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


def memory_mib(value: str) -> int:
    """``512`` (MiB, Slurm's default unit), ``256M``, ``2G``, ``1.5T`` -> MiB."""
    text = value.strip().upper()
    if not text:
        raise ValueError("empty memory size")
    unit = text[-1] if text[-1] in _MIB_PER_UNIT else "M"
    number = text[:-1] if text[-1] in _MIB_PER_UNIT else text
    return round(float(number) * _MIB_PER_UNIT[unit])


def parse_tres(text: str | None) -> dict[str, int]:
    """Parse a TRES string; ``mem`` becomes MiB. Empty or missing gives ``{}``."""
    result: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        result[name] = memory_mib(value) if name == "mem" else int(float(value))
    return result


def format_tres(tres: dict[str, int | None]) -> str:
    """The inverse, for sacctmgr: ``None`` means no limit (``-1``)."""
    return ",".join(f"{name}={-1 if count is None else count}" for name, count in sorted(tres.items()))


def gpu_count(tres: dict[str, int]) -> int:
    return tres.get("gres/gpu", 0)
