"""The DuckDB usage store: migrations, exactly-once bulk insert, and what readers need.

One process writes a DuckDB file; inside it, readers take their own cursor and see a
consistent snapshot (MVCC) while the writer goes on inserting.

Exactly once without an index. A primary key on the id made every insert probe an ART index
that must sit in memory (about 25k rows/s at 3M rows, and a day at 100k rows/s would not fit).
Instead each batch is inserted with an anti-join against the rows already stored with the
same `(ts_ms, id)`, restricted to the batch's range of `end_ms`. A copy of a record (a NATS
redelivery, a sidecar spool replay) is the same bytes, so it carries the same ts_ms, id and
end_ms; records arrive in about end_ms order, so the range check reads only the few row groups
written lately (DuckDB skips the rest by their min/max), whatever the table's size. A batch
whose end_ms values are far apart (a replay of an old spool beside fresh records) is split into
bands, each checked against its own range. The writer is one thread, so no two inserts race.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from collector.columns import ALL_COLUMNS, to_arrow
from collector.record import UsageRecord
from collector.schema import MIGRATIONS, SCHEMA_VERSION, STATE, TABLE, views

__all__ = ["TABLE", "Store", "StoreError", "bands"]

DAY_MS: Final = 86_400_000
# Records further apart than this in end_ms are checked as separate bands.
BAND_GAP_MS: Final = 60_000
# A record and its copy have the same end_ms; the margin only guards float parsing paths.
_SLACK_MS: Final = 1_000
_DEDUP: Final = f"""NOT EXISTS (
        SELECT 1 FROM {TABLE} r
        WHERE r.end_ms BETWEEN $lo - {_SLACK_MS} AND $hi + {_SLACK_MS}
          AND r.ts_ms = i.ts_ms AND r.id = i.id)"""
_INSERT: Final = (
    f"INSERT INTO {TABLE} BY NAME SELECT * FROM _incoming i "
    f"WHERE i.end_ms BETWEEN $lo AND $hi AND {_DEDUP}"
)
# Only when the batch itself holds a record twice; the common batch skips the window.
_INSERT_DISTINCT: Final = (
    f"INSERT INTO {TABLE} BY NAME SELECT DISTINCT ON (i.id) * FROM _incoming i "
    f"WHERE i.end_ms BETWEEN $lo AND $hi AND {_DEDUP}"
)
RAW_SINCE_KEY: Final = "raw_since_ms"
# WAL size that triggers a checkpoint. DuckDB's 16 MB default rewrote the open row group many
# times over as 10k-record batches arrived (ingest 124k rows/s vs 181k at 256 MB, checkpoints
# included); a larger value spreads that work over more rows at the cost of a longer replay
# of the WAL after a crash.
CHECKPOINT_MB: Final = 256


class StoreError(Exception):
    """The database cannot be used by this version of the collector."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def bands(end_ms: np.ndarray, *, gap_ms: int = BAND_GAP_MS) -> list[tuple[int, int]]:
    """[lo, hi] ranges covering every value, split wherever two values are over `gap_ms` apart."""
    values = np.sort(end_ms)
    cuts = np.flatnonzero(np.diff(values) > gap_ms)
    starts = [0, *(cuts + 1).tolist()]
    ends = [*cuts.tolist(), len(values) - 1]
    return [(int(values[a]), int(values[b])) for a, b in zip(starts, ends, strict=True)]


class Store:
    """A DuckDB file holding usage_records; `open` it, `insert` batches, read with `cursor`."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._conn = conn  # the writer's; readers never touch it
        # Readers branch off their own root, so a report thread never calls into the connection
        # the writer thread is using; the lock covers readers asking at the same time.
        self._readers = conn.cursor()
        self._cursor_lock = threading.Lock()
        # Raw records older than this have been rolled up and deleted (retention.py); 0: none.
        self.raw_since_ms = 0
        # UTC day numbers (unix ms // DAY_MS) that received rows since `take_dirty_days`.
        self._dirty: set[int] = set()
        self._dirty_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        read_only: bool = False,
        threads: int | None = None,
        checkpoint_mb: int = CHECKPOINT_MB,
    ) -> Store:
        """Open (and, when writable, create or migrate) the store at `path`.

        Raises StoreError when the file was written by a newer schema, and duckdb.IOException
        when another process holds the file.
        """
        path = Path(path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = (
            {"threads": threads} if threads else {}
        )
        conn = duckdb.connect(str(path), read_only=read_only, config=config)
        if not read_only:
            conn.execute(f"SET checkpoint_threshold = '{int(checkpoint_mb)}MB'")
        store = cls(conn, path, read_only=read_only)
        try:
            if read_only:
                store._check_readable()
            else:
                store._migrate()
            store.raw_since_ms = store.state(RAW_SINCE_KEY)
        except BaseException:
            conn.close()
            raise
        return store

    def insert(self, records: Sequence[UsageRecord]) -> int:
        """Insert a batch in one transaction; returns rows newly stored (duplicates ignored)."""
        return self.insert_arrow(to_arrow(records)) if records else 0

    def insert_arrow(self, table: pa.Table) -> int:
        """`insert` for a batch already in the table's Arrow schema (`columns.to_arrow`)."""
        if table.num_rows == 0:
            return 0
        ends = table.column("end_ms").to_numpy()
        twice = pc.count_distinct(table.column("id")).as_py() < table.num_rows
        sql = _INSERT_DISTINCT if twice else _INSERT
        conn = self._conn
        inserted = 0
        conn.begin()
        try:
            conn.register("_incoming", table)
            for lo, hi in bands(ends):
                row = conn.execute(sql, {"lo": lo, "hi": hi}).fetchone()
                inserted += int(row[0]) if row else 0
            conn.unregister("_incoming")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        if inserted:
            days = pc.unique(pc.divide(table.column("ts_ms"), DAY_MS)).to_pylist()
            with self._dirty_lock:
                self._dirty.update(days)
        return inserted

    def take_dirty_days(self) -> set[int]:
        """The UTC days (unix ms // DAY_MS) written to since the last call."""
        with self._dirty_lock:
            days, self._dirty = self._dirty, set()
        return days

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database for one reader (close it when done)."""
        with self._cursor_lock:
            return self._readers.cursor()

    def count(self) -> int:
        with self.cursor() as cur:
            row = cur.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return int(row[0]) if row else 0

    def schema_version(self) -> int:
        with self.cursor() as cur:
            return _applied_version(cur)

    def state(self, key: str) -> int:
        """A value the collector keeps in its own table (0 when never set)."""
        with self.cursor() as cur:
            tables = cur.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_name = ?", [STATE]
            ).fetchall()
            if not tables:
                return 0
            row = cur.execute(f"SELECT value FROM {STATE} WHERE key = ?", [key]).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, applied_ms BIGINT NOT NULL)"
        )
        applied = _applied_version(conn)
        if applied > SCHEMA_VERSION:
            raise StoreError(
                self.path,
                f"schema version {applied} is newer than this collector's {SCHEMA_VERSION}",
            )
        for step in MIGRATIONS:
            if step.version <= applied:
                continue
            conn.begin()
            try:
                for statement in step.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    [step.version, step.description, int(time.time() * 1000)],
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        self._add_new_columns()
        for view in views():
            conn.execute(view)

    def _add_new_columns(self) -> None:
        rows = self._conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [TABLE]
        ).fetchall()
        present = {name for (name,) in rows}
        for column in ALL_COLUMNS:
            if column.name not in present:
                self._conn.execute(
                    f"ALTER TABLE {TABLE} ADD COLUMN {column.ddl(constraints=False)}"
                )

    def _check_readable(self) -> None:
        tables = self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name = ?", ["usage"]
        ).fetchall()
        if not tables:
            raise StoreError(self.path, "not a usage store (no usage view)")


def _applied_version(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute("SELECT COALESCE(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0
