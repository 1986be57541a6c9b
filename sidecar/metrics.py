"""The sidecar's Prometheus metrics: per-request ones from the usage record, state read at scrape.

Per-request metrics are observed once per finished request from its usage record, off the
request path's decisions. Names follow the OpenTelemetry GenAI conventions where one exists
(`gen_ai.client.operation.duration` is `gen_ai_client_operation_duration_seconds`); the rest
are the gateway's own, prefixed `sidegate_`. State that exists anyway (the spool, the active
bundle, circuit breakers) is read when Prometheus scrapes, never updated per request.

Labels stay bounded: models and providers come from the policy catalogue, never from what the
caller typed; tenants, users, endpoints and request ids are never labels (they are on the usage
record). Each label that takes outside input also passes a `Bounded` guard, so even a provider
that names a new response model every time cannot grow the series without limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from collector.record import UsageRecord
from sidecar import genai
from sidecar.bundles import PolicyState
from sidecar.emitter import UsageEmitter

# The bucket boundaries the GenAI conventions advise for these two histograms.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
OTHER: Final = "_other"  # the value every label takes past its guard's limit
MAX_LABEL_VALUES: Final = 256
CIRCUIT_STATES: Final = ("closed", "open", "half_open")
CACHE_RESULTS: Final = frozenset({"hit", "miss", "off"})

_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
_GENAI_RESPONSE = (*_GENAI, "gen_ai_response_model")


class Bounded:
    """Admits the first `limit` distinct values of a label; later newcomers all read OTHER."""

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


class SidecarMetrics:
    """Every sidecar metric, in a registry of its own so several apps can share a process."""

    def __init__(
        self,
        *,
        state: PolicyState,
        emitter: UsageEmitter,
        circuits: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration as the app sees it (gen_ai.client.operation.duration); "
            "error_type is the error class, empty on success.",
            [*_GENAI_RESPONSE, "error_type"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens per request (gen_ai.client.token.usage).",
            [*_GENAI_RESPONSE, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to the first streamed chunk (gen_ai.client.operation.time_to_first_chunk); "
            "streaming requests only.",
            _GENAI_RESPONSE, buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "sidegate_requests_total",
            "Finished requests by operation, provider, outcome, HTTP status and error class.",
            ["gen_ai_operation_name", "provider", "outcome", "status_code", "error_class"],
            registry=r,
        )
        self.tokens = Counter(
            "sidegate_tokens_total",
            "Tokens by type: input and output (all of them), and their cache_read, "
            "cache_creation and reasoning parts.",
            ["provider", "model", "token_type"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "sidegate_cost_usd_total",
            "Spend in US dollars, at the policy's prices, for requests with a known price.",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "sidegate_policy_decisions_total",
            "Policy verdicts worth keeping (denied, would_deny, modified), by stage and mode.",
            ["stage", "mode", "outcome"], registry=r,
        )  # fmt: skip
        self.attempts = Counter(
            "sidegate_upstream_attempts_total", "Upstream calls made, retries included.",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "sidegate_upstream_retries_total", "Upstream calls that were retries.",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "sidegate_fallbacks_total", "Requests answered by a fallback model.",
            ["from_model", "to_model"], registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "sidegate_cache_requests_total", "Requests by response-cache result (hit, miss, off).",
            ["result"], registry=r,
        )  # fmt: skip
        self._models = Bounded()
        self._served = Bounded()
        self._providers = Bounded()
        self._stages = Bounded(64)
        r.register(_StateCollector(state, emitter, circuits or dict))

    def observe(self, record: UsageRecord) -> None:
        """Count one finished request; labels come from policy, never from the caller's text."""
        operation = genai.operation_name(record)
        provider = self._providers(record.provider)
        model = self._models(record.model_resolved)
        served = self._served(record.model_served)  # "" when no answer came back
        genai_labels = (operation, self._providers(genai.provider_name(record)), model, served)
        error = record.error_class or ""
        self.duration.labels(*genai_labels, error).observe(record.latency_ms / 1000)
        self.requests.labels(
            operation, provider, record.outcome, str(record.status_code), error
        ).inc()
        if record.token_source != "none":
            self.token_usage.labels(*genai_labels, "input").observe(record.input_tokens)
            self.token_usage.labels(*genai_labels, "output").observe(record.output_tokens)
            for kind, count in (
                ("input", record.input_tokens),
                ("output", record.output_tokens),
                ("cache_read", record.cached_input_tokens),
                ("cache_creation", record.cache_write_tokens),
                ("reasoning", record.reasoning_tokens),
            ):
                if count:
                    self.tokens.labels(provider, model, kind).inc(count)
        if record.stream and record.ttft_ms is not None:
            self.first_chunk.labels(*genai_labels).observe(record.ttft_ms / 1000)
        if record.cost_usd is not None and record.cost_usd > 0:
            self.cost.labels(provider, model).inc(float(record.cost_usd))
        for decision in record.decisions:
            self.decisions.labels(
                self._stages(decision.stage), decision.mode, decision.outcome
            ).inc()
        if record.attempts:
            self.attempts.labels(provider, model).inc(record.attempts)
        if record.retries:
            self.retries.labels(provider, model).inc(record.retries)
        if record.fallback_from:
            self.fallbacks.labels(self._models(record.fallback_from), model).inc()
        self.cache.labels(record.cache if record.cache in CACHE_RESULTS else OTHER).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics in the Prometheus text format."""
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _StateCollector:
    """Gauges read at scrape time from objects that keep the state anyway."""

    def __init__(
        self,
        state: PolicyState,
        emitter: UsageEmitter,
        circuits: Callable[[], Mapping[str, str]],
    ) -> None:
        self.state = state
        self.emitter = emitter
        self.circuits = circuits

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value if with_values else None)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value if with_values else None)

        active, emitter, spool = self.state.active, self.emitter, self.emitter.spool
        circuit = GaugeMetricFamily(
            "sidegate_circuit_state",
            "1 for the current circuit-breaker state of each deployment (provider/model).",
            labels=["deployment", "state"],
        )
        if with_values:
            for deployment, current in sorted(self.circuits().items()):
                for state in CIRCUIT_STATES:
                    circuit.add_metric([deployment, state], 1.0 if state == current else 0.0)
        return [
            gauge(
                "sidegate_bundle_revision",
                "Revision of the active policy bundle; 0 before any verified bundle.",
                active.revision if active is not None else 0,
            ),
            gauge(
                "sidegate_bundle_created_timestamp_seconds",
                "When policyd published the active bundle (unix seconds); 0 without one.",
                active.bundle.created_at / 1000 if active is not None else 0,
            ),
            gauge(
                "sidegate_bundle_rejected",
                "1 while the last bundle offered was refused (bad signature, older, invalid).",
                1 if self.state.rejection is not None else 0,
            ),
            gauge(
                "sidegate_nats_connected",
                "1 while the NATS connection is up.",
                1 if emitter.link.is_connected else 0,
            ),
            gauge(
                "sidegate_usage_pending_records",
                "Usage records queued in memory for JetStream.",
                emitter.pending,
            ),
            gauge("sidegate_usage_spool_bytes", "Bytes in the local usage spool.", len(spool)),
            gauge(
                "sidegate_usage_spool_max_bytes", "The usage spool's size limit.", spool.max_bytes
            ),
            gauge(
                "sidegate_usage_publish_lag_seconds",
                "Age of the oldest usage record JetStream has not acknowledged; 0 when none.",
                emitter.publish_lag_s(time.time()),
            ),
            counter(
                "sidegate_usage_published",
                "Usage records JetStream acknowledged.",
                emitter.published,
            ),
            counter(
                "sidegate_usage_spooled",
                "Usage records written to the spool because NATS did not take them.",
                emitter.spooled,
            ),
            counter(
                "sidegate_usage_dropped",
                "Usage records lost because the spool was full.",
                spool.overflowed,
            ),
            circuit,
        ]


class BudgetSource(Protocol):
    """What the budget ledger (sidecar/budgets.py) exposes to a scrape."""

    @property
    def results(self) -> Mapping[str, int]: ...

    def gauges(self) -> Iterable[tuple[str, float, float]]: ...


class BudgetCollector:
    """Budget state read at scrape time. Labelled by budget name, which policy bounds; never
    by scope value (tenants, users, keys), which callers choose."""

    def __init__(self, source: BudgetSource) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        remaining = GaugeMetricFamily(
            "sidegate_budget_remaining_usd",
            "Budget left in the current period as this sidecar knows it (the quota owner's "
            "last figure plus its own slice); the lowest among the budget's scope values.",
            labels=["budget"],
        )
        held = GaugeMetricFamily(
            "sidegate_budget_lease_usd",
            "Leased budget this sidecar holds unspent and unreserved, summed over scope values.",
            labels=["budget"],
        )
        requests = CounterMetricFamily(
            "sidegate_budget_lease_requests",
            "Lease requests to the quota owner by result: granted, exhausted, closed, "
            "unreachable (no answer), stale, invalid or unavailable.",
            labels=["result"],
        )
        if with_values:
            for budget, left, lease in self.source.gauges():
                remaining.add_metric([budget], left)
                held.add_metric([budget], lease)
            for result, count in sorted(self.source.results.items()):
                requests.add_metric([result], count)
        return [remaining, held, requests]
