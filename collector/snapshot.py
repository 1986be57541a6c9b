"""The analysts' copy: Parquet per UTC day plus a read-only DuckDB catalog of the same views.

While the collector runs it holds its DuckDB file and no other process may open it. So, every
`interval`, the collector writes what changed into a folder any tool can read at any time:

    <dir>/usage/day=YYYY-MM-DD/usage-records.parquet   raw records of one day (rewritten
                                                       only when the day received rows)
    <dir>/usage/schema.parquet                         no rows; keeps the glob non-empty
    <dir>/usage_daily.parquet                          rollups kept past the raw retention
    <dir>/list_prices.parquet                          list prices (FOCUS ListCost)
    <dir>/catalog.duckdb                               the views over those files
    <dir>/views.sql                                    the same views, paths relative to <dir>
    <dir>/manifest.json                                rows per day file

Every file is written beside its final name and renamed over it, so a reader sees the old
file or the new one, never half of one; a reader holding the old catalog open keeps it.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import duckdb
import msgspec
import pyarrow.parquet as pq

from collector.columns import SCHEMA
from collector.export import FILE_NAME, write_day
from collector.schema import DAILY, PRICES, TABLE, views
from collector.store import DAY_MS, Store

CATALOG: Final = "catalog.duckdb"
VIEWS_SQL: Final = "views.sql"
MANIFEST: Final = "manifest.json"
_USAGE_GLOB: Final = "usage/**/*.parquet"


class Manifest(msgspec.Struct):
    days: dict[str, int] = {}  # YYYY-MM-DD -> rows in its file
    written_ms: int = 0


class SnapshotRun(msgspec.Struct, frozen=True):
    days_written: list[str]
    days_removed: list[str]


def _day(number: int) -> str:
    return datetime.fromtimestamp(number * DAY_MS / 1000, tz=UTC).strftime("%Y-%m-%d")


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def source_relations(root: str) -> dict[str, str]:
    """The view placeholders as Parquet reads under `root` ('' for paths relative to it)."""
    prefix = f"{root}/" if root else ""
    return {
        "raw": f"read_parquet('{prefix}{_USAGE_GLOB}', union_by_name = true, "
        "hive_partitioning = false)",
        "daily": f"read_parquet('{prefix}{DAILY}.parquet')",
        "prices": f"read_parquet('{prefix}{PRICES}.parquet')",
    }


class Snapshot:
    """Keeps `<dir>` in step with the store; `run` is blocking (call it on a worker thread)."""

    def __init__(self, store: Store, directory: Path) -> None:
        self.store = store
        self.dir = directory.resolve()
        self._reconciled = False

    def run(self) -> SnapshotRun:
        (self.dir / "usage").mkdir(parents=True, exist_ok=True)
        manifest = self._manifest()
        with self.store.cursor() as cur:
            dirty = self.store.take_dirty_days()
            if self._reconciled:
                counts = self._counts(cur, dirty)
                wanted = set(counts)
                cutoff = _day(self.store.raw_since_ms // DAY_MS)
                gone = {day for day in manifest.days if day < cutoff}
            else:
                # After a restart anything may have changed: compare every day's rows.
                counts = self._counts(cur, None)
                wanted = {day for day, rows in counts.items() if manifest.days.get(day) != rows}
                gone = set(manifest.days) - set(counts)
                self._reconciled = True
            written = sorted(wanted)
            for day in written:
                self._write_day(cur, day)
                manifest.days[day] = counts[day]
            removed = sorted(gone)
            for day in removed:  # rolled up by retention: its rows now live in the rollups
                shutil.rmtree(self.dir / "usage" / f"day={day}", ignore_errors=True)
                manifest.days.pop(day, None)
            self._write_table(cur, f"SELECT * FROM {DAILY}", self.dir / f"{DAILY}.parquet")
            self._write_table(cur, f"SELECT * FROM {PRICES}", self.dir / f"{PRICES}.parquet")
        schema_file = self.dir / "usage" / "schema.parquet"
        if not schema_file.exists():
            pq.write_table(SCHEMA.empty_table(), schema_file)
        self._write_catalog()
        manifest.written_ms = time.time_ns() // 1_000_000
        tmp = self.dir / f".{MANIFEST}.tmp"
        tmp.write_bytes(msgspec.json.encode(manifest))
        _replace(tmp, self.dir / MANIFEST)
        return SnapshotRun(days_written=written, days_removed=removed)

    def _manifest(self) -> Manifest:
        try:
            return msgspec.json.decode((self.dir / MANIFEST).read_bytes(), type=Manifest)
        except (OSError, msgspec.DecodeError):
            return Manifest()

    @staticmethod
    def _counts(cur: duckdb.DuckDBPyConnection, days: set[int] | None) -> dict[str, int]:
        """Rows per UTC day: of `days` only, or of every day when None."""
        if days is not None and not days:
            return {}
        where = "" if days is None else f"WHERE ts_ms // {DAY_MS} IN (SELECT unnest($days))"
        params = {} if days is None else {"days": sorted(days)}
        rows = cur.execute(
            f"SELECT ts_ms // {DAY_MS} AS d, count(*) FROM {TABLE} {where} GROUP BY d", params
        ).fetchall()
        return {_day(int(d)): int(n) for d, n in rows}

    def _write_day(self, cur: duckdb.DuckDBPyConnection, day: str) -> None:
        folder = self.dir / "usage" / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{FILE_NAME}.tmp"
        write_day(cur, day, tmp)
        _replace(tmp, folder / FILE_NAME)

    @staticmethod
    def _write_table(cur: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        cur.sql(sql).write_parquet(str(tmp), compression="zstd")
        _replace(tmp, path)

    def _write_catalog(self) -> None:
        tmp = self.dir / f".{CATALOG}.tmp"
        tmp.unlink(missing_ok=True)
        with duckdb.connect(str(tmp)) as conn:
            for statement in views(**source_relations(str(self.dir))):
                conn.execute(statement)
        _replace(tmp, self.dir / CATALOG)
        text = ";\n\n".join(views(**source_relations(""))) + ";\n"
        header = (
            "-- Sidegate usage views over the Parquet files in this folder.\n"
            "-- From this folder: duckdb -init views.sql   (or run this file in any session)\n\n"
        )
        tmp_sql = self.dir / f".{VIEWS_SQL}.tmp"
        tmp_sql.write_text(header + text)
        _replace(tmp_sql, self.dir / VIEWS_SQL)
