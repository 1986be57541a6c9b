"""Parquet export of raw usage records: one file per UTC day under `day=YYYY-MM-DD/` folders.

The Hive-style layout is what DuckDB, Spark, Athena and pandas read as one partitioned table
(`read_parquet('out/*/*.parquet', hive_partitioning = true)`). A day is the unit of work: it
is written to a temporary folder and swapped in whole, so exporting a day again replaces it
and a reader never sees half a day. Ranges are widened to whole UTC days for the same reason.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

import duckdb
import msgspec

from collector.store import TABLE

DAY_MS: Final = 86_400_000
FILE_NAME: Final = "usage-records.parquet"
_DAY_SQL: Final = "strftime(CAST(epoch_ms(ts_ms) AS DATE), '%Y-%m-%d')"
_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ExportDay(msgspec.Struct, frozen=True):
    day: str  # YYYY-MM-DD, UTC
    rows: int


class ExportPlan(msgspec.Struct, frozen=True):
    """The days holding data in a range, widened to whole UTC days."""

    since_ms: int
    until_ms: int
    days: list[ExportDay]


plan_decoder = msgspec.json.Decoder(ExportPlan)


def whole_days(since_ms: int, until_ms: int) -> tuple[int, int]:
    """[since, until) widened to UTC midnights."""
    start = since_ms // DAY_MS * DAY_MS
    end = -(-until_ms // DAY_MS) * DAY_MS
    return start, end


def plan_export(conn: duckdb.DuckDBPyConnection, since_ms: int, until_ms: int) -> ExportPlan:
    start, end = whole_days(since_ms, until_ms)
    rows = conn.execute(
        f"SELECT {_DAY_SQL} AS day, count(*) FROM {TABLE} "
        "WHERE ts_ms >= ? AND ts_ms < ? GROUP BY day ORDER BY day",
        [start, end],
    ).fetchall()
    return ExportPlan(start, end, [ExportDay(day, int(n)) for day, n in rows])


def parse_day(text: str) -> str | None:
    """The day as YYYY-MM-DD, or None when `text` is not a calendar date in that form."""
    if not _DAY.match(text):
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def write_day(conn: duckdb.DuckDBPyConnection, day: str, path: Path) -> None:
    """Write one UTC day's raw records, oldest first, to the Parquet file `path`."""
    start = (datetime.fromisoformat(day).replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
    relation = conn.sql(
        f"SELECT * FROM {TABLE} WHERE ts_ms >= $start AND ts_ms < $end ORDER BY ts_ms, id",
        params={"start": start, "end": start + DAY_MS},
    )
    relation.write_parquet(str(path), compression="zstd")


def install_day(out_dir: Path, day: str, source: Path) -> Path:
    """Move a finished day file into `out_dir/day=<day>/`, replacing an earlier export."""
    target = out_dir / f"day={day}"
    staging = Path(tempfile.mkdtemp(prefix=f".day={day}.", dir=out_dir))
    shutil.move(str(source), staging / FILE_NAME)
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".old-day={day}.", dir=out_dir))
        target.replace(retired / "day")
        staging.replace(target)
        shutil.rmtree(retired)
    else:
        staging.replace(target)
    return target / FILE_NAME


def export_parquet(
    conn: duckdb.DuckDBPyConnection, out_dir: Path, since_ms: int, until_ms: int
) -> ExportPlan:
    """Export every day with data in the range into `out_dir`; returns what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_export(conn, since_ms, until_ms)
    for entry in plan.days:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export.") as scratch:
            path = Path(scratch) / FILE_NAME
            write_day(conn, entry.day, path)
            install_day(out_dir, entry.day, path)
    return plan
