"""Relaying an upstream response to the client: bytes through, usage out, streams unbuffered."""

from __future__ import annotations

import contextlib

import aiohttp
import msgspec
from aiohttp import web

from collector.record import ErrorClass
from sidecar.context import RequestContext
from sidecar.errors import UpstreamStreamBroken, class_for_status, sse_error_event
from sidecar.usage import TokenUsage, openai_response_decoder

# Upstream response headers worth passing to the app; hop-by-hop and provider-account
# headers (org ids, account rate limits) stay behind the sidecar.
_PASS_HEADERS = ("content-type", "openai-processing-ms", "retry-after")
_USAGE_MARK = b'"usage"'
_NULL_USAGE_MARKS = (b'"usage":null', b'"usage": null')
_DONE = b"data: [DONE]"


class Outcome:
    """What the relay learned about the response, for the usage record."""

    __slots__ = (
        "denied",
        "error_class",
        "error_message",
        "model_served",
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
        # Content deltas seen on a stream, kept only to estimate an aborted stream's output.
        self.stream_text: list[bytes] = []

    def fail(self, error_class: ErrorClass, message: str) -> None:
        self.error_class = error_class
        self.error_message = message[:500]


def response_headers(ctx: RequestContext, upstream: aiohttp.ClientResponse) -> dict[str, str]:
    headers = {h: upstream.headers[h] for h in _PASS_HEADERS if h in upstream.headers}
    headers["x-request-id"] = ctx.record_id
    headers.update(ctx.response_headers)
    return headers


async def relay_body(
    ctx: RequestContext, upstream: aiohttp.ClientResponse, outcome: Outcome
) -> web.Response:
    """A non-streamed response: read once, pass the same bytes on, decode only usage."""
    body = await upstream.read()
    outcome.status_code = upstream.status
    outcome.upstream_latency_ms = ctx.elapsed_ms()
    if upstream.status < 400:
        try:
            view = openai_response_decoder.decode(body)
        except msgspec.DecodeError:
            view = None
        if view is not None:
            outcome.model_served = view.model
            if view.usage is not None:
                outcome.usage = view.usage.normalise()
    else:
        # Provider errors in the caller's own format pass through unchanged.
        outcome.fail(class_for_status(upstream.status), body[:500].decode(errors="replace"))
    return web.Response(body=body, status=upstream.status, headers=response_headers(ctx, upstream))


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


async def relay_stream(
    ctx: RequestContext,
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    outcome: Outcome,
) -> web.StreamResponse:
    """Forward each SSE event as it arrives; read usage and the served model on the way."""
    outcome.status_code = upstream.status
    response = web.StreamResponse(status=upstream.status, headers=response_headers(ctx, upstream))
    response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    splitter = SSESplitter()
    strip = ctx.strip_usage_chunk
    first = True
    try:
        async for chunk in upstream.content.iter_any():
            out = []
            for event in splitter.feed(chunk):
                if first:
                    first = False
                    outcome.upstream_latency_ms = ctx.elapsed_ms()
                    _note_model(event, outcome)
                if _USAGE_MARK in event and not any(m in event for m in _NULL_USAGE_MARKS):
                    if _read_usage(event, outcome) and strip:
                        continue
                elif not event.startswith(_DONE):
                    outcome.stream_text.append(event)
                out.append(event)
            if out:
                if outcome.ttft_ms is None:
                    outcome.ttft_ms = ctx.elapsed_ms()
                await response.write(b"".join(out))
        if splitter.pending.strip():
            await response.write(splitter.pending)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        # The upstream went away mid-stream: tell the client inside the stream, in its format.
        broken = UpstreamStreamBroken(f"The upstream stream was interrupted: {exc}")
        outcome.fail(broken.error_class, broken.message)
        try:
            await response.write(sse_error_event(broken.to_reject(), ctx.route.ingress))
        except ConnectionResetError:
            return response
    except ConnectionResetError:
        # The client went away mid-stream; closing `upstream` (by our caller) cancels the call.
        outcome.fail("client_closed", "The client closed the connection mid-stream.")
        return response
    await response.write_eof()
    return response


def _note_model(event: bytes, outcome: Outcome) -> None:
    data = event.partition(b"data: ")[2]
    with contextlib.suppress(msgspec.DecodeError):
        outcome.model_served = openai_response_decoder.decode(data).model


def _read_usage(event: bytes, outcome: Outcome) -> bool:
    """Take usage from a chunk; True if it was the usage-only chunk (no choices)."""
    data = event.partition(b"data: ")[2]
    try:
        view = openai_response_decoder.decode(data)
    except msgspec.DecodeError:
        return False
    if view.usage is None:
        return False
    outcome.usage = view.usage.normalise()
    return b'"choices":[]' in data or b'"choices": []' in data
