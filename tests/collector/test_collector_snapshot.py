"""The analysts' snapshot: Parquet per day and a catalog readable while the collector writes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb

from collector.record import UsageRecord
from collector.retention import run_retention
from collector.schema import VIEW_NAMES
from collector.snapshot import CATALOG, VIEWS_SQL, Snapshot
from collector.store import Store

MakeRecord = Callable[..., UsageRecord]


def test_the_catalog_answers_like_the_store_while_the_store_is_open(
    store: Store, known: list[UsageRecord], tmp_path: Path
) -> None:
    store.insert(known)
    Snapshot(store, tmp_path / "snap").run()
    with store.cursor() as cur:
        expected = cur.execute("SELECT * FROM spend_daily ORDER BY ALL").fetchall()
    # Another process opens the catalog read-only while this one holds the database.
    script = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print(c.execute('SELECT * FROM spend_daily ORDER BY ALL').fetchall())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "snap" / CATALOG)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == repr(expected)


def test_every_view_is_in_the_catalog_and_in_views_sql(
    store: Store, known: list[UsageRecord], tmp_path: Path
) -> None:
    store.insert(known)
    Snapshot(store, tmp_path / "snap").run()
    with duckdb.connect(str(tmp_path / "snap" / CATALOG), read_only=True) as conn:
        names = {r[0] for r in conn.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert set(VIEW_NAMES) <= names
    with duckdb.connect() as conn:
        conn.execute(f"SET file_search_path = '{tmp_path / 'snap'}'")
        conn.execute((tmp_path / "snap" / VIEWS_SQL).read_text())
        total = conn.execute("SELECT sum(requests) FROM usage_facts").fetchone()
    assert total == (9,)


def test_only_days_that_received_rows_are_written_again(
    store: Store, known: list[UsageRecord], make_record: MakeRecord, tmp_path: Path
) -> None:
    snapshot = Snapshot(store, tmp_path / "snap")
    store.insert(known)
    first = snapshot.run()
    assert first.days_written == ["2025-02-22", "2025-03-01", "2025-03-02"]
    assert snapshot.run().days_written == []
    store.insert([make_record(70, ts_ms=known[7].ts_ms + 1)])
    assert snapshot.run().days_written == ["2025-03-02"]


def test_a_restarted_collector_rewrites_what_changed_while_it_was_away(
    store: Store, known: list[UsageRecord], make_record: MakeRecord, tmp_path: Path
) -> None:
    store.insert(known)
    Snapshot(store, tmp_path / "snap").run()
    store.insert([make_record(71, ts_ms=known[7].ts_ms + 1)])
    store.take_dirty_days()  # as if the process had died before its next snapshot
    assert Snapshot(store, tmp_path / "snap").run().days_written == ["2025-03-02"]


def test_days_rolled_up_by_retention_leave_the_snapshot_but_not_its_sums(
    store: Store, known: list[UsageRecord], tmp_path: Path
) -> None:
    store.insert(known)
    snapshot = Snapshot(store, tmp_path / "snap")
    snapshot.run()
    run_retention(store, 1, now_ms=1_740_873_600_000 + 86_400_000)
    assert snapshot.run().days_removed == ["2025-02-22", "2025-03-01"]
    with duckdb.connect(str(tmp_path / "snap" / CATALOG), read_only=True) as conn:
        spend = conn.execute("SELECT sum(spend_usd) FROM spend_daily").fetchone()
        raw = conn.execute("SELECT count(*) FROM usage").fetchone()
    assert spend == (Decimal("99.53795"),)
    assert raw == (1,)
