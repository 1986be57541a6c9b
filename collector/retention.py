"""Retention: raw records older than a number of whole UTC days are rolled up, then deleted.

A run moves every raw record from before the cutoff (UTC midnight, `retention_days` ago) into
`usage_daily`, one row per day and key combination with additive sums, and deletes it from
`usage_records`, in one transaction. Rollup rows are facts that reports SUM, so a later run
may add more rows for a day already rolled up (a record that raced the cutoff) and nothing is
lost or counted twice. The cutoff is remembered (`raw_since_ms`): the consumer dead-letters a
record older than it, because its original may have been rolled up already and the anti-join
that keeps storage exactly-once can only see raw rows.

Reports that only add things up (usage, spend by group per day, errors by class, efficiency,
movers, FOCUS) read `usage_facts`, which joins raw records and rollups, so they reach past the
cutoff at day granularity; what needs single requests (latency percentiles, hour buckets,
policy decisions, Parquet of raw records) stops at it.
"""

from __future__ import annotations

import time

import duckdb
import msgspec
import structlog

from collector.schema import DAILY, STATE, TABLE, rollup_select
from collector.store import DAY_MS, RAW_SINCE_KEY, Store

log = structlog.get_logger("sidegate.collector")


class Expiry(msgspec.Struct, frozen=True):
    cutoff_ms: int  # raw records before this instant are now in the rollups
    rolled_up: int  # raw records folded into usage_daily by this run
    rollup_rows: int  # usage_daily rows this run added


def cutoff_ms(retention_days: int, now_ms: int) -> int:
    """UTC midnight `retention_days` days before today: whole days are kept raw."""
    return (now_ms // DAY_MS - retention_days) * DAY_MS


def expire(conn: duckdb.DuckDBPyConnection, cutoff: int) -> Expiry:
    """Roll up and delete raw records older than `cutoff`, and remember it, atomically."""
    conn.begin()
    try:
        row = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE ts_ms < ?", [cutoff]).fetchone()
        raw = int(row[0]) if row else 0
        added = 0
        if raw:
            inserted = conn.execute(
                f"INSERT INTO {DAILY} BY NAME {rollup_select('ts_ms < $cutoff')}",
                {"cutoff": cutoff},
            ).fetchone()
            added = int(inserted[0]) if inserted else 0
            conn.execute(f"DELETE FROM {TABLE} WHERE ts_ms < ?", [cutoff])
        conn.execute(
            f"INSERT OR REPLACE INTO {STATE} VALUES (?, greatest(?, "
            f"COALESCE((SELECT value FROM {STATE} WHERE key = ?), 0)))",
            [RAW_SINCE_KEY, cutoff, RAW_SINCE_KEY],
        )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return Expiry(cutoff_ms=cutoff, rolled_up=raw, rollup_rows=added)


def run_retention(store: Store, retention_days: int, *, now_ms: int | None = None) -> Expiry:
    """One retention pass over `store` (blocking; run it on a worker thread)."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    cutoff = cutoff_ms(retention_days, now)
    # Refuse older records from now on, before the rollup reads the table: a batch already
    # past this check is rolled up by the next pass instead.
    store.raw_since_ms = max(store.raw_since_ms, cutoff)
    with store.cursor() as cur:
        result = expire(cur, cutoff)
    if result.rolled_up:
        log.info(
            "collector.retention",
            cutoff_ms=cutoff,
            rolled_up=result.rolled_up,
            rollup_rows=result.rollup_rows,
        )
    return result
