"""W3C trace context in the sidecar: the `trace` stage, the span ids of a request, optional export.

Every request belongs to a trace: the caller's, when it sent a valid `traceparent`, or one the
sidecar starts. The `trace` stage picks this request's span id as soon as the caller is
identified and rewrites `identity.traceparent` to name that span as the parent, so the
traceparent forwarded upstream makes the provider's spans children of the sidecar's. The span
itself is made after the request, from its usage record, by an optional `SpanSink` (the
`sidegate[otel]` extra); without it the ids still correlate records, logs and upstream traces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import structlog

from collector.record import UsageRecord
from sidecar.context import RequestContext

log = structlog.get_logger("sidegate.sidecar.tracing")

TRACEPARENT = "traceparent"
SAMPLED = "01"
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceParent(NamedTuple):
    trace_id: str  # 32 lowercase hex
    parent_id: str  # 16 lowercase hex: the caller's span
    flags: str  # 2 lowercase hex; bit 0 is "sampled"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def parse_traceparent(value: str) -> TraceParent | None:
    """A valid `traceparent` (W3C Trace Context, level 1), or None to start a new trace.

    Uppercase hex is accepted and lowered; a future version is read by its first four fields,
    as the specification asks, and always forwarded as version 00.
    """
    parts = value.strip().lower().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if not _is_hex(version, 2) or version == "ff" or (version == "00" and len(parts) != 4):
        return None
    if not _is_hex(trace_id, 32) or trace_id == _ZERO_TRACE:
        return None
    if not _is_hex(parent_id, 16) or parent_id == _ZERO_SPAN or not _is_hex(flags, 2):
        return None
    return TraceParent(trace_id, parent_id, flags)


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


class TraceContext:
    """Stage `trace`: the request's trace id and its own span id, chosen before any upstream call.

    Runs right after `identify`, which stores the caller's header in `identity.traceparent`;
    this stage replaces it with the one to forward. It never refuses: a missing or malformed
    header starts a new, sampled trace instead (the sidecar is then the trace's root).
    """

    name = "trace"

    def __call__(self, ctx: RequestContext) -> None:
        identity = ctx.identity
        incoming = parse_traceparent(identity.traceparent) if identity.traceparent else None
        if incoming is None:
            trace_id, flags = new_trace_id(), SAMPLED
        else:
            trace_id, flags = incoming.trace_id, incoming.flags
        identity.trace_id = trace_id
        identity.traceparent = f"00-{trace_id}-{new_span_id()}-{flags}"


class SpanIds(NamedTuple):
    """Where a finished request's span sits in its trace."""

    trace_id: str
    span_id: str
    parent_span_id: str  # the caller's span; "" when the sidecar started the trace
    sampled: bool


def span_ids(ctx: RequestContext) -> SpanIds:
    """The ids the `trace` stage chose, or fresh ones for a request refused before it ran."""
    header = ctx.request.headers.get(TRACEPARENT, "")
    incoming = parse_traceparent(header) if header else None
    forwarded = ctx.identity.traceparent
    # The stage rewrites the header it was given; an unchanged (or empty) one means it never
    # ran: the body was unreadable, no bundle was active, or `identify` refused the caller.
    ours = parse_traceparent(forwarded) if forwarded and forwarded != header else None
    if ours is not None:
        trace_id, span_id = ours.trace_id, ours.parent_id
    else:
        trace_id = incoming.trace_id if incoming is not None else new_trace_id()
        span_id = new_span_id()
    if incoming is None:
        return SpanIds(trace_id, span_id, "", sampled=True)
    return SpanIds(trace_id, span_id, incoming.parent_id, sampled=incoming.sampled)


class SpanSink(Protocol):
    """Turns a finished request into a span; implemented with the OpenTelemetry SDK."""

    def export(self, ids: SpanIds, record: UsageRecord) -> None: ...

    def shutdown(self) -> None: ...


def otlp_configured(env: Mapping[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for traces over OTLP."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")}
    if "otlp" not in exporters:
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return any(env.get(name) for name in endpoints)


def from_environment(
    env: Mapping[str, str], *, resource: Mapping[str, str] | None = None
) -> SpanSink | None:
    """An OTLP/HTTP span sink when OTEL_* configures one and `sidegate[otel]` is installed.

    The SDK is imported only here, so a sidecar without tracing never loads it; endpoint,
    headers, sampler and resource come from the SDK's own OTEL_* variables.
    """
    if not otlp_configured(env):
        return None
    try:
        from sidecar.otelspans import OtelSpans
    except ImportError as exc:
        log.warning(
            "tracing_unavailable",
            reason="OTEL_EXPORTER_OTLP_ENDPOINT is set but sidegate[otel] is not installed",
            error=str(exc),
        )
        return None
    return OtelSpans.otlp(resource=resource)
