"""Latency, errors, efficiency and top movers over records with hand-checked answers."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from collector.analytics import build_efficiency, build_errors, build_latency
from collector.movers import PARTS, build_movers
from collector.record import UsageRecord
from collector.report import ReportQuery, parse_query
from collector.store import Store

MakeRecord = Callable[..., UsageRecord]
DAY_MS = 86_400_000
MARCH_1 = 1_740_787_200_000


def query(since: str = "2025-03-01", until: str = "2025-03-02", **kw: object) -> ReportQuery:
    parsed = parse_query(since=since, until=until, **kw)  # type: ignore[arg-type]
    assert isinstance(parsed, ReportQuery), parsed
    return parsed


@pytest.fixture
def timed(store: Store, make_record: MakeRecord) -> Store:
    """100 successful requests of model m with latency 1..100 ms, streams with ttft 10..500."""
    store.insert(
        [make_record(i, model_resolved="m", latency_ms=float(i), stream=i % 2 == 0,
                     ttft_ms=float(i * 10) if i % 2 == 0 else None) for i in range(1, 101)]
        + [make_record(200, model_resolved="m", latency_ms=99_999.0, outcome="error",
                       error_class="upstream_timeout")]
    )  # fmt: skip
    return store


def test_latency_percentiles_cover_successful_requests_only(timed: Store) -> None:
    with timed.cursor() as cur:
        (row,) = build_latency(cur, query(group_by="model")).rows
    assert (row.requests, row.streams) == (100, 50)
    assert (row.latency_p50_ms, row.latency_p95_ms, row.latency_p99_ms) == (50.5, 95.05, 99.01)
    assert row.ttft_p50_ms == 510.0


def test_error_rate_counts_errors_per_class_over_all_requests(
    store: Store, make_record: MakeRecord
) -> None:
    classes = ["rate_limited"] * 3 + ["upstream_timeout"]
    store.insert(
        [
            make_record(i, provider="p", outcome="error", error_class=c)
            for i, c in enumerate(classes)
        ]
        + [make_record(10, provider="p", outcome="denied", error_class="permission")]
        + [make_record(20 + i, provider="p") for i in range(16)]
    )
    with store.cursor() as cur:
        result = build_errors(cur, query(group_by="provider"))
    (row,) = result.rows
    assert (row.requests, row.errors, row.denied, row.error_rate) == (21, 4, 1, round(4 / 21, 6))
    assert row.by_class == {"rate_limited": 3, "permission": 1, "upstream_timeout": 1}
    assert result.classes == ["rate_limited", "permission", "upstream_timeout"]


def test_efficiency_reports_cost_per_request_retries_and_cache_rates(
    store: Store, make_record: MakeRecord
) -> None:
    store.insert(
        [
            make_record(1, tenant="t", cost_usd=Decimal("0.3"), retries=2, cache="miss",
                        input_tokens=1000, cached_input_tokens=500, output_tokens=10),
            make_record(2, tenant="t", cost_usd=Decimal("0.1"), cache="hit",
                        fallback_from="big", input_tokens=1000),
            make_record(3, tenant="t", cost_usd=None, cache="hit"),
            make_record(4, tenant="t", cost_usd=Decimal("0.2"), cache="off"),
        ]
    )  # fmt: skip
    with store.cursor() as cur:
        (row,) = build_efficiency(cur, query(group_by="tenant")).rows
    assert row.cost_per_request_usd == Decimal("0.2")  # 0.6 over the 3 priced requests
    assert (row.retry_ratio, row.retried_share, row.fallback_share) == (0.5, 0.25, 0.25)
    assert row.cache_hit_rate == round(2 / 3, 6)
    assert row.prompt_cache_rate == 0.25
    assert row.input_tokens_per_request == 500.0


def _day(
    store: Store, make_record: MakeRecord, day: int, n: int, tenant: str, **kw: object
) -> None:
    base = MARCH_1 + day * DAY_MS
    store.insert(
        [make_record(day * 10_000 + sum(map(ord, tenant)) * 10 + i, ts_ms=base + i, tenant=tenant,
                     **kw) for i in range(n)]
    )  # fmt: skip


def test_movers_parts_add_up_exactly_to_each_change(store: Store, make_record: MakeRecord) -> None:
    unit = {"input_tokens": 1000, "output_tokens": 100, "cost_usd": Decimal("0.0035")}
    _day(store, make_record, 0, 10, "acme", **unit)
    _day(store, make_record, 1, 13, "acme", input_tokens=1500, output_tokens=90,
         cost_usd=Decimal("0.004415"), retries=1)  # fmt: skip
    _day(store, make_record, 0, 5, "globex", **unit)
    _day(store, make_record, 1, 5, "globex", **unit)
    with store.cursor() as cur:
        result = build_movers(cur, query(since="2025-03-02", until="2025-03-03", group_by="tenant"))
    acme, globex = result.rows
    assert acme.group == {"tenant": "acme"}
    assert acme.change_usd == Decimal("0.022395")
    assert sum(acme.parts.values()) == acme.change_usd
    assert acme.parts["requests"] > 0 and acme.parts["prompts"] > 0 and acme.parts["outputs"] < 0
    assert globex.change_usd == 0 and all(v == 0 for v in globex.parts.values())
    assert result.total_change_usd == Decimal("0.022395")


def test_a_group_with_no_earlier_spend_moves_by_requests_alone(
    store: Store, make_record: MakeRecord
) -> None:
    _day(store, make_record, 1, 4, "newco", input_tokens=10, cost_usd=Decimal("0.25"))
    with store.cursor() as cur:
        (row,) = build_movers(cur, query(since="2025-03-02", until="2025-03-03")).rows
    assert row.change_pct is None
    assert row.parts == {p: Decimal(1) if p == "requests" else Decimal(0) for p in PARTS}


def test_doubling_requests_alike_is_all_requests(store: Store, make_record: MakeRecord) -> None:
    unit = {"input_tokens": 100, "output_tokens": 10, "cost_usd": Decimal("0.01")}
    _day(store, make_record, 0, 3, "acme", **unit)
    _day(store, make_record, 1, 6, "acme", **unit)
    with store.cursor() as cur:
        (row,) = build_movers(cur, query(since="2025-03-02", until="2025-03-03")).rows
    assert row.parts["requests"] == Decimal("0.03") and row.change_pct == 100.0
    assert [row.parts[p] for p in PARTS[1:]] == [0, 0, 0, 0]
