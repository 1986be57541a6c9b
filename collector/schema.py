"""The usage database's tables, numbered migrations and SQL views, as data.

The views are written against placeholders, `{raw}` (the raw records), `{daily}` (the daily
rollups) and `{prices}` (list prices), so the same text serves the collector's own DuckDB file
and the analysts' catalog over Parquet snapshots (see `snapshot.py`): the two cannot drift.
"""

from __future__ import annotations

from typing import Final

import msgspec

from collector.columns import ALL_COLUMNS, COST_PRECISION, COST_SCALE
from collector.focus import FOCUS_VIEW

TABLE: Final = "usage_records"
DAILY: Final = "usage_daily"
PRICES: Final = "list_prices"
STATE: Final = "collector_state"
MONEY: Final = f"DECIMAL({COST_PRECISION}, {COST_SCALE})"

# The columns a daily rollup keeps one row per combination of: every report group column,
# plus what the efficiency and error reports split by. `error_class` is '' for none, so the
# key never holds a NULL.
ROLLUP_KEYS: Final[tuple[str, ...]] = (
    "tenant", "app", "namespace", "endpoint", "prompt_version", "environment", "data_mode",
    "user", "model", "model_served", "provider", "provider_kind", "deployment", "operation",
    "outcome", "error_class", "token_source", "cache",
)  # fmt: skip

# (rollup column, SQL type, aggregate over the `usage` view)
ROLLUP_SUMS: Final[tuple[tuple[str, str, str], ...]] = (
    ("requests", "BIGINT", "COUNT(*)"),
    ("spend_usd", MONEY, "COALESCE(SUM(cost_usd), 0)"),
    ("unpriced", "BIGINT", "COUNT(*) FILTER (WHERE cost_usd IS NULL)"),
    ("input_tokens", "BIGINT", "SUM(input_tokens)"),
    ("output_tokens", "BIGINT", "SUM(output_tokens)"),
    ("cached_input_tokens", "BIGINT", "SUM(cached_input_tokens)"),
    ("cache_write_tokens", "BIGINT", "SUM(cache_write_tokens)"),
    ("reasoning_tokens", "BIGINT", "SUM(reasoning_tokens)"),
    ("errors", "BIGINT", "COUNT(*) FILTER (WHERE outcome = 'error')"),
    ("denied", "BIGINT", "COUNT(*) FILTER (WHERE outcome = 'denied')"),
    ("attempts", "BIGINT", "SUM(attempts)"),
    ("retries", "BIGINT", "SUM(retries)"),
    ("retried_requests", "BIGINT", "COUNT(*) FILTER (WHERE retries > 0)"),
    ("retried_spend_usd", MONEY, "COALESCE(SUM(cost_usd) FILTER (WHERE retries > 0), 0)"),
    ("fallbacks", "BIGINT", "COUNT(*) FILTER (WHERE fallback_from <> '')"),
    ("latency_ms_sum", "DOUBLE", "SUM(latency_ms)"),
    ("ttft_ms_sum", "DOUBLE", "COALESCE(SUM(ttft_ms), 0)"),
    ("ttft_count", "BIGINT", "COUNT(ttft_ms)"),
)

# A raw record seen as one fact row with the rollup's additive columns.
_FACT_OF_RECORD: Final[dict[str, str]] = {
    "requests": "1",
    "spend_usd": "cost_usd",
    "unpriced": "(cost_usd IS NULL)::BIGINT",
    "errors": "(outcome = 'error')::BIGINT",
    "denied": "(outcome = 'denied')::BIGINT",
    "retried_requests": "(retries > 0)::BIGINT",
    "retried_spend_usd": "CASE WHEN retries > 0 THEN cost_usd END",
    "fallbacks": "(fallback_from <> '')::BIGINT",
    "latency_ms_sum": "latency_ms",
    "ttft_ms_sum": "COALESCE(ttft_ms, 0)",
    "ttft_count": "(ttft_ms IS NOT NULL)::BIGINT",
}


class Migration(msgspec.Struct, frozen=True):
    """One numbered step; applied once, in order, inside a transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


def create_table(name: str = TABLE) -> str:
    columns = ",\n    ".join(c.ddl() for c in ALL_COLUMNS)
    return f"CREATE TABLE {name} (\n    {columns}\n)"


def _create_daily() -> str:
    keys = [f'"{k}" VARCHAR NOT NULL' for k in ROLLUP_KEYS]
    sums = [f'"{name}" {sql_type} NOT NULL' for name, sql_type, _ in ROLLUP_SUMS]
    return f"CREATE TABLE {DAILY} (day DATE NOT NULL, {', '.join(keys + sums)})"


# Columns for fields added to the contract later are added by the store (the contract only
# ever adds fields with defaults); these steps are for what that cannot do.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "usage_records, one row per request", (create_table(),)),
    # An ART index on the id must sit in memory and made every insert probe it: ingest fell
    # to 25k rows/s at 3M rows. Dedup is now an anti-join on (end_ms, id); see store.py.
    Migration(
        2,
        "usage_records without the id index; end_ms for the dedup range",
        (
            f"ALTER TABLE {TABLE} RENAME TO {TABLE}_v1",
            create_table(),
            f"INSERT INTO {TABLE} BY NAME SELECT * FROM {TABLE}_v1",
            f"UPDATE {TABLE} SET end_ms = ts_ms + CAST(ceil(latency_ms) AS BIGINT)",
            f"DROP TABLE {TABLE}_v1",
        ),
    ),
    Migration(
        3,
        "daily rollups kept past the raw retention, and the collector's own state",
        (
            _create_daily(),
            f"CREATE TABLE {STATE} (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
            # USD per token of each class at list price (prices.py); NULL rates: unknown.
            f"CREATE TABLE {PRICES} (provider_kind VARCHAR NOT NULL, model VARCHAR NOT NULL, "
            f"input_usd {MONEY}, cached_input_usd {MONEY}, cache_write_usd {MONEY}, "
            f"output_usd {MONEY}, source VARCHAR NOT NULL, PRIMARY KEY (provider_kind, model))",
        ),
    ),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version


def rollup_select(where: str) -> str:
    """SELECT of one rollup row per day and key combination, over the `usage` view."""
    keys = ", ".join(
        "COALESCE(error_class, '') AS error_class" if k == "error_class" else f'"{k}"'
        for k in ROLLUP_KEYS
    )
    sums = ", ".join(f"{agg} AS {name}" for name, _, agg in ROLLUP_SUMS)
    return f"SELECT day, {keys}, {sums} FROM usage WHERE {where} GROUP BY ALL"


def _facts() -> str:
    keys = ", ".join(
        "COALESCE(error_class, '') AS error_class" if k == "error_class" else f'"{k}"'
        for k in ROLLUP_KEYS
    )
    raw_sums = ", ".join(f"{_FACT_OF_RECORD.get(n, n)} AS {n}" for n, _, _ in ROLLUP_SUMS)
    daily_sums = ", ".join(n for n, _, _ in ROLLUP_SUMS)
    daily_keys = ", ".join(f'"{k}"' for k in ROLLUP_KEYS)
    return f"""CREATE OR REPLACE VIEW usage_facts AS
    SELECT ts_ms, day, hour, {keys}, {raw_sums} FROM usage
    UNION ALL
    SELECT CAST(epoch_ms(day::TIMESTAMP) AS BIGINT) AS ts_ms, day, NULL::TIMESTAMP AS hour,
        {daily_keys}, {daily_sums}
    FROM {{daily}}"""


# The model a request is billed under is the catalogue name after alias resolution; the served
# name (often a dated snapshot) stays available as model_served.
VIEWS: Final[tuple[str, ...]] = (
    """CREATE OR REPLACE VIEW usage AS
    SELECT *,
        CAST(epoch_ms(ts_ms) AS DATE) AS day,
        date_trunc('hour', epoch_ms(ts_ms)) AS hour,
        COALESCE(NULLIF(model_resolved, ''), NULLIF(model_requested, ''), model_served) AS model,
        cost_usd IS NULL AS unpriced
    FROM {raw}""",
    _facts(),
    """CREATE OR REPLACE VIEW spend_daily AS
    SELECT day, tenant, app, endpoint, model, provider, environment,
        COALESCE(SUM(spend_usd), 0) AS spend_usd,
        SUM(requests) AS requests,
        SUM(input_tokens) AS input_tokens,
        SUM(output_tokens) AS output_tokens,
        SUM(cached_input_tokens) AS cached_input_tokens,
        SUM(reasoning_tokens) AS reasoning_tokens,
        SUM(errors) AS errors,
        SUM(denied) AS denied,
        SUM(unpriced) AS unpriced
    FROM usage_facts
    GROUP BY ALL""",
    """CREATE OR REPLACE VIEW policy_decisions AS
    SELECT id, ts_ms, day, hour, tenant, app, endpoint, model, "user", provider, environment,
        prompt_version, namespace, deployment, data_mode, outcome AS request_outcome,
        d.stage AS stage, d.rule AS rule, d.mode AS mode, d.outcome AS decision, d.reason AS reason
    FROM (SELECT *, UNNEST(decisions) AS d FROM usage)""",
    """CREATE OR REPLACE VIEW latency_daily AS
    SELECT day, model, provider, COUNT(*) AS requests,
        quantile_cont(latency_ms, 0.5) AS latency_p50_ms,
        quantile_cont(latency_ms, 0.95) AS latency_p95_ms,
        quantile_cont(latency_ms, 0.99) AS latency_p99_ms,
        quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
        quantile_cont(ttft_ms, 0.95) AS ttft_p95_ms,
        quantile_cont(ttft_ms, 0.99) AS ttft_p99_ms
    FROM usage WHERE outcome = 'ok'
    GROUP BY ALL""",
    """CREATE OR REPLACE VIEW errors_daily AS
    SELECT day, tenant, app, model, provider, error_class, SUM(requests) AS requests
    FROM usage_facts WHERE outcome <> 'ok'
    GROUP BY ALL""",
    FOCUS_VIEW,
)
VIEW_NAMES: Final = tuple(v.split()[4] for v in VIEWS)


def views(*, raw: str = TABLE, daily: str = DAILY, prices: str = PRICES) -> list[str]:
    """The CREATE VIEW statements over the given source relations."""
    return [
        v.replace("{raw}", raw).replace("{daily}", daily).replace("{prices}", prices) for v in VIEWS
    ]
