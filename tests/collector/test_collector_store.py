"""The DuckDB store: schema from the contract, idempotent bulk insert, exact money, views."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from collector.columns import reject_reason
from collector.record import UsageRecord
from collector.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError

MakeRecord = Callable[..., UsageRecord]


def test_every_contract_field_is_a_column(store: Store) -> None:
    with store.cursor() as cur:
        rows = cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'usage_records'"
        ).fetchall()
    columns = {name for (name,) in rows}
    assert set(UsageRecord.__struct_fields__) <= columns
    assert "ts" in columns


def test_insert_returns_new_rows_and_ignores_a_repeated_batch(
    store: Store, known: list[UsageRecord]
) -> None:
    assert store.insert(known) == len(known)
    assert store.insert(known) == 0
    assert store.count() == len(known)


def test_duplicates_inside_one_batch_are_stored_once(store: Store, make_record: MakeRecord) -> None:
    batch = [make_record(1), make_record(2), make_record(1)]
    assert store.insert(batch) == 2
    assert store.count() == 2


def test_costs_sum_exactly(store: Store, make_record: MakeRecord) -> None:
    store.insert([make_record(i, cost_usd=Decimal("0.1")) for i in range(3)])
    with store.cursor() as cur:
        row = cur.execute("SELECT sum(cost_usd) FROM usage_records").fetchone()
    assert row is not None
    assert row[0] == Decimal("0.3")


def test_null_cost_stays_null_and_marks_the_row_unpriced(
    store: Store, make_record: MakeRecord
) -> None:
    store.insert([make_record(1, cost_usd=None), make_record(2, cost_usd=Decimal(0))])
    with store.cursor() as cur:
        rows = cur.execute("SELECT id, cost_usd, unpriced FROM usage ORDER BY id").fetchall()
    assert rows == [("req-00001", None, True), ("req-00002", Decimal(0), False)]


def test_costs_finer_than_a_picodollar_round_half_even(
    store: Store, make_record: MakeRecord
) -> None:
    store.insert([make_record(1, cost_usd=Decimal("0.0000000000125"))])
    with store.cursor() as cur:
        row = cur.execute("SELECT cost_usd FROM usage_records").fetchone()
    assert row == (Decimal("0.000000000012"),)


def test_a_non_finite_cost_is_named_as_unstorable(make_record: MakeRecord) -> None:
    reason = reject_reason(make_record(1, cost_usd=Decimal("NaN")))
    assert reason is not None
    assert "NaN" in reason


def test_ts_is_the_utc_instant_of_ts_ms(store: Store, make_record: MakeRecord) -> None:
    store.insert([make_record(1, ts_ms=1_700_000_000_123)])
    with store.cursor() as cur:
        row = cur.execute("SELECT epoch_ms(ts), day, hour::VARCHAR FROM usage").fetchone()
    assert row is not None
    assert row[0] == 1_700_000_000_123
    assert str(row[1]) == "2023-11-14"
    assert row[2] == "2023-11-14 22:00:00"


def test_policy_decisions_view_lists_each_decision(store: Store, known: list[UsageRecord]) -> None:
    store.insert(known)
    with store.cursor() as cur:
        rows = cur.execute(
            "SELECT id, stage, rule, mode, decision FROM policy_decisions ORDER BY id"
        ).fetchall()
    assert rows == [
        ("req-00002", "caps", "default", "warn", "would_deny"),
        ("req-00007", "models", "batch-cheap", "enforce", "denied"),
    ]


def test_spend_daily_view_sums_per_day_and_model(store: Store, known: list[UsageRecord]) -> None:
    store.insert(known)
    with store.cursor() as cur:
        rows = cur.execute(
            "SELECT day::VARCHAR, spend_usd, requests FROM spend_daily "
            "WHERE tenant = 'acme' AND model = 'gpt-4o' ORDER BY day"
        ).fetchall()
    assert rows == [
        ("2025-02-22", Decimal(99), 1),
        ("2025-03-01", Decimal("0.0375"), 3),
        ("2025-03-02", Decimal("0.5"), 1),
    ]


def test_reopening_applies_no_migration_twice(db_path: Path, known: list[UsageRecord]) -> None:
    with Store.open(db_path) as first:
        first.insert(known)
    with Store.open(db_path) as second:
        assert second.schema_version() == SCHEMA_VERSION
        assert second.count() == len(known)
        with second.cursor() as cur:
            row = cur.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert row == (len(MIGRATIONS),)


def test_a_database_from_a_newer_schema_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    with duckdb.connect(str(db_path)) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    with pytest.raises(StoreError, match="newer"):
        Store.open(db_path)


def test_a_read_only_store_reads_while_refusing_writes(
    db_path: Path, known: list[UsageRecord]
) -> None:
    with Store.open(db_path) as writer:
        writer.insert(known)
    with Store.open(db_path, read_only=True) as reader:
        assert reader.count() == len(known)
        with pytest.raises(duckdb.Error):
            reader.insert(known[:1])


def test_a_contract_field_missing_from_an_older_database_is_added_with_its_default(
    db_path: Path, make_record: MakeRecord
) -> None:
    with Store.open(db_path) as store:
        store.insert([make_record(1, cache="hit")])
    with duckdb.connect(str(db_path)) as conn:
        conn.execute("ALTER TABLE usage_records DROP COLUMN cache")
    with Store.open(db_path) as store:
        store.insert([make_record(2, cache="hit")])
        with store.cursor() as cur:
            rows = cur.execute("SELECT id, cache FROM usage ORDER BY id").fetchall()
    assert rows == [("req-00001", "off"), ("req-00002", "hit")]
