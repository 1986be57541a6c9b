"""Operational reports: latency and time to first token, errors by class, and efficiency.

- latency: p50/p95/p99 of latency_ms and ttft_ms per group (default: model), over successful
  requests; TTFT only exists for streams. Percentiles need single requests, so this view reads
  raw records only and stops at the retention cutoff.
- errors: requests, errors and denials per group with each error class's count and the error
  rate (errors / requests). Reads `usage_facts`, so it reaches past retention.
- efficiency: cost per priced request, retry ratio (upstream retries per request), the share of
  requests that needed a retry or a fallback, the response-cache hit rate (hits / (hits +
  misses)), the prompt-cache rate (cached input tokens / input tokens) and tokens per request.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import duckdb
import msgspec

from collector.report import GROUP_SQL, ReportQuery, exact, where_clause

_PICO = Decimal("1e-12")  # the store's cost scale


class LatencyRow(msgspec.Struct, kw_only=True):
    group: dict[str, str]
    requests: int  # successful requests measured
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    streams: int  # of which streamed (with a time to first token)
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None


class LatencyResult(msgspec.Struct, kw_only=True):
    query: ReportQuery
    rows: list[LatencyRow]


class ErrorsRow(msgspec.Struct, kw_only=True):
    group: dict[str, str]
    requests: int
    errors: int
    denied: int
    error_rate: float  # errors / requests
    by_class: dict[str, int]  # error class -> requests (errors and denials)


class ErrorsResult(msgspec.Struct, kw_only=True):
    query: ReportQuery
    rows: list[ErrorsRow]
    classes: list[str]  # every class present, most frequent first


class EfficiencyRow(msgspec.Struct, kw_only=True):
    group: dict[str, str]
    requests: int
    spend_usd: Decimal
    cost_per_request_usd: Decimal | None  # spend / priced requests
    retry_ratio: float  # upstream retries per request
    retried_share: float  # requests that needed at least one retry
    fallback_share: float  # requests answered by a fallback model
    cache_hit_rate: float | None  # response cache: hits / (hits + misses); None when off
    prompt_cache_rate: float | None  # cached input tokens / input tokens
    input_tokens_per_request: float
    output_tokens_per_request: float


class EfficiencyResult(msgspec.Struct, kw_only=True):
    query: ReportQuery
    rows: list[EfficiencyRow]


def _groups(query: ReportQuery) -> list[str]:
    return [f"{GROUP_SQL[name]} AS g{i}" for i, name in enumerate(query.group_by)]


def _group(query: ReportQuery, values: tuple[Any, ...]) -> dict[str, str]:
    return {name: str(v) for name, v in zip(query.group_by, values, strict=True)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def build_latency(conn: duckdb.DuckDBPyConnection, query: ReportQuery) -> LatencyResult:
    groups = _groups(query)
    where, params = where_clause(query)
    n = len(groups)
    sql = f"""SELECT {", ".join([*groups, "COUNT(*)"])},
            quantile_cont(latency_ms, [0.5, 0.95, 0.99]),
            COUNT(ttft_ms),
            quantile_cont(ttft_ms, [0.5, 0.95, 0.99])
        FROM usage WHERE {where} AND outcome = 'ok'
        GROUP BY ALL ORDER BY {n + 1} DESC{"".join(f", g{i}" for i in range(n))}"""
    rows = []
    for values in conn.execute(sql, params).fetchall():
        requests, latency, streams, ttft = values[n:]
        lat = latency or [None, None, None]
        tt = ttft or [None, None, None]
        rows.append(
            LatencyRow(
                group=_group(query, values[:n]),
                requests=int(requests),
                latency_p50_ms=_rounded(lat[0]),
                latency_p95_ms=_rounded(lat[1]),
                latency_p99_ms=_rounded(lat[2]),
                streams=int(streams),
                ttft_p50_ms=_rounded(tt[0]),
                ttft_p95_ms=_rounded(tt[1]),
                ttft_p99_ms=_rounded(tt[2]),
            )
        )
    return LatencyResult(query=query, rows=rows)


def build_errors(conn: duckdb.DuckDBPyConnection, query: ReportQuery) -> ErrorsResult:
    groups = _groups(query)
    where, params = where_clause(query)
    n = len(groups)
    select = ", ".join([*groups, "error_class", "SUM(requests)", "SUM(errors)", "SUM(denied)"])
    sql = f"SELECT {select} FROM usage_facts WHERE {where} GROUP BY ALL"
    totals: dict[tuple[Any, ...], list[int]] = {}
    classes: dict[tuple[Any, ...], dict[str, int]] = {}
    overall: dict[str, int] = {}
    for values in conn.execute(sql, params).fetchall():
        key, error_class = values[:n], values[n]
        requests, errors, denied = (int(v) for v in values[n + 1 :])
        total = totals.setdefault(key, [0, 0, 0])
        total[0] += requests
        total[1] += errors
        total[2] += denied
        if error_class:
            count = errors + denied
            by_class = classes.setdefault(key, {})
            by_class[error_class] = by_class.get(error_class, 0) + count
            overall[error_class] = overall.get(error_class, 0) + count
    rows = [
        ErrorsRow(
            group=_group(query, key),
            requests=r,
            errors=e,
            denied=d,
            error_rate=round(e / r, 6) if r else 0.0,
            by_class=dict(sorted(classes.get(key, {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        )
        for key, (r, e, d) in totals.items()
    ]
    rows.sort(key=lambda row: (-row.error_rate, -row.requests, list(row.group.values())))
    ordered = [c for c, _ in sorted(overall.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ErrorsResult(query=query, rows=rows, classes=ordered)


def _per(spend: Decimal, priced: int) -> Decimal | None:
    return exact((spend / priced).quantize(_PICO)) if priced else None


def build_efficiency(conn: duckdb.DuckDBPyConnection, query: ReportQuery) -> EfficiencyResult:
    groups = _groups(query)
    where, params = where_clause(query)
    n = len(groups)
    sql = f"""SELECT {", ".join(groups) + ", " if groups else ""}
            SUM(requests), COALESCE(SUM(spend_usd), 0), SUM(requests) - SUM(unpriced),
            SUM(retries), SUM(retried_requests), SUM(fallbacks),
            SUM(requests) FILTER (WHERE cache = 'hit'), SUM(requests) FILTER (WHERE cache = 'miss'),
            SUM(cached_input_tokens), SUM(input_tokens), SUM(output_tokens)
        FROM usage_facts WHERE {where}
        GROUP BY ALL HAVING SUM(requests) > 0
        ORDER BY {n + 2} DESC, {n + 1} DESC{"".join(f", {i + 1}" for i in range(n))}"""
    rows = []
    for values in conn.execute(sql, params).fetchall():
        requests, spend, priced, retries, retried, fallbacks = values[n : n + 6]
        hits, misses, cached, input_t, output_t = values[n + 6 :]
        requests = int(requests)
        spend = exact(Decimal(spend))
        looked_up = int(hits or 0) + int(misses or 0)
        rows.append(
            EfficiencyRow(
                group=_group(query, values[:n]),
                requests=requests,
                spend_usd=spend,
                cost_per_request_usd=exact((spend / int(priced)).quantize(_PICO))
                if priced
                else None,
                retry_ratio=round(int(retries) / requests, 6),
                retried_share=round(int(retried) / requests, 6),
                fallback_share=round(int(fallbacks) / requests, 6),
                cache_hit_rate=round(int(hits or 0) / looked_up, 6) if looked_up else None,
                prompt_cache_rate=round(int(cached) / int(input_t), 6) if input_t else None,
                input_tokens_per_request=round(int(input_t) / requests, 3),
                output_tokens_per_request=round(int(output_t) / requests, 3),
            )
        )
    return EfficiencyResult(query=query, rows=rows)
