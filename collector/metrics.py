"""The collector's Prometheus metrics: ingest counters, batch commit time and consumer lag.

Counters are the consumer's own stats, read at scrape time; the commit-time histogram is fed
once per stored batch. Consumer lag needs one request to the server, so it is asked for when
Prometheus scrapes (bounded by a timeout), never on the ingest path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import nats.errors
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from collector.consumer import BatchOutcome, Consumer

log = structlog.get_logger("sidegate.collector")

COMMIT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_TIMEOUT_S: Final = 2.0  # under Prometheus's default 10 s scrape timeout

# ConsumerStats field -> (metric name without _total, help)
_COUNTERS: Final = {
    "received": (
        "sidegate_collector_records_received",
        "Usage records fetched from JetStream (redeliveries included).",
    ),
    "inserted": (
        "sidegate_collector_records_inserted",
        "Usage records stored for the first time: the ingest rate.",
    ),
    "duplicates": (
        "sidegate_collector_records_duplicate",
        "Records already stored (a spool replay or a redelivery), skipped by the primary key.",
    ),
    "dead_letters": (
        "sidegate_collector_dead_letters",
        "Records that could not be stored, moved to the dead-letter stream.",
    ),
    "batches": ("sidegate_collector_batches", "Batches committed."),
    "batch_errors": (
        "sidegate_collector_batch_errors",
        "Batches that failed before their ack; NATS redelivers them.",
    ),
    "fetch_errors": ("sidegate_collector_fetch_errors", "Failed pulls from JetStream."),
    "reconnects": ("sidegate_collector_nats_reconnects", "NATS reconnections."),
}


class CollectorMetrics:
    """The collector's metrics, in a registry of its own."""

    def __init__(self, consumer: Consumer, *, lag_timeout_s: float = LAG_TIMEOUT_S) -> None:
        self.consumer = consumer
        self.lag_timeout_s = lag_timeout_s
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "sidegate_collector_batch_commit_seconds",
            "Time to insert and commit one batch in DuckDB.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.lag: tuple[int, int] | None = None  # as of the last scrape
        consumer.batch_observers.append(self._batch_stored)
        self.registry.register(_ConsumerCollector(self))

    def _batch_stored(self, outcome: BatchOutcome) -> None:
        self.commit_seconds.observe(outcome.commit_s)

    async def refresh_lag(self) -> None:
        """Ask the server for the durable's backlog; unknown (no gauge) while it cannot say."""
        try:
            self.lag = await self.consumer.lag(timeout_s=self.lag_timeout_s)
        except (nats.errors.Error, TimeoutError) as exc:
            # Boundary: NATS is away or slow; the scrape still answers, without the lag.
            log.debug("collector.lag_unavailable", error=repr(exc))
            self.lag = None

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics in the Prometheus text format."""
        await self.refresh_lag()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _ConsumerCollector:
    def __init__(self, metrics: CollectorMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        consumer = self.metrics.consumer
        stats = consumer.stats
        families: list[Metric] = [
            CounterMetricFamily(name, doc, getattr(stats, field) if with_values else None)
            for field, (name, doc) in _COUNTERS.items()
        ]
        families.append(
            GaugeMetricFamily(
                "sidegate_collector_consumer_ready",
                "1 while the consumer is bound to its stream and connected.",
                (1 if consumer.ready else 0) if with_values else None,
            )
        )
        lag = self.metrics.lag if with_values else None
        families += [
            GaugeMetricFamily(
                "sidegate_collector_consumer_pending_messages",
                "Usage records in the stream not yet delivered to the collector (its lag).",
                lag[0] if lag is not None else None,
            ),
            GaugeMetricFamily(
                "sidegate_collector_consumer_ack_pending_messages",
                "Records delivered but not yet acknowledged (the batches in hand).",
                lag[1] if lag is not None else None,
            ),
        ]
        return families
