"""Report output: an aligned terminal table, CSV for spreadsheets, JSON for programs."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final, Literal, get_args

import msgspec

from collector.report import METRICS, ReportQuery, ReportResult, ReportRow, report_encoder

Format = Literal["table", "csv", "json"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)
CONTENT_TYPES: Final[dict[str, str]] = {
    "table": "text/plain",
    "csv": "text/csv",
    "json": "application/json",
}
_BY_NAME: Final[dict[str, Format]] = {"table": "table", "csv": "csv", "json": "json"}

_METRIC_NAMES: Final = tuple(name for name, _ in METRICS)
# Short headers keep a many-column report inside a terminal.
_TABLE_HEADERS: Final[dict[str, str]] = {
    "spend_usd": "spend_usd",
    "requests": "requests",
    "input_tokens": "in_tok",
    "output_tokens": "out_tok",
    "cached_input_tokens": "cached_tok",
    "reasoning_tokens": "reason_tok",
    "errors": "errors",
    "denied": "denied",
    "unpriced": "unpriced",
}
_CENT_MICROS: Final = Decimal("0.000001")


def parse_format(text: str) -> Format | None:
    return _BY_NAME.get(text)


def render(result: ReportResult, fmt: Format) -> str:
    renderers: dict[str, Callable[[ReportResult], str]] = {
        "table": render_table,
        "csv": render_csv,
        "json": render_json,
    }
    return renderers[fmt](result)


def render_json(result: ReportResult) -> str:
    """The whole result, money as exact decimal strings; decodes back with `report_decoder`."""
    return msgspec.json.format(report_encoder.encode(result), indent=2).decode() + "\n"


def render_csv(result: ReportResult) -> str:
    """One line per row with exact values. No totals line: a sum row in the data would be
    counted twice by any spreadsheet pivot over it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_key_headers(result) + list(_METRIC_NAMES))
    for row in result.rows:
        writer.writerow(_keys(result, row) + [str(v) for v in _metrics(row)])
    return out.getvalue()


def render_table(result: ReportResult) -> str:
    """Aligned columns, numbers right-aligned, money to the millionth, a TOTAL line."""
    keys = _key_headers(result)
    headers = keys + [_TABLE_HEADERS[name] for name in _METRIC_NAMES]
    # Without group columns the only row is the total: show it once.
    body = [_table_cells(result, row) for row in result.rows] if keys else []
    totals = _table_cells(result, result.totals)
    if keys:
        totals[0] = "TOTAL"
        totals[1 : len(keys)] = [""] * (len(keys) - 1)
    lines = table_lines(title("usage", result.query), headers, body, totals, left=len(keys))
    if result.totals.unpriced:
        lines += ["", f"{result.totals.unpriced:,} request(s) have no known price; "
                      "spend_usd leaves them out."]  # fmt: skip
    return "\n".join(lines) + "\n"


def title(what: str, query: ReportQuery) -> str:
    return f"{what} {_when(query.since_ms)} .. {_when(query.until_ms)} (UTC)"


def table_lines(
    caption: str, headers: list[str], body: list[list[str]], totals: list[str] | None, *, left: int
) -> list[str]:
    """Lines of an aligned table: the first `left` columns left-aligned, the rest right; a
    totals row, when given, is set apart by a rule."""
    rows = [headers, *body, *([totals] if totals is not None else [])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    if totals is None:
        return [caption, "", line(headers), rule, *map(line, body)]
    middle = [*map(line, body), rule] if body else []
    return [caption, "", line(headers), rule, *middle, line(totals)]


def _key_headers(result: ReportResult) -> list[str]:
    bucket = [result.query.bucket] if result.query.bucket else []
    return bucket + list(result.query.group_by)


def _keys(result: ReportResult, row: ReportRow) -> list[str]:
    bucket = [row.bucket or ""] if result.query.bucket else []
    return bucket + [row.group.get(name, "") for name in result.query.group_by]


def _metrics(row: ReportRow) -> list[Decimal | int]:
    return [getattr(row, name) for name in _METRIC_NAMES]


def _table_cells(result: ReportResult, row: ReportRow) -> list[str]:
    keys = [k or "-" for k in _keys(result, row)]
    spend = row.spend_usd.quantize(_CENT_MICROS, rounding=ROUND_HALF_EVEN)
    numbers = [f"{spend:,}"] + [f"{v:,}" for v in _metrics(row)[1:]]
    return keys + numbers


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
