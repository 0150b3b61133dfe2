"""JSON dialects of Slurm's commands, one module per Slurm release line.

``for_version("22.05.8")`` picks the parser for that release, or the nearest older one we know.
"""

from __future__ import annotations

from types import ModuleType

from slurm.dialects import v22_05

_DIALECTS: dict[tuple[int, int], ModuleType] = {(22, 5): v22_05}


def for_version(version: str) -> ModuleType:
    major, minor = (int(p) for p in version.split(".")[:2])
    known = sorted(v for v in _DIALECTS if v <= (major, minor))
    if not known:
        raise ValueError(f"Slurm {version} is older than every supported dialect ({sorted(_DIALECTS)})")
    return _DIALECTS[known[-1]]
