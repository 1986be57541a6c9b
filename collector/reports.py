"""The report views `sidegate report --view` offers, each with its builder, its default grouping
and its rendering as a terminal table, CSV or JSON.

One registry serves the CLI (against a database file), the collector's HTTP endpoint
`/v1/view/<name>` (against its own connection) and the HTML report, so all three agree.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

import duckdb
import msgspec

from collector.analytics import (
    EfficiencyResult,
    ErrorsResult,
    LatencyResult,
    build_efficiency,
    build_errors,
    build_latency,
)
from collector.decisions import DecisionsResult, build_decisions, render_decisions
from collector.movers import PARTS, MoversResult, build_movers
from collector.render import Format, render, table_lines, title
from collector.report import ReportQuery, ReportResult, build_report

Builder = Callable[[duckdb.DuckDBPyConnection, ReportQuery], Any]
_MICRO: Final = Decimal("0.000001")


class View(msgspec.Struct, frozen=True):
    name: str
    help: str
    default_group_by: str  # used when the caller names no groups
    build: Builder
    result_type: type
    render: Callable[[Any, Format], str]


def _money(value: Decimal | None) -> str:
    if value is None:
        return "-"
    return f"{value.quantize(_MICRO, rounding=ROUND_HALF_EVEN):,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _cells(
    result: Any,
    fmt: Format,
    caption: str,
    headers: list[str],
    rows: list[tuple[list[str], list[str], list[Any]]],
) -> str:
    """Shared rendering: each row is (group cells, table cells, exact CSV values)."""
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(result), indent=2).decode() + "\n"
    keys = list(result.query.group_by)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(keys + headers)
        for group, _, exact_values in rows:
            writer.writerow(group + ["" if v is None else str(v) for v in exact_values])
        return out.getvalue()
    body = [[g or "-" for g in group] + table for group, table, _ in rows]
    if not body:
        return f"{title(caption, result.query)}\n\n(no requests in this range)\n"
    lines = table_lines(title(caption, result.query), keys + headers, body, None, left=len(keys))
    return "\n".join(lines) + "\n"


def render_latency(result: LatencyResult, fmt: Format) -> str:
    headers = [
        "requests",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "streams",
        "ttft_p50",
        "ttft_p95",
        "ttft_p99",
    ]
    rows = []
    for r in result.rows:
        values = [
            r.requests,
            r.latency_p50_ms,
            r.latency_p95_ms,
            r.latency_p99_ms,
            r.streams,
            r.ttft_p50_ms,
            r.ttft_p95_ms,
            r.ttft_p99_ms,
        ]
        table = [f"{r.requests:,}", *map(_ms, values[1:4]), f"{r.streams:,}", *map(_ms, values[5:])]
        rows.append((list(r.group.values()), table, values))
    return _cells(result, fmt, "latency (successful requests)", headers, rows)


def render_errors(result: ErrorsResult, fmt: Format) -> str:
    headers = ["requests", "errors", "denied", "error_rate", *result.classes]
    rows = []
    for r in result.rows:
        counts = [r.by_class.get(c, 0) for c in result.classes]
        table = [f"{r.requests:,}", f"{r.errors:,}", f"{r.denied:,}", _pct(r.error_rate)]
        table += [f"{c:,}" for c in counts]
        rows.append(
            (list(r.group.values()), table, [r.requests, r.errors, r.denied, r.error_rate, *counts])
        )
    return _cells(result, fmt, "errors by class", headers, rows)


def render_efficiency(result: EfficiencyResult, fmt: Format) -> str:
    headers = [
        "requests",
        "spend_usd",
        "cost_per_req",
        "retry_ratio",
        "retried",
        "fallback",
        "cache_hit",
        "prompt_cached",
        "in_tok/req",
        "out_tok/req",
    ]
    rows = []
    for r in result.rows:
        values = [
            r.requests,
            r.spend_usd,
            r.cost_per_request_usd,
            r.retry_ratio,
            r.retried_share,
            r.fallback_share,
            r.cache_hit_rate,
            r.prompt_cache_rate,
            r.input_tokens_per_request,
            r.output_tokens_per_request,
        ]
        table = [
            f"{r.requests:,}",
            _money(r.spend_usd),
            _money(r.cost_per_request_usd),
            f"{r.retry_ratio:.3f}",
            _pct(r.retried_share),
            _pct(r.fallback_share),
            _pct(r.cache_hit_rate),
            _pct(r.prompt_cache_rate),
            f"{r.input_tokens_per_request:,.1f}",
            f"{r.output_tokens_per_request:,.1f}",
        ]
        rows.append((list(r.group.values()), table, values))
    return _cells(result, fmt, "efficiency", headers, rows)


def render_movers(result: MoversResult, fmt: Format) -> str:
    headers = ["spend_prev", "spend_now", "change_usd", "change", *PARTS]
    rows = []
    for r in result.rows:
        parts = [r.parts[p] for p in PARTS]
        if r.change_pct is not None:
            pct = f"{r.change_pct:+.1f}%"
        else:
            pct = "new" if r.change_usd else "-"
        table = [
            _money(r.previous.spend_usd),
            _money(r.current.spend_usd),
            _money(r.change_usd),
            pct,
            *map(_money, parts),
        ]
        values = [r.previous.spend_usd, r.current.spend_usd, r.change_usd, r.change_pct, *parts]
        rows.append((list(r.group.values()), table, values))
    since = datetime.fromtimestamp(result.previous_since_ms / 1000, tz=UTC)
    caption = f"top movers against the previous period (from {since:%Y-%m-%dT%H:%M:%SZ})"
    return _cells(result, fmt, caption, headers, rows)


VIEWS: Final[dict[str, View]] = {
    v.name: v
    for v in (
        View(
            "usage",
            "spend, requests and tokens by group",
            "tenant,app,endpoint,model",
            build_report,
            ReportResult,
            render,
        ),
        View(
            "latency",
            "p50/p95/p99 latency and time to first token",
            "model",
            build_latency,
            LatencyResult,
            render_latency,
        ),
        View(
            "errors",
            "error rate and counts by error class",
            "provider,model",
            build_errors,
            ErrorsResult,
            render_errors,
        ),
        View(
            "efficiency",
            "cost per request, retries, fallbacks, cache hit rates",
            "tenant,app",
            build_efficiency,
            EfficiencyResult,
            render_efficiency,
        ),
        View(
            "movers",
            "which groups drove a spend change, and why",
            "tenant",
            build_movers,
            MoversResult,
            render_movers,
        ),
        View(
            "decisions",
            "denied and would-deny policy decisions",
            "tenant,app,endpoint,model",
            build_decisions,
            DecisionsResult,
            render_decisions,
        ),
    )
}
VIEW_NAMES: Final = tuple(VIEWS)


def decode(name: str, body: bytes) -> Any:
    """A view's JSON result, decoded back into its typed result."""
    return msgspec.json.decode(body, type=VIEWS[name].result_type)
