"""Relaying an upstream response to the client: bytes through, usage out, streams unbuffered.

Same-format answers pass through byte for byte while a `Meter` reads usage on the way; answers
from a provider of another format are decoded into neutral values and re-encoded for the
caller, event by event. A stream's response is only started once its first event is ready, so
an upstream that fails before sending anything can still be retried (`StreamNotStarted`); once
bytes have reached the client, a failure is reported inside the stream in its format.
"""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web

from collector.record import ErrorClass
from sidecar.context import RequestContext
from sidecar.errors import UpstreamFailure, UpstreamStreamBroken, UpstreamTimeout, sse_error_event
from sidecar.providers.base import (
    Ingress,
    Meter,
    Reply,
    StreamDecoder,
    StreamEncoder,
    UpstreamStreamError,
)
from sidecar.usage import TokenUsage

# Upstream response headers worth passing to the app; hop-by-hop and provider-account
# headers (org ids, account rate limits) stay behind the sidecar.
_PASS_HEADERS = ("content-type", "openai-processing-ms", "retry-after")
_READ_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)


class Outcome:
    """What forwarding and the relay learned about the request, for the usage record."""

    __slots__ = (
        "attempts",
        "billable",
        "capture",
        "denied",
        "error_class",
        "error_message",
        "fallback_from",
        "idempotent_replay",
        "model_served",
        "retries",
        "status_code",
        "stream_text",
        "ttft_ms",
        "upstream_latency_ms",
        "usage",
    )

    def __init__(self) -> None:
        self.status_code = 0
        self.error_class: ErrorClass | None = None
        self.denied = False  # a policy said no, as opposed to a failure
        self.error_message = ""
        self.usage = TokenUsage()
        self.model_served = ""
        self.ttft_ms: float | None = None
        self.upstream_latency_ms: float | None = None
        # Events sent to the client on a stream, kept only to estimate an aborted stream's output.
        self.stream_text: list[bytes] = []
        self.attempts = 0
        self.retries = 0
        self.fallback_from = ""
        # The last attempt may have been processed (and billed) upstream: estimate if unreported.
        self.billable = False
        self.idempotent_replay = False
        # The bytes sent to the client, kept for an idempotency key (None: not wanted or too big).
        self.capture: bytearray | None = None

    def fail(self, error_class: ErrorClass, message: str) -> None:
        self.error_class = error_class
        self.error_message = message[:500]


class StreamNotStarted(UpstreamFailure):
    """The upstream failed before the first event reached the client: safe to retry."""

    error_class = "upstream_unavailable"


def response_headers(ctx: RequestContext, upstream: aiohttp.ClientResponse) -> dict[str, str]:
    headers = {h: upstream.headers[h] for h in _PASS_HEADERS if h in upstream.headers}
    headers["x-request-id"] = ctx.record_id
    headers.update(ctx.response_headers)
    return headers


def _captured(outcome: Outcome, data: bytes, limit: int) -> None:
    capture = outcome.capture
    if capture is not None:
        if len(capture) + len(data) > limit:
            outcome.capture = None  # too big to keep; the key is then released, not stored
        else:
            capture += data


async def relay_body(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    outcome: Outcome,
    meter: Meter,
) -> web.Response:
    """A non-streamed same-format answer: read once, pass the same bytes on, read usage."""
    body = await upstream.read()
    outcome.status_code = upstream.status
    outcome.upstream_latency_ms = ctx.elapsed_ms()
    meter.body(body)
    _take_meter(outcome, meter)
    headers = response_headers(ctx, upstream)
    return web.Response(body=body, status=upstream.status, headers=headers)


async def relay_translated_body(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    outcome: Outcome,
    reply: Reply,
    ingress: Ingress,
) -> web.Response:
    """A non-streamed answer from another format, already decoded into `reply`."""
    outcome.status_code = upstream.status
    outcome.upstream_latency_ms = ctx.elapsed_ms()
    outcome.model_served = reply.model
    outcome.usage = reply.usage
    headers = response_headers(ctx, upstream)
    headers["content-type"] = "application/json"
    return web.Response(body=ingress.reply(reply), status=upstream.status, headers=headers)


def _take_meter(outcome: Outcome, meter: Meter) -> None:
    outcome.model_served = meter.model or outcome.model_served
    if meter.usage is not None:
        outcome.usage = meter.usage
    if meter.error and outcome.error_class is None:
        outcome.fail("upstream_error", meter.error)


class SSESplitter:
    """Cuts a byte stream into complete SSE events, keeping any partial tail for later."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._tail = events.pop()
        return [e + b"\n\n" for e in events if e]

    @property
    def pending(self) -> bytes:
        return self._tail


class _Stream:
    """The client side of a relayed stream: started lazily, written event by event."""

    __slots__ = ("ctx", "headers", "limit", "outcome", "response", "status")

    def __init__(
        self, ctx: RequestContext, upstream: aiohttp.ClientResponse, outcome: Outcome, limit: int
    ) -> None:
        self.ctx = ctx
        self.outcome = outcome
        self.status = upstream.status
        self.headers = response_headers(ctx, upstream)
        self.headers["content-type"] = "text/event-stream; charset=utf-8"
        self.headers["cache-control"] = "no-cache"
        self.response: web.StreamResponse | None = None
        self.limit = limit

    async def write(self, data: bytes) -> None:
        if self.response is None:
            self.outcome.upstream_latency_ms = self.ctx.elapsed_ms()
            self.response = web.StreamResponse(status=self.status, headers=self.headers)
            await self.response.prepare(self.ctx.request)
            self.outcome.status_code = self.status
        if self.outcome.ttft_ms is None:
            self.outcome.ttft_ms = self.ctx.elapsed_ms()
        _captured(self.outcome, data, self.limit)
        await self.response.write(data)

    async def broken(self, failure: UpstreamFailure) -> web.StreamResponse:
        """The upstream failed: retryable if nothing was sent, else an error event in-stream."""
        if self.response is None:
            raise StreamNotStarted(failure.message, deployment=failure.deployment) from failure
        self.outcome.fail(failure.error_class, failure.message)
        self.outcome.capture = None
        event = sse_error_event(failure.to_reject(), self.ctx.route.ingress)
        with contextlib.suppress(ConnectionResetError):  # the client is gone too
            await self.response.write(event)
        return self.response

    async def end(self) -> web.StreamResponse:
        if self.response is None:  # an empty but well-formed stream
            await self.write(b"")
        assert self.response is not None
        await self.response.write_eof()
        return self.response


async def relay_stream(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    outcome: Outcome,
    meter: Meter,
    *,
    capture_limit: int = 0,
) -> web.StreamResponse:
    """Forward each SSE event as it arrives; the meter reads usage and the served model."""
    stream = _Stream(ctx, upstream, outcome, capture_limit)
    splitter = SSESplitter()
    try:
        async for chunk in upstream.content.iter_any():
            out = [e for e in splitter.feed(chunk) if not meter.event(e)]
            if out:
                outcome.stream_text.extend(out)
                await stream.write(b"".join(out))
        if splitter.pending.strip():
            await stream.write(splitter.pending)
    except _READ_ERRORS as exc:
        _take_meter(outcome, meter)
        return await stream.broken(_interrupted(exc))
    except ConnectionResetError:
        return _client_gone(outcome, stream)
    finally:
        _take_meter(outcome, meter)
    return await stream.end()


async def relay_translated_stream(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    outcome: Outcome,
    decoder: StreamDecoder,
    encoder: StreamEncoder,
    *,
    capture_limit: int = 0,
) -> web.StreamResponse:
    """Decode the provider's events as they arrive and write them in the caller's format."""
    stream = _Stream(ctx, upstream, outcome, capture_limit)
    started = False
    try:
        async for chunk in upstream.content.iter_any():
            events = decoder.feed(chunk)
            if not events:
                continue
            out = b""
            if not started:
                started = True
                out = encoder.start(decoder.id, decoder.model, decoder.usage)
            for event in events:
                out += encoder.encode(event)
            if out:
                outcome.stream_text.append(out)
                await stream.write(out)
        if not started:
            started = True
            await stream.write(encoder.start(decoder.id, decoder.model, decoder.usage))
        await stream.write(encoder.finish(decoder.usage))
    except UpstreamStreamError as exc:
        _take_decoder(outcome, decoder)
        return await stream.broken(exc)
    except _READ_ERRORS as exc:
        _take_decoder(outcome, decoder)
        return await stream.broken(_interrupted(exc))
    except ConnectionResetError:
        return _client_gone(outcome, stream)
    finally:
        _take_decoder(outcome, decoder)
    return await stream.end()


def _take_decoder(outcome: Outcome, decoder: StreamDecoder) -> None:
    outcome.model_served = decoder.model or outcome.model_served
    if decoder.usage is not None:
        outcome.usage = decoder.usage


def _interrupted(exc: BaseException) -> UpstreamFailure:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("The upstream stream ran past its read or total timeout.")
    reason = str(exc) or exc.__class__.__name__
    return UpstreamStreamBroken(f"The upstream stream was interrupted: {reason}")


def _client_gone(outcome: Outcome, stream: _Stream) -> web.StreamResponse:
    # The client went away mid-stream; closing `upstream` (by our caller) cancels the call.
    outcome.fail("client_closed", "The client closed the connection mid-stream.")
    outcome.capture = None
    return stream.response or web.StreamResponse()
