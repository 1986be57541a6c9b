"""The collector process: the JetStream consumer plus a loopback HTTP server for reports.

DuckDB lets one process open a file for writing and no other process open it at all, so
`sidegate report` cannot read the file while the collector runs; the collector answers
reports itself. Each report runs on a worker thread with its own cursor (an MVCC snapshot),
so the event loop never blocks and ingestion never waits for a long report; the consumer's
inserts keep their own single writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import duckdb
import msgspec
import structlog
from aiohttp import web

from collector.api import add_routes
from collector.consumer import Consumer, ConsumerSettings
from collector.decisions import build_decisions, render_decisions
from collector.export import FILE_NAME, parse_day, plan_export, write_day
from collector.jobs import Jobs, JobSettings
from collector.metrics import CollectorMetrics
from collector.render import CONTENT_TYPES, FORMATS, Format, parse_format, render
from collector.report import QueryError, ReportQuery, build_report, parse_query
from collector.store import Store, StoreError

STATE_FILE: Final = "collector.json"
_T = TypeVar("_T")
_MAX_CONCURRENT_REPORTS: Final = 2  # on a small node, leave a core to the writer

log = structlog.get_logger("sidegate.collector")


class CollectorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    db_path: str = ".sidegate/usage.duckdb"
    state_dir: str = ".sidegate"
    http_host: str = "127.0.0.1"
    http_port: int = 4002  # 0 picks a free port; collector.json records the real one
    consumer: ConsumerSettings = ConsumerSettings()
    jobs: JobSettings = JobSettings()
    db_threads: int = 0  # DuckDB worker threads; 0: one per core


class CollectorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `<state_dir>/collector.json` tells `sidegate report` about a running collector."""

    url: str
    pid: int
    db: str
    started_ms: int


def read_info(state_dir: Path | str) -> CollectorInfo | None:
    """The running collector's address, or None when the file is absent or unreadable."""
    try:
        return msgspec.json.decode((Path(state_dir) / STATE_FILE).read_bytes(), type=CollectorInfo)
    except (OSError, msgspec.DecodeError):
        return None


class Collector:
    """Start with `start()`, stop with `stop()`; `url` is the HTTP address once started."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.url = ""
        self.store: Store | None = None
        self.consumer: Consumer | None = None
        self.metrics: CollectorMetrics | None = None
        self.jobs: Jobs | None = None
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._reports = asyncio.Semaphore(_MAX_CONCURRENT_REPORTS)
        self._stopped = False
        self._state_file = Path(settings.state_dir) / STATE_FILE
        self._db_path = Path(settings.db_path).resolve()

    async def start(self) -> None:
        self.store = await asyncio.to_thread(
            partial(Store.open, self.settings.db_path, threads=self.settings.db_threads or None)
        )
        self.consumer = Consumer(self.settings.consumer, self.store)
        self.metrics = CollectorMetrics(self.consumer)
        app = web.Application()
        app[_COLLECTOR] = self
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get("/v1/report", _report)
        app.router.add_get("/v1/decisions", _decisions)
        app.router.add_get("/v1/export/plan", _export_plan)
        app.router.add_get("/v1/export/day", _export_day)
        add_routes(app.router, self.read)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self.store.close()
            raise
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._task = asyncio.create_task(self.consumer.run(), name="collector-consumer")
        self.jobs = Jobs(self.settings.jobs, self.store)
        self.jobs.start()
        info = CollectorInfo(
            url=self.url,
            pid=os.getpid(),
            db=str(self._db_path),
            started_ms=time.time_ns() // 1_000_000,
        )
        _write_atomically(self._state_file, msgspec.json.encode(info))
        log.info(
            "collector.started",
            url=self.url,
            db=info.db,
            nats_url=self.settings.consumer.nats_url,
            durable=self.settings.consumer.durable,
            batch_size=self.settings.consumer.batch_size,
        )

    async def stop(self) -> None:
        """Finish the batch in hand, ack it, then close HTTP, NATS and the database."""
        if self._stopped:
            return
        self._stopped = True
        self._state_file.unlink(missing_ok=True)
        if self.jobs is not None:
            await self.jobs.stop()
        if self.consumer is not None:
            self.consumer.stop()
            if self._task is not None:
                await self._task
            await self.consumer.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.store is not None:
            self.store.close()
        log.info("collector.stopped")

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], _T]) -> _T:
        """Run `fn` on a fresh cursor (its own MVCC snapshot) in a worker thread."""
        assert self.store is not None
        store = self.store

        def run() -> _T:
            with store.cursor() as cur:
                return fn(cur)

        async with self._reports:
            return await asyncio.to_thread(run)


_COLLECTOR: Final = web.AppKey("collector", Collector)


async def _healthz(request: web.Request) -> web.Response:
    consumer = request.app[_COLLECTOR].consumer
    stats = msgspec.to_builtins(consumer.stats) if consumer else {}
    return web.json_response({"status": "ok", "stats": stats})


async def _readyz(request: web.Request) -> web.Response:
    consumer = request.app[_COLLECTOR].consumer
    ready = consumer is not None and consumer.ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


def _query(request: web.Request) -> ReportQuery | QueryError:
    params = request.query
    return parse_query(
        group_by=params.get("group_by"),
        since=params.get("since"),
        until=params.get("until"),
        by=params.get("by"),
        filters=params.getall("filter", []),
    )


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _rendered(
    build: Callable[..., _T], show: Callable[[_T, Format], str]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A read-only endpoint: parse the query and format, build on a reader, render."""

    async def handle(request: web.Request) -> web.Response:
        fmt = parse_format(request.query.get("format", "json"))
        query = _query(request)
        if fmt is None:
            return _bad_request(f"format must be one of {', '.join(FORMATS)}")
        if isinstance(query, QueryError):
            return _bad_request(query.message)
        result = await request.app[_COLLECTOR].read(partial(build, query=query))
        return web.Response(text=show(result, fmt), content_type=CONTENT_TYPES[fmt])

    return handle


_report = _rendered(build_report, render)
_decisions = _rendered(build_decisions, render_decisions)


async def _export_plan(request: web.Request) -> web.Response:
    query = _query(request)
    if isinstance(query, QueryError):
        return _bad_request(query.message)
    plan = await request.app[_COLLECTOR].read(
        partial(plan_export, since_ms=query.since_ms, until_ms=query.until_ms)
    )
    return web.json_response(body=msgspec.json.encode(plan))


async def _export_day(request: web.Request) -> web.Response:
    # The collector writes the file into its own scratch folder and sends the bytes: a caller
    # on loopback never gets to choose a path this process writes to.
    day = parse_day(request.query.get("day", ""))
    if day is None:
        return _bad_request("day must be YYYY-MM-DD")

    def export(cur: duckdb.DuckDBPyConnection) -> bytes:
        with tempfile.TemporaryDirectory(prefix="sidegate-export-") as scratch:
            path = Path(scratch) / FILE_NAME
            write_day(cur, day, path)
            return path.read_bytes()

    body = await request.app[_COLLECTOR].read(export)
    return web.Response(body=body, content_type="application/vnd.apache.parquet")


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def configure_logging() -> None:
    """structlog as one JSON object per line on stderr, as every Sidegate service logs."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def serve(settings: CollectorSettings) -> int:
    """Run a collector until SIGINT or SIGTERM; the process entry point."""
    # Each batch allocates many short-lived, acyclic objects (decoded records, column lists);
    # the default gen-0 threshold of 700 makes the cyclic collector rescan them constantly.
    gc.set_threshold(50_000, 20, 20)
    collector = Collector(settings)
    try:
        await collector.start()
    # The port or the database file is taken, or the database is from a newer collector.
    except (OSError, duckdb.IOException, StoreError) as exc:
        log.error("collector.start_failed", error=str(exc))
        return 1
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        await collector.stop()
    return 0
