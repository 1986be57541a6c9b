"""Per-request telemetry from the finished usage record, and the optional admin listener.

`Telemetry.observe` is one of the proxy's observers: it runs once per finished request and
turns the record into metrics, the access-log line and (with `sidegate[otel]`) a span, so the
request path itself does no telemetry work. The admin listener serves only /healthz, /readyz
and /metrics on an address the kubelet and Prometheus can dial (the proxy listens on loopback),
and never the proxy routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from collector.record import UsageRecord
from sidecar.accesslog import AccessLog
from sidecar.bundles import PolicyState
from sidecar.context import RequestContext
from sidecar.emitter import UsageEmitter
from sidecar.metrics import SidecarMetrics
from sidecar.tracing import SpanSink, span_ids

log = structlog.get_logger("sidegate.sidecar.telemetry")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN_PATHS = ("/healthz", "/readyz", "/metrics")


class Telemetry:
    def __init__(
        self,
        *,
        state: PolicyState,
        emitter: UsageEmitter,
        circuits: Callable[[], Mapping[str, str]] | None = None,
        spans: SpanSink | None = None,
    ) -> None:
        self.metrics = SidecarMetrics(state=state, emitter=emitter, circuits=circuits)
        self.access = AccessLog()
        self.spans = spans

    def observe(self, ctx: RequestContext, record: UsageRecord) -> None:
        """The proxy observer. Must run before the usage emitter: a request refused before the
        `trace` stage gets its trace id here, so its record and its span still correlate."""
        try:
            ids = span_ids(ctx)
            if not record.trace_id:
                record.trace_id = ids.trace_id
            self.metrics.observe(record)
            self.access.write(record)
            if self.spans is not None:
                self.spans.export(ids, record)
        except Exception:
            # Boundary: telemetry must never fail a request, nor cost it its usage record,
            # which the emitter observer after this one still has to send.
            log.exception("telemetry_failed", request_id=record.id)

    async def close(self) -> None:
        """Flush batched spans; the exporter may block on the network, so off the loop."""
        if self.spans is not None:
            await asyncio.to_thread(self.spans.shutdown)


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) to its parts; raises ValueError naming the bad value."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class AdminListener:
    """A second, small HTTP server: health, readiness and metrics only."""

    def __init__(self, listen: str, handlers: Mapping[str, Handler]) -> None:
        self.host, self.port = split_listen(listen)
        self.app = web.Application()
        for path in ADMIN_PATHS:
            self.app.router.add_get(path, handlers[path])
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen, or raise OSError: probes aimed at a port nobody serves would only fail later."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("admin_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
