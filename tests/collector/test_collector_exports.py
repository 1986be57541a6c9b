"""The policy decisions report and the Parquet export, over the known data set."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from collector.decisions import build_decisions, decisions_decoder, render_decisions
from collector.export import export_parquet, parse_day
from collector.record import UsageRecord
from collector.report import ReportQuery, parse_query
from collector.store import Store


def march(group_by: str = "tenant") -> ReportQuery:
    parsed = parse_query(since="2025-03-01", until="2025-03-03", group_by=group_by)
    assert isinstance(parsed, ReportQuery)
    return parsed


@pytest.fixture
def loaded(store: Store, known: list[UsageRecord]) -> Store:
    store.insert(known)
    return store


def test_decisions_list_denials_and_would_denials_by_stage_rule_and_mode(loaded: Store) -> None:
    with loaded.cursor() as cur:
        result = build_decisions(cur, march())
    got = [
        (r.group["tenant"], r.stage, r.rule, r.mode, r.decision, r.requests) for r in result.rows
    ]
    assert sorted(got) == [
        ("acme", "caps", "default", "warn", "would_deny", 1),
        ("globex", "models", "batch-cheap", "enforce", "denied", 1),
    ]
    assert result.total_requests == 2


def test_decisions_render_as_a_table_with_a_total_and_as_json(loaded: Store) -> None:
    with loaded.cursor() as cur:
        result = build_decisions(cur, march())
    table = render_decisions(result, "table").splitlines()
    assert table[2].split() == ["tenant", "stage", "rule", "mode", "decision", "requests"]
    assert table[-1].split() == ["TOTAL", "2"]
    assert decisions_decoder.decode(render_decisions(result, "json").encode()) == result


def test_parquet_export_writes_one_file_per_utc_day(loaded: Store, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with loaded.cursor() as cur:
        plan = export_parquet(cur, out, march().since_ms, march().until_ms)
    assert [(d.day, d.rows) for d in plan.days] == [("2025-03-01", 7), ("2025-03-02", 1)]
    assert sorted(p.name for p in out.iterdir()) == ["day=2025-03-01", "day=2025-03-02"]
    rows = duckdb.execute(
        f"SELECT day::VARCHAR, count(*), sum(cost_usd) FROM read_parquet('{out}/*/*.parquet', "
        "hive_partitioning = true) GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert rows == [("2025-03-01", 7, Decimal("0.03795")), ("2025-03-02", 1, Decimal("0.5"))]


def test_exporting_a_day_again_replaces_it_and_leaves_no_scratch(
    loaded: Store, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    q = march()
    with loaded.cursor() as cur:
        export_parquet(cur, out, q.since_ms, q.until_ms)
        export_parquet(cur, out, q.since_ms, q.until_ms)
    assert sorted(p.name for p in out.iterdir()) == ["day=2025-03-01", "day=2025-03-02"]
    count = duckdb.execute(f"SELECT count(*) FROM read_parquet('{out}/*/*.parquet')").fetchall()
    assert count == [(8,)]


def test_an_export_range_is_widened_to_whole_days(loaded: Store, tmp_path: Path) -> None:
    parsed = parse_query(since="2025-03-01T12:00Z", until="2025-03-01T13:00Z")
    assert isinstance(parsed, ReportQuery)
    with loaded.cursor() as cur:
        plan = export_parquet(cur, tmp_path / "out", parsed.since_ms, parsed.until_ms)
    assert [(d.day, d.rows) for d in plan.days] == [("2025-03-01", 7)]


def test_a_day_must_be_a_calendar_date() -> None:
    assert parse_day("2025-03-01") == "2025-03-01"
    assert parse_day("2025-02-30") is None
    assert parse_day("2025-03-01' OR 1=1 --") is None
