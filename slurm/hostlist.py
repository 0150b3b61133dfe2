"""Slurm host lists (``n[1-3,5],gpu07``), as squeue, sacct and ``$SLURM_JOB_NODELIST`` write them."""

from __future__ import annotations

_NO_NODES = frozenset({"", "None assigned", "(null)", "(None)"})


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def expand_hostlist(text: str | None) -> list[str]:
    """``n[1-3,5],gpu7`` -> ``["n1", "n2", "n3", "n5", "gpu7"]`` (zero padding kept).

    sacct's ``None assigned`` (a job that never ran) and empty text give ``[]``.
    """
    if text is None or text.strip() in _NO_NODES:
        return []
    hosts: list[str] = []
    for part in _split_top_level(text):
        if "[" not in part:
            hosts.append(part)
            continue
        prefix, _, rest = part.partition("[")
        ranges, _, suffix = rest.partition("]")
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            width = len(low)
            for n in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{n:0{width}d}{suffix}")
    return hosts
