"""OpenTelemetry spans from usage records: one CLIENT span per request with gen_ai.* attributes.

Needs the `sidegate[otel]` extra and is imported only by `sidecar.tracing.from_environment`.
The span is made after the request, from its record (start `ts_ms`, duration `latency_ms`), so
the request path does no tracing work. Its ids are the ones the `trace` stage already chose and
forwarded upstream: `_ChosenIds` hands them to the SDK, which otherwise would draw new ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from collector.record import UsageRecord
from sidecar import genai
from sidecar.tracing import SpanIds

SCOPE = "sidegate.sidecar"
SERVICE_NAME = "sidegate-sidecar"
_MAX_MODEL_CHARS = 256  # the caller's model string is free text: keep attributes bounded

try:
    _VERSION = version("sidegate")
except PackageNotFoundError:  # a source tree that was never installed
    _VERSION = "0"


class _ChosenIds(IdGenerator):
    """Returns the ids set just before each `start_span`; spans are made one at a time, on the
    event loop thread, so nothing else can interleave between setting and reading them."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True  # os.urandom, in sidecar.tracing


def attributes(record: UsageRecord) -> dict[str, AttributeValue]:
    """The span's attributes: GenAI conventions first, then the gateway's own `sidegate.*`."""
    attrs: dict[str, AttributeValue] = {
        genai.OPERATION_NAME: genai.operation_name(record),
        genai.REQUEST_STREAM: record.stream,
        "http.response.status_code": record.status_code,
        "sidegate.request.id": record.id,
        "sidegate.outcome": record.outcome,
        "sidegate.policy.revision": record.policy_revision,
    }
    optional: dict[str, AttributeValue] = {
        genai.PROVIDER_NAME: genai.provider_name(record),
        genai.REQUEST_MODEL: record.model_requested[:_MAX_MODEL_CHARS],
        genai.RESPONSE_MODEL: record.model_served[:_MAX_MODEL_CHARS],
        genai.ERROR_TYPE: record.error_class or "",
        "sidegate.tenant": record.tenant,
        "sidegate.app": record.app,
        "sidegate.endpoint": record.endpoint,
        "sidegate.model.resolved": record.model_resolved,
        "sidegate.deployment": record.deployment,
        "sidegate.fallback_from": record.fallback_from,
    }
    attrs.update((key, value) for key, value in optional.items() if value)
    if record.token_source != "none":
        attrs[genai.USAGE_INPUT_TOKENS] = record.input_tokens
        attrs[genai.USAGE_OUTPUT_TOKENS] = record.output_tokens
        attrs["sidegate.token_source"] = record.token_source
        counts = {
            genai.USAGE_CACHE_READ_INPUT_TOKENS: record.cached_input_tokens,
            genai.USAGE_CACHE_CREATION_INPUT_TOKENS: record.cache_write_tokens,
            genai.USAGE_REASONING_OUTPUT_TOKENS: record.reasoning_tokens,
        }
        attrs.update((key, value) for key, value in counts.items() if value)
    if record.ttft_ms is not None:
        attrs[genai.RESPONSE_TIME_TO_FIRST_CHUNK] = record.ttft_ms / 1000
    if record.cost_usd is not None:
        attrs["sidegate.cost_usd"] = float(record.cost_usd)
    if record.attempts:
        attrs["sidegate.attempts"] = record.attempts
        attrs["sidegate.retries"] = record.retries
    if record.decisions:
        attrs["sidegate.decisions"] = [
            f"{d.stage}/{d.rule}:{d.outcome}:{d.mode}" for d in record.decisions
        ]
    return attrs


def span_name(record: UsageRecord) -> str:
    """`{operation} {model}` as the conventions ask, with the catalogue model (bounded) rather
    than whatever the caller typed."""
    operation = genai.operation_name(record)
    return f"{operation} {record.model_resolved}" if record.model_resolved else operation


class OtelSpans:
    """A private TracerProvider (never the global one) that turns usage records into spans."""

    def __init__(
        self, processor: SpanProcessor, *, resource: Mapping[str, str] | None = None
    ) -> None:
        self._ids = _ChosenIds()
        # Resource.create merges OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME still wins.
        base = {"service.name": SERVICE_NAME, "service.version": _VERSION}
        self._provider = TracerProvider(
            resource=Resource.create({**base, **(resource or {})}),
            id_generator=self._ids,
            shutdown_on_exit=False,  # the app's cleanup flushes it
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer(SCOPE, _VERSION)

    @classmethod
    def otlp(cls, *, resource: Mapping[str, str] | None = None) -> OtelSpans:
        """Batched OTLP/HTTP export, configured by the SDK's OTEL_EXPORTER_OTLP_* variables."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(BatchSpanProcessor(OTLPSpanExporter()), resource=resource)

    @classmethod
    def to(cls, exporter: SpanExporter, *, resource: Mapping[str, str] | None = None) -> OtelSpans:
        """Unbatched export to `exporter`: each span is handed over as the request ends."""
        return cls(SimpleSpanProcessor(exporter), resource=resource)

    def export(self, ids: SpanIds, record: UsageRecord) -> None:
        self._ids.trace_id = int(ids.trace_id, 16)
        self._ids.span_id = int(ids.span_id, 16)
        parent = Context()  # never the ambient context: a request's parent is only its header
        if ids.parent_span_id:
            remote = SpanContext(
                trace_id=self._ids.trace_id,
                span_id=int(ids.parent_span_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if ids.sampled else 0),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote), parent)
        start_ns = record.ts_ms * 1_000_000
        span = self._tracer.start_span(
            span_name(record),
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes(record),
            start_time=start_ns,
        )
        if record.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, record.error_class or record.outcome))
        span.end(end_time=start_ns + int(record.latency_ms * 1_000_000))

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter; blocks, so run it off the event loop."""
        self._provider.shutdown()
