"""Smoke test of benchmarks/bench_sidecar.py: a --quick run prints its table (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sidecar.py"
METRICS = (
    "CPU per request, 1 connection",
    "max throughput",
    "latency p50, 1 connection",
    "latency p99, 500 req/s over 16 conns",
    "stream TTFB p50",
    "RSS peak",
)


def test_quick_benchmark_run_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-peer", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| metric" in result.stdout
    for metric in METRICS:
        assert metric in result.stdout, metric
    names = [row["metric"] for row in json.loads(out.read_text())["rows"]]
    for metric in METRICS:
        assert any(name.startswith(metric) for name in names), metric
