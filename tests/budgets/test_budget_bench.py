"""Smoke test of benchmarks/bench_budget.py: a --quick run prints its table within the bound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_budget.py"
SCENARIOS = ("shared", "owner down at 90%", "crash at 50%", "baseline: per-sidecar limits")


def test_a_quick_budget_benchmark_prints_every_scenario_within_its_bound() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| scenario" in result.stdout
    assert "overshoot %" in result.stdout
    for scenario in SCENARIOS:
        assert f"| {scenario} " in result.stdout, scenario
