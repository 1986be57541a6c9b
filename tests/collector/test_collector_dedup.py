"""Exactly-once storage without an index: the banded anti-join, and the migration to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np

from collector.record import UsageRecord
from collector.store import SCHEMA_VERSION, Store, bands

MakeRecord = Callable[..., UsageRecord]
HOUR_MS = 3_600_000


def test_bands_split_where_end_times_are_far_apart() -> None:
    ends = np.array([100_000, 5, 100_500, 300_000, 99_000], dtype=np.int64)
    assert bands(ends) == [(5, 5), (99_000, 100_500), (300_000, 300_000)]


def test_a_copy_replayed_hours_later_beside_fresh_records_is_stored_once(
    store: Store, make_record: MakeRecord
) -> None:
    old = [make_record(i, ts_ms=1_000_000 + i) for i in range(3)]
    assert store.insert(old) == 3
    fresh = [make_record(100 + i, ts_ms=1_000_000 + 5 * HOUR_MS + i) for i in range(3)]
    assert store.insert([*fresh, old[1], *old]) == 3  # one batch, two bands, four copies
    assert store.count() == 6


def test_the_same_id_with_another_request_time_is_another_record(
    store: Store, make_record: MakeRecord
) -> None:
    # Copies are byte-identical; a record id is checked together with its ts_ms.
    store.insert([make_record(1, ts_ms=1_000)])
    assert store.insert([make_record(1, ts_ms=1_000), make_record(1, ts_ms=9 * HOUR_MS)]) == 1


def test_a_copy_is_found_among_many_earlier_batches(store: Store, make_record: MakeRecord) -> None:
    for batch in range(20):
        store.insert([make_record(batch * 100 + i, ts_ms=batch * 60_000 + i) for i in range(100)])
    again = [make_record(n * 100 + 7, ts_ms=n * 60_000 + 7) for n in (0, 9, 19)]
    assert store.insert(again) == 0
    assert store.count() == 2_000


def test_a_version_1_database_with_the_id_index_is_migrated_with_its_rows(
    tmp_path: Path, make_record: MakeRecord
) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE usage_records (id VARCHAR NOT NULL, ts_ms BIGINT NOT NULL, "
            "tenant VARCHAR NOT NULL DEFAULT '', latency_ms DOUBLE NOT NULL DEFAULT 0.0, "
            "ts TIMESTAMPTZ NOT NULL DEFAULT 'epoch'::TIMESTAMPTZ, PRIMARY KEY (id))"
        )
        conn.execute("INSERT INTO usage_records (id, ts_ms, latency_ms) VALUES ('a', 1000, 2.5)")
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
            "description VARCHAR NOT NULL, applied_ms BIGINT NOT NULL)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'usage_records', 0)")
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        with store.cursor() as cur:
            assert cur.execute("SELECT id, end_ms FROM usage_records").fetchall() == [("a", 1003)]
        assert store.insert([make_record(1, id="a", ts_ms=1000, latency_ms=2.5)]) == 0
        assert store.insert([make_record(2)]) == 1
