"""What Slurm's commands print, one module per Slurm release line, chosen by version.

``for_version("22.05.8")`` picks the dialect for that release, or the nearest older one we know (a newer
Slurm usually keeps the older schema readable for a while; an older one than we know is refused). A new
release line plugs in as a module implementing :class:`Dialect`, listed in ``_DIALECTS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo
from typing import Protocol

from slurm.dialects import v22_05
from slurm.records import AccountingRecord, Association, Job, Node, Partition


class Dialect(Protocol):
    """The parsers a release line provides (a module satisfies it)."""

    def parse_squeue(self, payload: bytes | str) -> list[Job]: ...

    def parse_sacct(self, payload: bytes | str, *, steps: bool = False) -> list[AccountingRecord]: ...

    def parse_sacct_parsable(
        self,
        text: str,
        *,
        fields: Sequence[str] | None = None,
        delimiter: str = "|",
        tz: tzinfo = ...,
        steps: bool = True,
    ) -> list[AccountingRecord]: ...

    def parse_associations(
        self, text: str, *, fields: Sequence[str] | None = ..., delimiter: str = "|"
    ) -> list[Association]: ...

    def parse_associations_json(self, payload: bytes | str) -> list[Association]: ...

    def parse_nodes(self, payload: bytes | str) -> list[Node]: ...

    def parse_partitions_json(self, payload: bytes | str) -> list[Partition]: ...

    def parse_partitions_text(self, text: str) -> list[Partition]: ...

    def parse_jobs_text(self, text: str) -> list[Job]: ...


_DIALECTS: dict[tuple[int, int], Dialect] = {v22_05.RELEASE: v22_05}


def release(version: str) -> tuple[int, int]:
    """``22.05.8``, ``22.05``, ``22.5`` -> ``(22, 5)``."""
    parts = version.strip().split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ValueError(f"not a Slurm version: {version!r} (want MAJOR.MINOR[.MICRO])") from None
    return major, minor


def for_version(version: str) -> Dialect:
    wanted = release(version)
    known = sorted(v for v in _DIALECTS if v <= wanted)
    if not known:
        raise ValueError(f"Slurm {version} is older than every supported dialect ({sorted(_DIALECTS)})")
    return _DIALECTS[known[-1]]
