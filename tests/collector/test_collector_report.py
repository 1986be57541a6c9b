"""Reports over known data: exact sums and groups, time ranges, buckets, and the three formats."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from collector.record import UsageRecord
from collector.render import render_csv, render_json, render_table
from collector.report import (
    QueryError,
    ReportQuery,
    ReportResult,
    build_report,
    parse_query,
    parse_time,
    report_decoder,
)
from collector.store import Store

MARCH = {"since": "2025-03-01", "until": "2025-03-03"}


def query(**kwargs: object) -> ReportQuery:
    parsed = parse_query(**{**MARCH, **kwargs})  # type: ignore[arg-type]
    assert isinstance(parsed, ReportQuery), parsed
    return parsed


@pytest.fixture
def loaded(store: Store, known: list[UsageRecord]) -> Store:
    store.insert(known)
    return store


def report(store: Store, q: ReportQuery) -> ReportResult:
    with store.cursor() as cur:
        return build_report(cur, q)


def test_groups_and_sums_are_exact(loaded: Store) -> None:
    result = report(loaded, query(group_by="tenant,model"))
    got = {
        (r.group["tenant"], r.group["model"]): (r.spend_usd, r.requests, r.input_tokens)
        for r in result.rows
    }
    assert got == {
        ("acme", "gpt-4o"): (Decimal("0.5375"), 4, 13_000),
        ("acme", "gpt-4o-mini"): (Decimal("0.00045"), 2, 200),
        ("globex", "gpt-4o-mini"): (Decimal(0), 2, 500),
    }


def test_totals_count_errors_denials_and_unpriced_requests(loaded: Store) -> None:
    totals = report(loaded, query(group_by="tenant")).totals
    assert (totals.spend_usd, totals.requests) == (Decimal("0.53795"), 8)
    assert (totals.output_tokens, totals.cached_input_tokens, totals.reasoning_tokens) == (
        2640,
        300,
        700,
    )
    assert (totals.errors, totals.denied, totals.unpriced) == (1, 1, 1)


def test_rows_are_ordered_by_spend_descending(loaded: Store) -> None:
    rows = report(loaded, query(group_by="tenant,model")).rows
    assert [r.spend_usd for r in rows] == sorted((r.spend_usd for r in rows), reverse=True)


def test_the_range_is_half_open(loaded: Store) -> None:
    result = report(loaded, query(since="2025-03-01", until="2025-03-02", group_by="none"))
    assert result.totals.requests == 7


def test_the_day_bucket_splits_rows_by_utc_day(loaded: Store) -> None:
    result = report(loaded, query(group_by="tenant", by="day"))
    got = [(r.bucket, r.group["tenant"], r.spend_usd) for r in result.rows]
    assert got == [
        ("2025-03-01", "acme", Decimal("0.03795")),
        ("2025-03-01", "globex", Decimal(0)),
        ("2025-03-02", "acme", Decimal("0.5")),
    ]


def test_the_hour_bucket_names_the_hour_in_utc(loaded: Store) -> None:
    result = report(loaded, query(since="2025-03-02", group_by="none", by="hour"))
    assert [r.bucket for r in result.rows] == ["2025-03-02T05:00Z"]


def test_a_filter_narrows_to_matching_rows(loaded: Store) -> None:
    result = report(loaded, query(group_by="user", filters=["model=gpt-4o", "tenant=acme"]))
    assert {r.group["user"]: r.requests for r in result.rows} == {"ann": 2, "bob": 1, "": 1}


def test_json_output_decodes_back_to_the_same_result(loaded: Store) -> None:
    result = report(loaded, query(group_by="tenant,app,endpoint,model", by="day"))
    text = render_json(result)
    assert '"spend_usd": "0.0375"' in text
    assert report_decoder.decode(text.encode()) == result


def test_csv_output_has_exact_values_and_no_totals_line(loaded: Store) -> None:
    result = report(loaded, query(group_by="tenant,model"))
    rows = list(csv.DictReader(io.StringIO(render_csv(result))))
    assert len(rows) == 3
    assert rows[0] == {
        "tenant": "acme",
        "model": "gpt-4o",
        "spend_usd": "0.5375",
        "requests": "4",
        "input_tokens": "13000",
        "output_tokens": "2600",
        "cached_input_tokens": "300",
        "reasoning_tokens": "700",
        "errors": "1",
        "denied": "0",
        "unpriced": "0",
    }


def test_table_output_right_aligns_numbers_and_ends_with_totals(loaded: Store) -> None:
    text = render_table(report(loaded, query(group_by="tenant,model")))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("tenant"))
    total = next(line for line in lines if line.startswith("TOTAL"))
    acme = next(line for line in lines if line.startswith("acme    gpt-4o "))
    assert header.index("spend_usd") + len("spend_usd") == acme.index("0.537500") + len("0.537500")
    assert total.split()[1:3] == ["0.537950", "8"]
    assert acme.split()[-9:] == ["0.537500", "4", "13,000", "2,600", "300", "700", "1", "0", "0"]
    assert "1 request(s) have no known price" in text


def test_an_empty_range_reports_zero_totals(loaded: Store) -> None:
    result = report(loaded, query(since="2020-01-01", until="2020-01-02"))
    assert result.rows == []
    assert (result.totals.requests, result.totals.spend_usd) == (0, Decimal(0))


def test_an_unknown_group_column_is_refused_before_any_sql() -> None:
    refused = parse_query(group_by="tenant; DROP TABLE usage_records")
    assert isinstance(refused, QueryError)
    assert "cannot group by" in refused.message


def test_an_unreadable_time_is_refused() -> None:
    refused = parse_query(since="last tuesday")
    assert isinstance(refused, QueryError)
    assert "last tuesday" in refused.message


def test_relative_times_count_back_from_now() -> None:
    now = 10 * 86_400_000
    assert parse_time("90m", now=now) == now - 90 * 60_000
    assert parse_time("7d", now=now) == now - 7 * 86_400_000


def test_the_default_range_is_the_last_day() -> None:
    parsed = parse_query(now=5 * 86_400_000)
    assert isinstance(parsed, ReportQuery)
    assert (parsed.since_ms, parsed.until_ms) == (4 * 86_400_000, 5 * 86_400_000)
    assert parsed.group_by == ("tenant", "app", "endpoint", "model")


def test_an_iso_time_with_an_offset_is_read_as_that_instant() -> None:
    assert parse_time("2025-03-01T02:00+02:00", now=0) == parse_time("2025-03-01", now=0)
