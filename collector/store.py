"""The DuckDB usage store: schema and migrations, idempotent bulk insert, the FinOps views.

One process writes a DuckDB file; inside it, readers take their own cursor and see a
consistent snapshot (MVCC) while the writer goes on inserting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import duckdb
import msgspec
import pyarrow as pa

from collector.columns import ALL_COLUMNS, to_arrow
from collector.record import UsageRecord

TABLE: Final = "usage_records"


class StoreError(Exception):
    """The database cannot be used by this version of the collector."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class Migration(msgspec.Struct, frozen=True):
    """One numbered step; applied once, in order, inside a transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


def _create_table() -> str:
    columns = ",\n    ".join(c.ddl() for c in ALL_COLUMNS)
    return f"CREATE TABLE {TABLE} (\n    {columns},\n    PRIMARY KEY (id)\n)"


# Columns for fields added to the contract later are added by `_add_new_columns` (the contract
# only ever adds fields with defaults); these steps are for what that cannot do.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "usage_records, one row per request", (_create_table(),)),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version

# Views are recreated on every writable open, so they always match the code that reads them.
# The model a request is billed under is the catalogue name after alias resolution; the served
# name (often a dated snapshot) stays available as model_served.
VIEWS: Final[tuple[str, ...]] = (
    f"""CREATE OR REPLACE VIEW usage AS
    SELECT *,
        CAST(epoch_ms(ts_ms) AS DATE) AS day,
        date_trunc('hour', epoch_ms(ts_ms)) AS hour,
        COALESCE(NULLIF(model_resolved, ''), NULLIF(model_requested, ''), model_served) AS model,
        cost_usd IS NULL AS unpriced
    FROM {TABLE}""",
    """CREATE OR REPLACE VIEW spend_daily AS
    SELECT day, tenant, app, endpoint, model, provider, environment,
        COALESCE(SUM(cost_usd), 0) AS spend_usd,
        COUNT(*) AS requests,
        SUM(input_tokens) AS input_tokens,
        SUM(output_tokens) AS output_tokens,
        SUM(cached_input_tokens) AS cached_input_tokens,
        SUM(reasoning_tokens) AS reasoning_tokens,
        COUNT(*) FILTER (WHERE outcome = 'error') AS errors,
        COUNT(*) FILTER (WHERE outcome = 'denied') AS denied,
        COUNT(*) FILTER (WHERE unpriced) AS unpriced
    FROM usage
    GROUP BY ALL""",
    """CREATE OR REPLACE VIEW policy_decisions AS
    SELECT id, ts_ms, day, hour, tenant, app, endpoint, model, "user", provider, environment,
        prompt_version, namespace, deployment, data_mode, outcome AS request_outcome,
        d.stage AS stage, d.rule AS rule, d.mode AS mode, d.outcome AS decision, d.reason AS reason
    FROM (SELECT *, UNNEST(decisions) AS d FROM usage)""",
)

_INSERT: Final = f"INSERT OR IGNORE INTO {TABLE} BY NAME SELECT * FROM _incoming"


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

    @classmethod
    def open(cls, path: Path | str, *, read_only: bool = False) -> Store:
        """Open (and, when writable, create or migrate) the store at `path`.

        Raises StoreError when the file was written by a newer schema, and duckdb.IOException
        when another process holds the file.
        """
        path = Path(path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = duckdb.connect(str(path), read_only=read_only)
        store = cls(conn, path, read_only=read_only)
        try:
            if read_only:
                store._check_readable()
            else:
                store._migrate()
        except BaseException:
            conn.close()
            raise
        return store

    def insert(self, records: Sequence[UsageRecord]) -> int:
        """Insert a batch in one transaction; returns rows newly stored (duplicates ignored)."""
        return self.insert_arrow(to_arrow(records)) if records else 0

    def insert_arrow(self, table: pa.Table) -> int:
        """`insert` for a batch already converted by `columns.to_arrow`."""
        if table.num_rows == 0:
            return 0
        conn = self._conn
        conn.begin()
        try:
            conn.register("_incoming", table)
            row = conn.execute(_INSERT).fetchone()
            conn.unregister("_incoming")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return int(row[0]) if row else 0

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
        for view in VIEWS:
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
