"""Top movers: which groups drove a change in spend against the previous period, and why.

The current period is the query's [since, until); the previous one is as long and ends at
`since`. For each group (default: tenant), with R requests, spend C and c = C / R per period
(0: previous, 1: current), the change splits exactly into five parts using midpoint weights
(the Bennet decomposition; x̄ is the mean of the two periods, Δx = x1 - x0):

    requests   ΔR · c̄                          more (or fewer) requests at the average cost
    prompts    R̄ · Δi · π̄_in                    longer prompts: i = input tokens / request,
                                                π_in = input spend / input token
    outputs    R̄ · Δo · π̄_out                   longer outputs, likewise with output tokens
    retries    R̄ · Δs · mean(c_retried - c_clean) a shift in the share s of requests that needed
                                                an upstream retry, valued at what such a request
                                                costs beyond a clean one (fallbacks to pricier
                                                models, billed aborted attempts)
    price_mix  ΔC minus the four above          rates, model mix, cache hits, negotiated prices

ΔR·c̄ + R̄·Δc = ΔC holds exactly, and price_mix takes what the token and retry terms leave of
R̄·Δc, so the parts always add up to the change to the picodollar. A group absent from one
period takes the other period's ratios, so a new group's spend is all "requests".

Spend is split into its input and output parts per deployment in proportion to the public
list prices of each token class (`list_prices`: uncached input, cached input, cache writes,
output); a deployment with no list price is weighted 1 : 0.5 : 1 : 4, the common ratios.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any, Final

import duckdb
import msgspec

from collector.report import GROUP_SQL, ReportQuery, exact, where_clause
from collector.schema import PRICES

PARTS: Final = ("requests", "prompts", "outputs", "retries", "price_mix")
_PICO: Final = Decimal("1e-12")
_FALLBACK: Final = (Decimal(1), Decimal("0.5"), Decimal(1), Decimal(4))  # in, cached, write, out


class Period(msgspec.Struct, kw_only=True):
    requests: int = 0
    spend_usd: Decimal = Decimal(0)
    input_spend_usd: Decimal = Decimal(0)  # list-price-weighted share of spend_usd
    input_tokens: int = 0
    output_tokens: int = 0
    retried_requests: int = 0
    retried_spend_usd: Decimal = Decimal(0)


class MoverRow(msgspec.Struct, kw_only=True):
    group: dict[str, str]
    previous: Period
    current: Period
    change_usd: Decimal
    change_pct: float | None  # None when the previous spend was 0
    parts: dict[str, Decimal]  # PARTS -> USD; they add up to change_usd


class MoversResult(msgspec.Struct, kw_only=True):
    query: ReportQuery
    previous_since_ms: int
    rows: list[MoverRow]  # the `top` largest changes, by absolute size
    total_change_usd: Decimal  # over every group, not only the rows shown


def build_movers(conn: duckdb.DuckDBPyConnection, query: ReportQuery) -> MoversResult:
    span = query.until_ms - query.since_ms
    previous = msgspec.structs.replace(query, since_ms=query.since_ms - span)
    where, params = where_clause(previous)
    groups = [f"{GROUP_SQL[name]} AS g{i}" for i, name in enumerate(query.group_by)]
    n = len(groups)
    keys = [*(f"g{i}" for i in range(n)), "period", "provider_kind", "deployment"]
    sql = f"""SELECT {", ".join([*groups, "(ts_ms >= ?)::INTEGER AS period"])},
            SUM(requests), COALESCE(SUM(spend_usd), 0),
            SUM(GREATEST(input_tokens - cached_input_tokens - cache_write_tokens, 0)),
            SUM(cached_input_tokens), SUM(cache_write_tokens), SUM(output_tokens),
            SUM(input_tokens), SUM(retried_requests), COALESCE(SUM(retried_spend_usd), 0),
            any_value(list_input), any_value(list_cached), any_value(list_write),
            any_value(list_output)
        FROM (
            SELECT f.*, p.input_usd AS list_input, p.cached_input_usd AS list_cached,
                p.cache_write_usd AS list_write, p.output_usd AS list_output
            FROM usage_facts f LEFT JOIN {PRICES} p
                ON p.provider_kind = f.provider_kind
                AND p.model = substr(f.deployment, strpos(f.deployment, '/') + 1)
        )
        WHERE {where}
        GROUP BY {", ".join(keys)}"""
    found: dict[tuple[Any, ...], list[Period]] = {}
    for values in conn.execute(sql, [query.since_ms, *params]).fetchall():
        key, period = values[:n], int(values[n])
        pair = found.setdefault(key, [Period(), Period()])
        _add(pair[period], values[n + 1 :])
    rows = [_row(query, key, p0, p1) for key, (p0, p1) in found.items()]
    total = exact(sum((r.change_usd for r in rows), Decimal(0)))
    rows.sort(key=lambda r: (-abs(r.change_usd), list(r.group.values())))
    return MoversResult(
        query=query, previous_since_ms=previous.since_ms, rows=rows[: query.top],
        total_change_usd=total,
    )  # fmt: skip


def _add(period: Period, v: tuple[Any, ...]) -> None:
    requests, spend, uncached, cached, write, output, input_t, retried, retried_spend = v[:9]
    rates = tuple(v[9:13])
    spend = Decimal(spend)
    price = _FALLBACK if rates[0] is None else tuple(Decimal(r or 0) for r in rates)
    weight_in = uncached * price[0] + cached * price[1] + write * price[2]
    weight_out = output * price[3]
    weights = weight_in + weight_out
    period.requests += int(requests)
    period.spend_usd += spend
    period.input_spend_usd += spend if not weights else spend * weight_in / weights
    period.input_tokens += int(input_t)
    period.output_tokens += int(output)
    period.retried_requests += int(retried)
    period.retried_spend_usd += Decimal(retried_spend)


def _ratios(p: Period) -> tuple[Decimal, ...] | None:
    """Per request: cost, input tokens, output tokens, retried share; per token: input and
    output cost; a retried request's extra cost. None for a period without requests."""
    if not p.requests:
        return None
    r = Decimal(p.requests)
    out_spend = p.spend_usd - p.input_spend_usd
    clean = p.requests - p.retried_requests
    extra = Decimal(0)
    if p.retried_requests and clean:
        extra = p.retried_spend_usd / p.retried_requests - (
            (p.spend_usd - p.retried_spend_usd) / clean
        )
    return (
        p.spend_usd / r,
        p.input_tokens / r,
        p.output_tokens / r,
        p.retried_requests / r,
        p.input_spend_usd / p.input_tokens if p.input_tokens else Decimal(0),
        out_spend / p.output_tokens if p.output_tokens else Decimal(0),
        extra,
    )


def _row(query: ReportQuery, key: tuple[Any, ...], p0: Period, p1: Period) -> MoverRow:
    with localcontext() as ctx:
        ctx.prec = 60
        a, b = _ratios(p0), _ratios(p1)
        a, b = a or b, b or a
        assert a is not None and b is not None
        c0, i0, o0, s0, pin0, pout0, x0 = a
        c1, i1, o1, s1, pin1, pout1, x1 = b
        two = Decimal(2)
        r_mean = Decimal(p0.requests + p1.requests) / two
        change = p1.spend_usd - p0.spend_usd
        parts = {
            "requests": Decimal(p1.requests - p0.requests) * (c0 + c1) / two,
            "prompts": r_mean * (i1 - i0) * (pin0 + pin1) / two,
            "outputs": r_mean * (o1 - o0) * (pout0 + pout1) / two,
            "retries": r_mean * (s1 - s0) * (x0 + x1) / two,
        }
        parts = {k: v.quantize(_PICO) for k, v in parts.items()}
        parts["price_mix"] = change - sum(parts.values(), Decimal(0))
    for p in (p0, p1):
        p.spend_usd = exact(p.spend_usd)
        p.input_spend_usd = exact(p.input_spend_usd.quantize(_PICO))
        p.retried_spend_usd = exact(p.retried_spend_usd)
    return MoverRow(
        group={name: str(v) for name, v in zip(query.group_by, key, strict=True)},
        previous=p0,
        current=p1,
        change_usd=exact(change),
        change_pct=round(float(change / p0.spend_usd) * 100, 2) if p0.spend_usd else None,
        parts={k: exact(v) + 0 for k, v in parts.items()},  # + 0 turns -0 into 0
    )
