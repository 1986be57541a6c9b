"""Aggregating measured rounds, and printing them as one table (plus a JSON copy)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadgen import Run


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list; NaN when there is nothing."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


@dataclass
class Tally:
    """Every round of one step against one target: its runs and the target's CPU time."""

    runs: list[Run] = field(default_factory=list)
    cpu_s: float = 0.0
    # Per core, summed over rounds: busy, stolen and total ticks (any process, not only ours).
    cores: dict[int, list[int]] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return sum(r.completed for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def late(self) -> int:
        return sum(r.late for r in self.runs)

    @property
    def elapsed_s(self) -> float:
        return sum(r.elapsed_ns for r in self.runs) / 1e9

    def latency_ms(self, q: float) -> float:
        return percentile(sorted(x for r in self.runs for x in r.latencies_ns), q) / 1e6

    def ttfb_ms(self, q: float) -> float:
        return percentile(sorted(x for r in self.runs for x in r.ttfb_ns), q) / 1e6

    def send_lag_ms(self, q: float) -> float:
        return percentile(sorted(x for r in self.runs for x in r.send_lag_ns), q) / 1e6

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.completed * 1e6 if self.completed else float("nan")

    @property
    def busy(self) -> float:
        """CPU seconds per wall second: 1.0 is one core fully used."""
        return self.cpu_s / self.elapsed_s if self.elapsed_s else float("nan")

    def core_load(self) -> dict[int, tuple[float, float]]:
        """Each core's busy and stolen fraction during these rounds."""
        return {c: (b / t, st / t) for c, (b, st, t) in sorted(self.cores.items()) if t}

    @property
    def rate(self) -> float:
        """Median of the rounds' rates: one disturbed round does not move it."""
        return statistics.median(r.rate for r in self.runs) if self.runs else float("nan")

    @property
    def rate_spread(self) -> tuple[float, float]:
        rates = [r.rate for r in self.runs]
        return (min(rates), max(rates)) if rates else (float("nan"), float("nan"))


Check = Callable[[float, float], bool]  # (direct, sidecar) -> target met


@dataclass
class Row:
    metric: str
    unit: str
    direct: float | None
    sidecar: float | None
    extras: dict[str, float | None] = field(default_factory=dict)  # peer, candidate
    compare: str = "delta"  # "delta" (sidecar - direct), "ratio" (sidecar / direct) or ""
    target: str = ""
    check: Check | None = field(default=None, repr=False)
    digits: int = 3

    @property
    def passed(self) -> bool | None:
        if self.check is None or self.sidecar is None:
            return None
        return self.check(self.direct if self.direct is not None else float("nan"), self.sidecar)

    def comparison(self) -> str:
        if self.direct is None or self.sidecar is None or not self.compare:
            return ""
        if self.compare == "ratio":
            return f"x{self.sidecar / self.direct:.2f}" if self.direct else ""
        return f"{self.sidecar - self.direct:+.{self.digits}f}"

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        del data["check"]
        for key in ("direct", "sidecar"):
            data[key] = _finite(data[key])
        data["extras"] = {k: _finite(v) for k, v in self.extras.items()}
        data["comparison"] = self.comparison()
        data["passed"] = self.passed
        return data


def _finite(value: float | None) -> float | None:
    """NaN (nothing measured) becomes null: JSON has no NaN."""
    return None if value is None or math.isnan(value) else value


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render(rows: list[Row], *, extras: list[str]) -> str:
    """A plain-text table that reads the same in a terminal, a CI log and a README."""
    header = ["metric", "direct", "via sidecar", "delta/ratio", "target", "result", *extras]
    lines = [header]
    for row in rows:
        result = {True: "PASS", False: "FAIL", None: ""}[row.passed]
        cells = [f"{row.metric} ({row.unit})", _num(row.direct, row.digits)]
        cells += [_num(row.sidecar, row.digits), row.comparison(), row.target, result]
        cells += [_num(row.extras.get(name), row.digits) for name in extras]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        first = line[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))
        out.append("| " + " | ".join([first, *rest]) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, object], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "rows": [row.as_dict() for row in rows]}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
