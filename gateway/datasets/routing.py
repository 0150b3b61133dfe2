"""Which store to read a replica from, or to upload to: a pure function of values, plus its log line.

``route(request, sources)`` takes the stores that hold a ready replica (for a read) or could take an upload, and
returns them ordered best first, each with a human-readable reason, and the ones it left out, with theirs. It does
no I/O: the caller reads the stores' health and latency from the health checker's last results, routes, calls
``log_decision`` and then tries the sources in order (a failed read moves on to the next one).

Rules, in order of precedence:

1. **Disabled** sources are excluded. **Down** sources are excluded for uploads (a new object must land on a
   working store) but kept for reads as a last resort after every other source, because health is the checker's
   last view and may be stale: trying a "down" replica costs one failed request, giving up costs the job.
2. **requested**: an explicit ``preferred_source`` (an upload's chosen store, a read's pin) that is in ``sources``,
   enabled and not down goes first, whatever the other rules say; checking that the caller may choose it is the
   caller's job. A preferred source that is disabled or down is treated like any other (excluded, or last resort
   with "requested, but down" in its reason); one not in ``sources`` is ignored (``order[0].why`` then is not
   "requested", which the caller can show).
3. **Locality and audience**, whose order depends on the purpose:
   - read: first the node's **region** (a source whose region equals ``node_region``, compared case-insensitively,
     before all others: cross-region traffic is slow and, on public clouds, billed; a source without a region is
     "another region"), then the **audience**: internal users prefer private (site-local) stores, external users
     public ones. The region comes first because the bytes flow to the GPU node, not to the user: a site's own
     node reads the site's MinIO faster than any cloud store, whoever submitted the job. Without a
     ``node_region`` (a download to somewhere off the cluster) only the audience counts.
   - upload: first the **audience** (external users' data goes to the public store, internal users' to the
     local one: this is the primary store of a new version), then the region, when one is given.
4. **priority**: lower first (the administrator's ranking).
5. **health**: ``ok`` before ``degraded`` and ``unknown`` (one class: neither is known to work well).
6. **latency** buckets of the last probe: < 10 ms, 10-50, 50-200, 200-1000, >= 1000 ms, then unknown (None or
   NaN; a measured store is a known quantity). Buckets, not raw values, so that probe jitter does not reshuffle
   the order and load can spread among stores that are about as fast.
7. **weighted pick** among sources equal on all of the above: weighted rendezvous hashing on ``(key, source id)``
   (each source draws ``-ln(h) / weight`` with ``h`` uniform in (0, 1) from BLAKE2b of the two; lowest first).
   The first place goes to a source with probability ``weight / sum of weights`` over keys, the same key always
   gives the same order (no global RNG, no process-seeded ``hash()``), and adding or removing one source moves
   only the keys that chose it. Weight 0 (negative counts as 0) places a source after its positive-weight equals;
   to drain a store, raise its priority number or disable it. Ties left (weight 0 among weight 0) go by id.

Duplicate source ids are a caller's bug and raise ``ValueError``. No sources, or none usable, give an empty order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b
from itertools import groupby
from typing import Any, Literal, Protocol

import msgspec

Health = Literal["ok", "degraded", "down", "unknown"]

LATENCY_BUCKETS_MS = (10.0, 50.0, 200.0, 1000.0)
"""Upper bounds of the latency buckets; a value at a bound belongs to the next bucket."""
_LATENCY_LABELS = ("latency < 10 ms", "latency 10-50 ms", "latency 50-200 ms", "latency 200-1000 ms")
_LATENCY_SLOW = "latency >= 1000 ms"
_LATENCY_UNKNOWN = "latency unknown"
_UNKNOWN_BUCKET = len(LATENCY_BUCKETS_MS) + 1
_HEALTH_RANK = {"ok": 0, "degraded": 1, "unknown": 1, "down": 2}
_HEALTH_WHY = {"ok": "healthy", "degraded": "degraded", "unknown": "health unknown", "down": "down"}
_SCALE = 2.0**-52


class Source(msgspec.Struct, frozen=True):
    """A store holding a ready replica (read) or a candidate store for an upload, with the checker's last view."""

    id: int
    name: str
    region: str | None
    public: bool
    """Reachable from outside the site (a public cloud store)."""
    priority: int
    """Lower is preferred."""
    weight: int
    """Share among otherwise equal sources; >= 0."""
    health: Health
    latency_ms: float | None
    enabled: bool = True


class RouteRequest(msgspec.Struct, frozen=True):
    """Who wants what from where; ``key`` makes the weighted pick stable (e.g. ``f"{version_id}:{node}"``)."""

    user_type: Literal["internal", "external"]
    node_region: str | None
    purpose: Literal["read", "upload"]
    preferred_source: int | None = None
    """An override: an upload's chosen store, or a read's pin."""
    key: str = ""


class Choice(msgspec.Struct, frozen=True):
    source_id: int
    why: str


class Decision(msgspec.Struct, frozen=True):
    order: tuple[Choice, ...]
    """Usable sources, best first: try them in this order."""
    excluded: tuple[Choice, ...]
    """Sources not to use (disabled; down for an upload), with why."""

    @property
    def chosen(self) -> int | None:
        """The first source to try, or None when nothing is usable."""
        return self.order[0].source_id if self.order else None


def _latency_bucket(latency_ms: float | None) -> int:
    if latency_ms is None or math.isnan(latency_ms):
        return _UNKNOWN_BUCKET
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms < bound:
            return index
    return len(LATENCY_BUCKETS_MS)


def _draw(key: str, source_id: int, weight: int) -> float:
    """This source's draw for this key: lower wins; ``-ln(h) / weight`` so first place goes by weight share."""
    if weight <= 0:
        return math.inf
    digest = blake2b(f"{key}\x00{source_id}".encode(), digest_size=8).digest()
    h = ((int.from_bytes(digest) >> 12) + 0.5) * _SCALE  # 52 bits + 1/2, exactly in (0, 1)
    return -math.log(h) / weight


def route(request: RouteRequest, sources: Sequence[Source]) -> Decision:
    """Order ``sources`` for ``request`` by the module's rules; every choice and exclusion says why."""
    reading = request.purpose == "read"
    node_region = request.node_region.casefold() if request.node_region else None
    wants_public = request.user_type == "external"
    excluded: list[Choice] = []
    ranked: list[tuple[tuple[Any, ...], float, int, Source, bool]] = []
    seen: set[int] = set()
    for source in sources:
        if source.id in seen:
            raise ValueError(f"source id {source.id} appears twice")
        seen.add(source.id)
        requested = source.id == request.preferred_source
        if not source.enabled:
            excluded.append(Choice(source.id, "disabled, although requested" if requested else "disabled"))
            continue
        down = source.health == "down"
        if down and not reading:
            why = "down: an upload needs a working store"
            excluded.append(Choice(source.id, f"{why}; requested, but down" if requested else why))
            continue
        region_rank = 0 if node_region is None or (source.region or "").casefold() == node_region else 1
        audience_rank = 0 if source.public == wants_public else 1
        locality = (region_rank, audience_rank) if reading else (audience_rank, region_rank)
        tier = (
            down,
            *locality,
            source.priority,
            _HEALTH_RANK[source.health],
            _latency_bucket(source.latency_ms),
        )
        first = requested and not down
        ranked.append((tier, _draw(request.key, source.id, source.weight), source.id, source, first))
    ranked.sort(key=lambda item: (not item[4], item[0], item[1], item[2]))
    order: list[Choice] = []
    for (first, _), group in groupby(ranked, key=lambda item: (item[4], item[0])):
        members = list(group)
        if first:
            order.append(Choice(members[0][2], "requested"))
            continue
        total = sum(max(item[3].weight, 0) for item in members)
        for place, (_, _, source_id, source, _) in enumerate(members, start=1):
            why = _why(request, source, node_region)
            if len(members) > 1:
                why += f", weighted pick {place} of {len(members)} equals (weight {max(source.weight, 0)} of {total})"
            order.append(Choice(source_id, why))
    return Decision(order=tuple(order), excluded=tuple(excluded))


def _why(request: RouteRequest, source: Source, node_region: str | None) -> str:
    """The facts that ranked ``source``, in the order the rules weigh them for this purpose."""
    parts: list[str] = []
    if source.health == "down":
        requested = "requested, but " if source.id == request.preferred_source else ""
        parts.append(f"{requested}down: a last resort (health may be stale)")
    if node_region is None:
        region = ""
    elif (source.region or "").casefold() == node_region:
        region = f"same region {source.region}"
    elif source.region:
        region = f"other region {source.region} (node in {request.node_region})"
    else:
        region = f"no region (node in {request.node_region})"
    kind = "public store" if source.public else "private store"
    preferred = "public" if request.user_type == "external" else "private"
    audience = f"{kind}, {request.user_type} users prefer {preferred}"
    locality = [region, audience] if request.purpose == "read" else [audience, region]
    parts.extend(part for part in locality if part)
    parts.append(f"priority {source.priority}")
    if source.health != "down":
        parts.append(_HEALTH_WHY[source.health])
    bucket = _latency_bucket(source.latency_ms)
    if bucket == _UNKNOWN_BUCKET:
        parts.append(_LATENCY_UNKNOWN)
    else:
        parts.append(_LATENCY_LABELS[bucket] if bucket < len(_LATENCY_LABELS) else _LATENCY_SLOW)
    return ", ".join(parts)


class _Logger(Protocol):
    def info(self, event: str, /, **kw: Any) -> Any: ...


def log_decision(logger: _Logger, *, who: str, what: str, request: RouteRequest, decision: Decision) -> None:
    """One structured line per decision (who asked, for what, what was chosen and why) for the audit trail."""
    logger.info(
        "storage route",
        who=who,
        what=what,
        purpose=request.purpose,
        user_type=request.user_type,
        node_region=request.node_region,
        requested=request.preferred_source,
        chosen=decision.chosen,
        order=[choice.source_id for choice in decision.order],
        excluded=[choice.source_id for choice in decision.excluded],
        why={str(choice.source_id): choice.why for choice in (*decision.order, *decision.excluded)},
    )
