"""Usage reports: a typed query, its parsing from CLI/HTTP text, and `build_report` over DuckDB.

The CLI (against a database file) and the collector's HTTP endpoint (against its own
connection) both call `build_report`, so the two can never disagree. User values reach SQL
only as parameters; column names come from a fixed whitelist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal, get_args

import duckdb
import msgspec

GroupColumn = Literal[
    "tenant",
    "app",
    "endpoint",
    "model",
    "user",
    "provider",
    "environment",
    "prompt_version",
    "namespace",
    "deployment",
    "model_served",
    "outcome",
    "error_class",
    "data_mode",
]
Bucket = Literal["day", "hour"]

GROUP_COLUMNS: Final[tuple[str, ...]] = get_args(GroupColumn)
DEFAULT_GROUP_BY: Final[tuple[GroupColumn, ...]] = ("tenant", "app", "endpoint", "model")
DEFAULT_SINCE: Final = "24h"

# The only column text that reaches SQL; every key is a GroupColumn.
GROUP_SQL: Final[dict[str, str]] = {
    name: ("COALESCE(error_class, '')" if name == "error_class" else f'"{name}"')
    for name in GROUP_COLUMNS
}
BUCKET_SQL: Final[dict[str, str]] = {
    "day": "strftime(day, '%Y-%m-%d')",
    "hour": "strftime(hour, '%Y-%m-%dT%H:00Z')",
}
# Over `usage_facts` (raw records and daily rollups alike), so sums reach past retention.
METRICS: Final[tuple[tuple[str, str], ...]] = (
    ("spend_usd", "COALESCE(SUM(spend_usd), 0)"),
    ("requests", "SUM(requests)"),
    ("input_tokens", "COALESCE(SUM(input_tokens), 0)"),
    ("output_tokens", "COALESCE(SUM(output_tokens), 0)"),
    ("cached_input_tokens", "COALESCE(SUM(cached_input_tokens), 0)"),
    ("reasoning_tokens", "COALESCE(SUM(reasoning_tokens), 0)"),
    ("errors", "SUM(errors)"),
    ("denied", "SUM(denied)"),
    ("unpriced", "SUM(unpriced)"),
)
_RELATIVE = re.compile(r"^(\d+)(s|m|h|d|w)$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_UNIT_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class ReportQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What to report: a half-open time range [since, until), groups, an optional bucket."""

    since_ms: int
    until_ms: int
    group_by: tuple[GroupColumn, ...] = DEFAULT_GROUP_BY
    bucket: Bucket | None = None
    filters: dict[GroupColumn, str] = {}
    top: int = 10  # rows the movers view keeps


class ReportRow(msgspec.Struct, kw_only=True):
    group: dict[str, str]  # group column -> value, in group_by order
    bucket: str | None = None  # "2025-01-31" or "2025-01-31T13:00Z" (UTC)
    spend_usd: Decimal = Decimal(0)  # priced requests only; see unpriced
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    errors: int = 0
    denied: int = 0
    unpriced: int = 0  # requests with no known price (cost_usd null)


class ReportResult(msgspec.Struct, kw_only=True):
    query: ReportQuery
    rows: list[ReportRow]
    totals: ReportRow


class QueryError(msgspec.Struct, frozen=True):
    """A report request that cannot be answered, with a message for the person who sent it."""

    message: str


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_time(text: str, *, now: int) -> int | None:
    """Unix ms for "now", a relative age ("90m", "1h", "7d", "2w" ago) or an ISO date/time
    (UTC unless it carries an offset); None when it is none of these."""
    text = text.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic: float timestamps can land a millisecond short.
    return (moment - _EPOCH) // _ONE_MS


def iso_ms(ms: int) -> str:
    """An ISO time that `parse_time` reads back as exactly `ms`."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def parse_query(
    *,
    group_by: str | None = None,
    since: str | None = None,
    until: str | None = None,
    by: str | None = None,
    filters: Sequence[str] = (),
    top: int = 10,
    now: int | None = None,
) -> ReportQuery | QueryError:
    """Build a ReportQuery from the text a person typed (CLI flags or HTTP query parameters).

    group_by is comma-separated; "" or "none" means totals only. filters are "column=value".
    """
    now = now_ms() if now is None else now
    since_ms = parse_time(since or DEFAULT_SINCE, now=now)
    until_ms = parse_time(until or "now", now=now)
    if since_ms is None or until_ms is None:
        bad = since if since_ms is None else until
        return QueryError(f"cannot read time {bad!r}: use ISO (2025-01-31, 2025-01-31T12:00Z) "
                          "or relative (30m, 1h, 7d, 2w)")  # fmt: skip
    if since_ms >= until_ms:
        return QueryError("--since must be before --until")
    columns: list[str] = []
    spec = "" if group_by is None else group_by
    names = [] if spec.strip() in ("", "none") else [n.strip() for n in spec.split(",")]
    for name in names if group_by is not None else DEFAULT_GROUP_BY:
        if name not in GROUP_COLUMNS:
            return QueryError(f"cannot group by {name!r}; choose from {', '.join(GROUP_COLUMNS)}")
        if name not in columns:
            columns.append(name)
    if by not in (None, "", "none", *BUCKET_SQL):
        return QueryError(f"--by must be day or hour, not {by!r}")
    where: dict[str, str] = {}
    for item in filters:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in GROUP_COLUMNS:
            return QueryError(f"filter {item!r} must be column=value with a column from "
                              f"{', '.join(GROUP_COLUMNS)}")  # fmt: skip
        where[name.strip()] = value
    try:
        return msgspec.convert(
            {
                "since_ms": since_ms,
                "until_ms": until_ms,
                "group_by": columns,
                "bucket": by if by in BUCKET_SQL else None,
                "filters": where,
                "top": top,
            },
            ReportQuery,
        )
    except msgspec.ValidationError as exc:  # unreachable after the checks above, kept as a net
        return QueryError(str(exc))


def exact(value: Decimal) -> Decimal:
    """The same amount without trailing zeros, never in exponent form (10, not 1E+1)."""
    reduced = value.normalize()
    exponent = reduced.as_tuple().exponent
    return reduced.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else reduced


def where_clause(query: ReportQuery) -> tuple[str, list[object]]:
    """The WHERE text and its parameters for a query's time range and filters."""
    clauses = ["ts_ms >= ?", "ts_ms < ?"]
    params: list[object] = [query.since_ms, query.until_ms]
    for name, value in query.filters.items():
        clauses.append(f"{GROUP_SQL[name]} = ?")
        params.append(value)
    return " AND ".join(clauses), params


def build_report(conn: duckdb.DuckDBPyConnection, query: ReportQuery) -> ReportResult:
    """Spend, requests, tokens, errors and unpriced requests per group (and bucket)."""
    groups = [f"{GROUP_SQL[name]} AS g{i}" for i, name in enumerate(query.group_by)]
    bucket = BUCKET_SQL[query.bucket] if query.bucket else "NULL::VARCHAR"
    select = [f"{bucket} AS bucket", *groups, *(f"{sql} AS {name}" for name, sql in METRICS)]
    order = ["bucket", "spend_usd DESC", "requests DESC"]
    order += [f"g{i}" for i in range(len(groups))]
    where, params = where_clause(query)
    sql = (
        f"SELECT {', '.join(select)} FROM usage_facts WHERE {where} "
        f"GROUP BY ALL HAVING SUM(requests) > 0 ORDER BY {', '.join(order)}"
    )
    rows = [_row(query, values) for values in conn.execute(sql, params).fetchall()]
    return ReportResult(query=query, rows=rows, totals=total(rows))


def _row(query: ReportQuery, values: tuple[Any, ...]) -> ReportRow:
    n = len(query.group_by)
    bucket, keys = values[0], values[1 : 1 + n]
    spend, requests, input_t, output_t, cached_t, reasoning_t, errors, denied, unpriced = values[
        1 + n :
    ]
    return ReportRow(
        group={name: str(v) for name, v in zip(query.group_by, keys, strict=True)},
        bucket=bucket,
        spend_usd=exact(Decimal(spend)),
        requests=int(requests),
        input_tokens=int(input_t),
        output_tokens=int(output_t),
        cached_input_tokens=int(cached_t),
        reasoning_tokens=int(reasoning_t),
        errors=int(errors),
        denied=int(denied),
        unpriced=int(unpriced),
    )


def total(rows: Iterable[ReportRow]) -> ReportRow:
    """Column sums, exact: Decimal for money, Python ints for counts."""
    out = ReportRow(group={})
    for row in rows:
        out.spend_usd += row.spend_usd
        out.requests += row.requests
        out.input_tokens += row.input_tokens
        out.output_tokens += row.output_tokens
        out.cached_input_tokens += row.cached_input_tokens
        out.reasoning_tokens += row.reasoning_tokens
        out.errors += row.errors
        out.denied += row.denied
        out.unpriced += row.unpriced
    out.spend_usd = exact(out.spend_usd)
    return out


report_encoder = msgspec.json.Encoder(decimal_format="string")
report_decoder = msgspec.json.Decoder(ReportResult)
