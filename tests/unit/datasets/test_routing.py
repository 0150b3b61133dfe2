"""Replica routing is a pure function: each rule by example, then properties over arbitrary source sets."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.datasets.routing import Decision, RouteRequest, Source, log_decision, route

pytestmark = pytest.mark.unit


def src(
    id: int,
    *,
    region: str | None = "eu-1",
    public: bool = False,
    priority: int = 100,
    weight: int = 100,
    health: str = "ok",
    latency_ms: float | None = 5.0,
    enabled: bool = True,
) -> Source:
    return Source(id, f"s{id}", region, public, priority, weight, health, latency_ms, enabled)  # type: ignore[arg-type]


def read(user: str = "internal", region: str | None = "eu-1", **kw: Any) -> RouteRequest:
    return RouteRequest(user, region, "read", **kw)  # type: ignore[arg-type]


def upload(user: str = "internal", region: str | None = None, **kw: Any) -> RouteRequest:
    return RouteRequest(user, region, "upload", **kw)  # type: ignore[arg-type]


def ids(decision: Decision) -> list[int]:
    return [choice.source_id for choice in decision.order]


def why(decision: Decision, source_id: int) -> str:
    return next(c.why for c in (*decision.order, *decision.excluded) if c.source_id == source_id)


def test_disabled_sources_are_excluded_with_why() -> None:
    decision = route(read(), [src(1, enabled=False), src(2)])
    assert ids(decision) == [2]
    assert [(c.source_id, c.why) for c in decision.excluded] == [(1, "disabled")]


def test_down_is_a_last_resort_for_reads_and_excluded_for_uploads() -> None:
    sources = [src(1, health="down", priority=0, latency_ms=1.0), src(2, region="us-9", public=True, priority=500)]
    decision = route(read(), sources)
    assert ids(decision) == [2, 1] and decision.excluded == ()
    assert why(decision, 1).startswith("down: a last resort")
    decision = route(upload(), sources)
    assert ids(decision) == [2]
    assert [c.source_id for c in decision.excluded] == [1] and "upload" in why(decision, 1)


def test_a_read_prefers_the_nodes_region_over_the_users_audience() -> None:
    local_other_region = src(1, region="cn-1", public=False)
    cloud_same_region = src(2, region="eu-1", public=True)
    decision = route(read("internal", "eu-1"), [local_other_region, cloud_same_region])
    assert ids(decision) == [2, 1]
    assert why(decision, 2).startswith("same region eu-1, public store")
    assert why(decision, 1).startswith("other region cn-1 (node in eu-1)")


def test_regions_compare_case_insensitively_and_a_source_without_one_is_elsewhere() -> None:
    decision = route(read(region="EU-1"), [src(1, region=None, priority=0), src(2, region="eu-1")])
    assert ids(decision) == [2, 1] and why(decision, 1).startswith("no region (node in EU-1)")


@pytest.mark.parametrize(("user", "expected"), [("internal", [1, 2]), ("external", [2, 1])])
def test_within_a_region_internal_users_prefer_private_and_external_public(user: str, expected: list[int]) -> None:
    assert ids(route(read(user), [src(1, public=False), src(2, public=True)])) == expected


def test_without_a_node_region_only_the_audience_counts() -> None:
    decision = route(read("external", None), [src(1, region="eu-1"), src(2, region="cn-1", public=True)])
    assert ids(decision) == [2, 1] and "region" not in why(decision, 2)


@pytest.mark.parametrize(("user", "expected"), [("internal", [1, 2]), ("external", [2, 1])])
def test_an_upload_goes_to_the_users_audience_first_even_against_the_region(user: str, expected: list[int]) -> None:
    local = src(1, region="eu-1", public=False)
    cloud = src(2, region="cn-1", public=True)
    assert ids(route(upload(user, "eu-1"), [local, cloud])) == expected
    decision = route(upload("external", "eu-1"), [src(1, public=True, region="cn-1"), src(2, public=True)])
    assert ids(decision) == [2, 1]  # the region still ranks uploads within the audience


def test_priority_then_health_then_latency_bucket() -> None:
    assert ids(route(read(), [src(1, priority=2), src(2, priority=1, health="degraded")])) == [2, 1]
    assert ids(route(read(), [src(1, health="degraded"), src(2, health="ok", latency_ms=900.0)])) == [2, 1]
    assert ids(route(read(), [src(1, health="unknown", latency_ms=1.0), src(2, latency_ms=900.0)])) == [2, 1]
    assert ids(route(read(), [src(1, latency_ms=60.0), src(2, latency_ms=12.0)])) == [2, 1]
    assert ids(route(read(), [src(1, latency_ms=None), src(2, latency_ms=5000.0)])) == [2, 1]
    assert ids(route(read(), [src(1, latency_ms=float("nan")), src(2, latency_ms=5000.0)])) == [2, 1]


def test_degraded_and_unknown_health_are_one_class() -> None:
    decision = route(read(), [src(1, health="unknown", latency_ms=40.0), src(2, health="degraded", latency_ms=2.0)])
    assert ids(decision) == [2, 1]  # the latency decides between them


def test_equals_share_by_weight_and_weight_zero_comes_last() -> None:
    sources = [src(1, weight=0), src(2, weight=1), src(3, weight=1)]
    firsts = Counter(route(read(key=f"v7:node{i}"), sources).order[0].source_id for i in range(400))
    assert set(firsts) == {2, 3} and min(firsts.values()) > 150
    decision = route(read(key="k"), sources)
    assert ids(decision)[-1] == 1
    assert why(decision, 1).endswith("weighted pick 3 of 3 equals (weight 0 of 2)")
    assert ids(route(read(), [src(5, weight=0), src(4, weight=-3)])) == [4, 5]  # negative counts as 0; then by id


def test_latency_bucket_bounds() -> None:
    assert ids(route(read(), [src(1, latency_ms=10.0), src(2, latency_ms=9.99)])) == [2, 1]
    decision = route(read(), [src(1, latency_ms=10.0), src(2, latency_ms=49.9)])
    assert "weighted pick" in why(decision, 1)  # same bucket: equals


def test_the_same_key_routes_the_same_way_and_the_key_matters() -> None:
    sources = [src(i) for i in range(1, 6)]
    assert ids(route(read(key="a"), sources)) == ids(route(read(key="a"), list(reversed(sources))))
    assert len({tuple(ids(route(read(key=f"k{i}"), sources))) for i in range(50)}) > 10


def test_removing_a_source_moves_only_the_keys_that_chose_it() -> None:
    sources = [src(i) for i in range(1, 6)]
    for i in range(200):
        before = ids(route(read(key=f"k{i}"), sources))
        after = ids(route(read(key=f"k{i}"), sources[:-1]))
        assert after == [s for s in before if s != 5]


def test_a_usable_preferred_source_goes_first() -> None:
    sources = [src(1), src(2, region="us-9", public=True, priority=900, health="degraded", latency_ms=None)]
    decision = route(read(preferred_source=2), sources)
    assert ids(decision) == [2, 1] and why(decision, 2) == "requested"
    decision = route(upload("external", preferred_source=1), [src(1), src(2, public=True)])
    assert ids(decision) == [1, 2] and decision.chosen == 1  # an internal store, overriding the audience


def test_an_unusable_or_unknown_preferred_source_is_treated_like_the_others() -> None:
    sources = [src(1), src(2, health="down"), src(3, enabled=False)]
    decision = route(read(preferred_source=2), sources)
    assert ids(decision) == [1, 2] and why(decision, 2).startswith("requested, but down")
    decision = route(upload(preferred_source=2), sources)
    assert ids(decision) == [1] and "requested, but down" in why(decision, 2)
    decision = route(read(preferred_source=3), sources)
    assert ids(decision) == [1, 2] and why(decision, 3) == "disabled, although requested"
    assert ids(route(read(preferred_source=99), sources)) == [1, 2]


def test_edge_cases() -> None:
    assert route(read(), []) == Decision(order=(), excluded=())
    nothing = route(upload(), [src(1, health="down")])
    assert nothing.order == () and nothing.chosen is None
    with pytest.raises(ValueError, match="twice"):
        route(read(), [src(1), src(1)])


def test_every_reason_names_what_ranked_the_source() -> None:
    decision = route(read("internal", "eu-1"), [src(1, priority=1, latency_ms=12.0)])
    assert why(decision, 1) == (
        "same region eu-1, private store, internal users prefer private, priority 1, healthy, latency 10-50 ms"
    )


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, /, **kw: Any) -> None:
        self.lines.append((event, kw))


def test_log_decision_writes_one_line_with_who_what_chosen_and_why() -> None:
    request = read(preferred_source=2)
    decision = route(request, [src(1), src(2), src(3, enabled=False)])
    logger = Recorder()
    log_decision(logger, who="alice", what="dataset 7 version 3 on gpu-01", request=request, decision=decision)
    [(event, fields)] = logger.lines
    assert event == "storage route"
    assert fields["who"] == "alice" and fields["what"] == "dataset 7 version 3 on gpu-01"
    assert fields["chosen"] == 2 and fields["order"] == [2, 1] and fields["excluded"] == [3]
    assert fields["why"]["2"] == "requested" and fields["why"]["3"] == "disabled"
    assert fields["purpose"] == "read" and fields["requested"] == 2


def test_log_decision_works_with_structlog() -> None:
    import structlog

    with structlog.testing.capture_logs() as captured:
        request = upload()
        log_decision(structlog.get_logger(), who="bob", what="upload", request=request, decision=route(request, []))
    assert captured == [
        {
            "event": "storage route",
            "log_level": "info",
            "who": "bob",
            "what": "upload",
            "purpose": "upload",
            "user_type": "internal",
            "node_region": None,
            "requested": None,
            "chosen": None,
            "order": [],
            "excluded": [],
            "why": {},
        }
    ]


# --- properties ---

sources_strategy = st.lists(
    st.builds(
        src,
        st.integers(0, 10_000),
        region=st.sampled_from([None, "eu-1", "EU-1", "cn-1"]),
        public=st.booleans(),
        priority=st.integers(0, 3),
        weight=st.integers(0, 3),
        health=st.sampled_from(["ok", "degraded", "down", "unknown"]),
        latency_ms=st.one_of(st.none(), st.floats(0, 3000)),
        enabled=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda s: s.id,
)
requests_strategy = st.builds(
    RouteRequest,
    st.sampled_from(["internal", "external"]),
    st.sampled_from([None, "eu-1", "cn-1"]),
    st.sampled_from(["read", "upload"]),
    preferred_source=st.one_of(st.none(), st.integers(0, 10_000)),
    key=st.text(max_size=20),
)


@given(requests_strategy, sources_strategy)
def test_order_is_a_permutation_of_the_usable_sources(request: RouteRequest, sources: list[Source]) -> None:
    decision = route(request, sources)
    usable = {s.id for s in sources if s.enabled and (request.purpose == "read" or s.health != "down")}
    assert sorted(ids(decision)) == sorted(usable)
    assert sorted(c.source_id for c in decision.excluded) == sorted({s.id for s in sources} - usable)
    assert all(c.why for c in (*decision.order, *decision.excluded))


@given(requests_strategy, sources_strategy, st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(request: RouteRequest, sources: list[Source], rnd: Any) -> None:
    shuffled = list(sources)
    rnd.shuffle(shuffled)
    assert route(request, sources).order == route(request, shuffled).order == route(request, sources).order


@given(requests_strategy, sources_strategy)
def test_a_down_source_never_comes_before_a_working_one(request: RouteRequest, sources: list[Source]) -> None:
    health = {s.id: s.health for s in sources}
    order = [health[i] for i in ids(route(request, sources))]
    first_down = next((n for n, h in enumerate(order) if h == "down"), len(order))
    assert all(h == "down" for h in order[first_down:])


@given(requests_strategy, sources_strategy)
def test_a_usable_preferred_source_always_goes_first(request: RouteRequest, sources: list[Source]) -> None:
    usable = {s.id for s in sources if s.enabled and s.health != "down"}
    decision = route(request, sources)
    if request.preferred_source in usable:
        assert decision.order[0].source_id == request.preferred_source and decision.order[0].why == "requested"
    else:
        assert all(c.why != "requested" for c in decision.order)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 10), min_size=2, max_size=5).filter(lambda w: sum(w) > 0), st.text(max_size=5))
def test_first_places_over_many_keys_approach_the_weight_shares(weights: list[int], salt: str) -> None:
    sources = [src(i, weight=w) for i, w in enumerate(weights)]
    keys = 3000
    firsts = Counter(route(read(key=f"{salt}:{n}"), sources).chosen for n in range(keys))
    for i, w in enumerate(weights):
        assert abs(firsts[i] / keys - w / sum(weights)) < 0.05, (weights, firsts)
