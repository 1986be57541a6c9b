"""policyd's Prometheus metrics: applies and publishes, the latest bundle, sidecar convergence.

Convergence comes from the status bucket every sidecar writes (`PolicyStore.status`), re-read
on a timer rather than per scrape: it walks every entry, and several policyd replicas share
one bucket. The instruments live in a registry of their own, so two services in one process
(tests) never clash; /metrics serves it after the process-wide one (the webhook's counters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Final, Literal

import nats.errors
import structlog
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from policyd.errors import PolicydError
from policyd.problems import Invalid
from policyd.publisher import Convergence, PolicyStore, Published, Unchanged

log = structlog.get_logger("sidegate.policyd")

ApplyResult = Literal["published", "unchanged", "invalid", "failed"]
SIDECAR_STATES: Final = ("converged", "behind", "rejecting", "stale")
REFRESH_INTERVAL_S: Final = 15.0  # the sidecars' own heartbeat (policyd.status.HEARTBEAT_S)
APPLY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def sidecar_state(view_stale: bool, current: bool, rejected: bool) -> str:
    """Where one sidecar stands against the latest revision; each counts in one state only."""
    if view_stale:
        return "stale"  # not seen lately: whatever it last said may no longer hold
    if current:
        return "converged"
    return "rejecting" if rejected else "behind"


class PolicydMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.applies = Counter(
            "sidegate_policyd_applies_total",
            "Policy folder applies by result: published (a new revision), unchanged, invalid "
            "(validation failed; the previous bundle stays) or failed (NATS).",
            ["result"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "sidegate_policyd_apply_seconds",
            "Time to compile, sign and publish the policy folder once.",
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.revision = 0  # latest published revision seen; 0 before any
        self.published_at_s = 0.0
        self.convergence: Convergence | None = None
        self.refreshed_at_s = 0.0
        self.registry.register(_StateCollector(self))

    def applied(self, result: Published | Unchanged | Invalid | None, seconds: float) -> None:
        """Count one apply (None: publishing failed); a published revision shows at once."""
        if isinstance(result, Published):
            self.applies.labels("published").inc()
            self.revision = max(self.revision, result.revision)
            self.published_at_s = time.time()
        elif isinstance(result, Unchanged):
            self.applies.labels("unchanged").inc()
            self.revision = max(self.revision, result.revision)
        elif isinstance(result, Invalid):
            self.applies.labels("invalid").inc()
        else:
            self.applies.labels("failed").inc()
        if result is not None and not isinstance(result, Invalid):
            self.apply_seconds.observe(seconds)

    async def refresh(self, store: PolicyStore) -> None:
        """Re-read the latest bundle and every sidecar's status."""
        latest = await store.latest()
        if latest is not None:
            self.revision = latest.revision
            self.published_at_s = latest.created_at / 1000
        self.convergence = await store.status()
        self.refreshed_at_s = time.time()

    async def follow(self, store: PolicyStore, *, interval_s: float = REFRESH_INTERVAL_S) -> None:
        """Refresh until cancelled; NATS trouble only delays the next numbers."""
        while True:
            try:
                await self.refresh(store)
            except (nats.errors.Error, TimeoutError, PolicydError) as exc:
                log.warning("policy_metrics_refresh_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(interval_s)

    def exposition(self) -> bytes:
        return exposition(self.registry)


class _StateCollector:
    def __init__(self, metrics: PolicydMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        m = self.metrics
        sidecars = GaugeMetricFamily(
            "sidegate_policyd_sidecars",
            "Sidecars reporting into the status bucket, by where they stand against the latest "
            "revision: converged, behind, rejecting (refused a bundle) or stale (not seen).",
            labels=["state"],
        )
        if with_values and m.convergence is not None:
            counts = dict.fromkeys(SIDECAR_STATES, 0)
            for view in m.convergence.sidecars:
                rejected = view.status.rejected_revision is not None
                counts[sidecar_state(view.stale, view.current, rejected)] += 1
            for state, count in counts.items():
                sidecars.add_metric([state], count)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value if with_values else None)

        return [
            gauge(
                "sidegate_policyd_bundle_revision",
                "The latest published bundle revision; 0 before the first.",
                m.revision,
            ),
            gauge(
                "sidegate_policyd_bundle_published_timestamp_seconds",
                "When the latest bundle was published (unix seconds); 0 before the first.",
                m.published_at_s,
            ),
            gauge(
                "sidegate_policyd_status_refreshed_timestamp_seconds",
                "When the sidecar convergence numbers were last read (unix seconds).",
                m.refreshed_at_s,
            ),
            sidecars,
        ]


def exposition(own: CollectorRegistry | None) -> bytes:
    """The process-wide metrics (the webhook's), then policyd's own: distinct families, so the
    two texts join into one valid exposition."""
    return generate_latest(REGISTRY) + (generate_latest(own) if own is not None else b"")


async def start_metrics_server(host: str, port: int, metrics: PolicydMetrics) -> web.AppRunner:
    """Plain-HTTP /metrics for a policyd without the webhook (whose TLS port serves it too)."""

    async def handle(_: web.Request) -> web.Response:
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
