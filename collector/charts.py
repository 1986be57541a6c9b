"""Inline SVG charts for the HTML report: no script, no external asset, readable when printed.

Each function returns one `<svg>` element sized for a report column; labels are escaped, and
every bar carries a `<title>` with its exact value, which browsers show on hover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Final

PALETTE: Final = ("#2f6fba", "#e0892b", "#3a9d5d", "#c0413b", "#7a5cb8", "#8c8c8c")
_FONT: Final = 'font-family="system-ui, sans-serif" font-size="11"'


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def columns(labels: Sequence[str], values: Sequence[float], *, unit: str = "") -> str:
    """Vertical bars over time buckets (spend per day or hour)."""
    width, height, left, bottom = 720, 220, 56, 40
    top = _nice_max(max(values, default=0))
    n = max(len(values), 1)
    slot = (width - left - 8) / n
    plot = height - bottom - 10
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" {_FONT}>']
    for tick in (0, 0.5, 1):
        y = 10 + plot * (1 - tick)
        parts.append(f'<line x1="{left}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')  # fmt: skip
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(_fmt(top * tick))}{escape(unit)}</text>")  # fmt: skip
    every = max(1, n // 12)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot * value / top
        x = left + i * slot + slot * 0.1
        parts.append(
            f'<rect x="{x:.1f}" y="{10 + plot - h:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: '
            f"{escape(_fmt(value))}{escape(unit)}</title></rect>"
        )
        if i % every == 0:
            parts.append(f'<text x="{x + slot * 0.4:.1f}" y="{height - bottom + 14}" '
                         f'text-anchor="middle">{escape(label[5:] or label)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    unit: str = "",
) -> str:
    """Horizontal bars, one row per label, one bar per series (e.g. p50, p95, p99)."""
    width, left, row_h = 720, 220, 8 + 12 * len(series)
    height = 24 + row_h * max(len(labels), 1)
    top = _nice_max(max((v for _, vs in series for v in vs), default=0))
    span = width - left - 70
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" {_FONT}>']
    for s, (name, _) in enumerate(series):
        parts.append(f'<rect x="{left + s * 90}" y="2" width="10" height="10" '
                     f'fill="{PALETTE[s % len(PALETTE)]}"/><text x="{left + s * 90 + 14}" '
                     f'y="11">{escape(name)}</text>')  # fmt: skip
    for i, label in enumerate(labels):
        y0 = 20 + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y0 + row_h / 2 + 3:.1f}" text-anchor="end">'
                     f"{escape(label[:34])}</text>")  # fmt: skip
        for s, (name, values) in enumerate(series):
            value = values[i]
            w = span * value / top
            y = y0 + 4 + s * 12
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="10" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(label)} {escape(name)}: '
                f"{escape(_fmt(value))}{escape(unit)}</title></rect>"
                f'<text x="{left + w + 4:.1f}" y="{y + 9}">{escape(_fmt(value))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def diverging(
    labels: Sequence[str], parts_by_label: Sequence[Sequence[float]], names: Sequence[str]
) -> str:
    """Stacked bars around zero: each row splits a change into signed parts."""
    width, left, row_h = 720, 220, 22
    height = 30 + row_h * max(len(labels), 1)
    extent = max(
        (max(sum(v for v in ps if v > 0), -sum(v for v in ps if v < 0)) for ps in parts_by_label),
        default=0.0,
    )
    scale = (width - left - 20) / 2 / _nice_max(extent)
    zero = left + (width - left - 20) / 2
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" {_FONT}>']
    for s, name in enumerate(names):
        out.append(f'<rect x="{left + s * 95}" y="2" width="10" height="10" '
                   f'fill="{PALETTE[s % len(PALETTE)]}"/><text x="{left + s * 95 + 14}" '
                   f'y="11">{escape(name)}</text>')  # fmt: skip
    out.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="18" y2="{height}" stroke="#999"/>')
    for i, (label, values) in enumerate(zip(labels, parts_by_label, strict=True)):
        y = 22 + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">'
                   f"{escape(label[:34])}</text>")  # fmt: skip
        pos, neg = zero, zero
        for s, value in enumerate(values):
            w = abs(value) * scale
            if value >= 0:
                x, pos = pos, pos + w
            else:
                neg -= w
                x = neg
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="16" '
                       f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(label)} '
                       f"{escape(names[s])}: {escape(_fmt(value))} USD</title></rect>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)
