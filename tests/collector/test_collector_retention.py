"""Retention: raw records past the cutoff become daily rollups that reports still read."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from collector.record import UsageRecord
from collector.report import ReportQuery, build_report, parse_query
from collector.retention import cutoff_ms, run_retention
from collector.store import Store

DAY1 = "2025-03-01"


def report(store: Store, since: str, until: str, **kw: str) -> list[tuple[object, ...]]:
    query = parse_query(since=since, until=until, **kw)
    assert isinstance(query, ReportQuery)
    with store.cursor() as cur:
        result = build_report(cur, query)
    return [
        (r.bucket, *r.group.values(), r.spend_usd, r.requests, r.input_tokens) for r in result.rows
    ]


@pytest.fixture
def loaded(store: Store, known: list[UsageRecord]) -> Store:
    store.insert(known)
    return store


def test_the_cutoff_keeps_whole_utc_days() -> None:
    now = 10 * 86_400_000 + 5 * 3_600_000
    assert cutoff_ms(3, now) == 7 * 86_400_000


def test_expired_records_leave_the_raw_table_for_the_rollups(loaded: Store) -> None:
    march_2 = 1_740_873_600_000  # 2025-03-02T00:00Z: keeps only the last known record raw
    result = run_retention(loaded, 1, now_ms=march_2 + 86_400_000)
    assert result.rolled_up == 8
    assert loaded.count() == 1
    assert loaded.raw_since_ms == march_2
    assert loaded.state("raw_since_ms") == march_2


def test_a_report_reaches_past_retention_with_the_same_sums(loaded: Store) -> None:
    before = report(loaded, "2025-02-01", "2025-03-03", group_by="tenant,model", by="day")
    run_retention(loaded, 1, now_ms=1_740_873_600_000 + 86_400_000)
    after = report(loaded, "2025-02-01", "2025-03-03", group_by="tenant,model", by="day")
    assert after == before
    assert (DAY1, "acme", "gpt-4o", Decimal("0.0375"), 3, 3000) in after


def test_a_second_pass_adds_to_a_rolled_up_day_without_counting_twice(
    loaded: Store, make_record: Callable[..., UsageRecord]
) -> None:
    now = 1_740_873_600_000 + 86_400_000
    run_retention(loaded, 1, now_ms=now)
    # A record that raced the cutoff: stored raw for a day already rolled up.
    loaded.insert([make_record(50, tenant="acme", cost_usd=Decimal("1"))])
    run_retention(loaded, 1, now_ms=now)
    rows = report(loaded, DAY1, "2025-03-02", group_by="tenant")
    assert rows[0] == (None, "acme", Decimal("1.03795"), 6, 3200)
    assert loaded.count() == 1


def test_retention_never_removes_days_inside_the_window(loaded: Store) -> None:
    run_retention(loaded, 365, now_ms=1_740_873_600_000)
    assert loaded.count() == 9
