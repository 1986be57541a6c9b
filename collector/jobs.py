"""The collector's periodic work beside ingestion: retention, list prices, the analysts' snapshot.

Each job runs on a worker thread with its own cursor, so ingestion never waits for it beyond
DuckDB's own locking; a failing job is logged and tried again at its next turn, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from collector.prices import refresh_list_prices
from collector.retention import run_retention
from collector.snapshot import Snapshot
from collector.store import Store

log = structlog.get_logger("sidegate.collector")


class JobSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    retention_days: int = 0  # raw records kept this many whole UTC days; 0 keeps them all
    retention_interval_s: float = 3600.0
    snapshot_dir: str = ""  # "" writes no analysts' snapshot
    snapshot_interval_s: float = 60.0
    prices_interval_s: float = 600.0


class Jobs:
    """`start()` launches the loops; `stop()` cancels them, letting a run in progress finish."""

    def __init__(self, settings: JobSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.snapshot = (
            Snapshot(store, Path(settings.snapshot_dir)) if settings.snapshot_dir else None
        )
        self.runs: dict[str, int] = {}  # job name -> completed runs, for tests and health
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def start(self) -> None:
        s = self.settings
        self._every("prices", s.prices_interval_s, self._prices)
        if s.retention_days > 0:
            self._every("retention", s.retention_interval_s, self._retention)
        if self.snapshot is not None:
            self._every("snapshot", s.snapshot_interval_s, self.snapshot.run)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_now(self, name: str) -> None:
        """Run one job once, now (the CLI's `--once` paths and tests)."""
        jobs: dict[str, Callable[[], object]] = {
            "prices": self._prices,
            "retention": self._retention,
        }
        if self.snapshot is not None:
            jobs["snapshot"] = self.snapshot.run
        await asyncio.to_thread(jobs[name])
        self.runs[name] = self.runs.get(name, 0) + 1

    def _every(self, name: str, interval_s: float, job: Callable[[], object]) -> None:
        async def loop() -> None:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    await asyncio.to_thread(job)
                    self.runs[name] = self.runs.get(name, 0) + 1
                # Boundary: a periodic job. Its next turn retries; ingestion carries on.
                except Exception:
                    log.exception("collector.job_failed", job=name)
                wait = max(interval_s - (time.monotonic() - started), 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=wait)

        self._tasks.append(asyncio.create_task(loop(), name=f"collector-{name}"))

    def _prices(self) -> None:
        with self.store.cursor() as cur:
            refresh_list_prices(cur)

    def _retention(self) -> None:
        run_retention(self.store, self.settings.retention_days)
