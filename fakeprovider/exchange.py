"""The path every model request takes before its API handler, and the ways a handler answers.

`admit` reads and decodes the body, records the request in the stats, checks the credential
and the API's own preconditions, then applies a fault (from headers or the queue) and the
configured latency. A refusal comes back as a ready response (a value, not an exception);
otherwise the handler gets an `Exchange` and answers with `reply` or `stream`, which honour
the token delay and the "drop" and "slow" faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Generic, Literal, TypeVar, cast, overload

import msgspec
from aiohttp import web

from fakeprovider.dialects import Dialect
from fakeprovider.faults import HEADER_FAULT, Fault, HeaderFaultError, fault_from_headers
from fakeprovider.state import SETTINGS, STATE, FakeState, Settings, new_id

V = TypeVar("V")
Framing = Literal["sse", "json_array"]

_HANG_POLL_S = 0.05
_FLUSH_POLL_S = 0.001


async def hold_until_gone(request: web.Request) -> None:
    """Wait for the client to disconnect (a "hang"); server shutdown cancels it too."""
    # aiohttp offers no disconnect event without handler cancellation, so poll the transport.
    while (transport := request.transport) is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_HANG_POLL_S)


async def abort_connection(request: web.Request) -> None:
    """Cut the TCP connection after what was already written reaches the socket."""
    transport = request.transport
    if transport is None:
        return
    # abort() discards unsent bytes; the events before the cut must reach the client first.
    while transport.get_write_buffer_size() > 0 and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_FLUSH_POLL_S)
    transport.abort()


class SseStream:
    """An event stream that paces content events and honours "drop" by aborting the socket."""

    __slots__ = (
        "_delay_s", "_drop_after", "_end", "_framing", "_paced", "_sent",
        "closed", "request", "response",
    )  # fmt: skip

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        *,
        delay_s: float,
        drop_after: int | None,
        framing: Framing,
        event_end: bytes,
    ) -> None:
        self.request = request
        self.response = response
        self.closed = False
        self._delay_s = delay_s
        self._drop_after = drop_after
        self._framing = framing
        self._end = event_end
        self._sent = 0
        self._paced = False

    async def send(self, data: bytes, event: str | None = None, *, paced: bool = False) -> None:
        """Write one event; `paced` events after the first wait the token delay."""
        if self.closed:
            return  # dropped or gone: the handler runs on cheaply to its end
        if self._drop_after is not None and self._sent >= self._drop_after:
            await self._drop()
            return
        if paced:
            if self._paced and self._delay_s:
                await asyncio.sleep(self._delay_s)
            self._paced = True
        if self._framing == "json_array":
            frame = (b",\r\n" if self._sent else b"[") + data
        elif event is None:
            frame = b"data: " + data + self._end
        else:
            frame = b"event: " + event.encode() + b"\ndata: " + data + self._end
        try:
            await self.response.write(frame)
        except ConnectionResetError:
            self.closed = True  # the client went away; nothing left to answer
            return
        self._sent += 1

    async def finish(self) -> web.StreamResponse:
        if self._drop_after is not None and not self.closed:
            await self._drop()  # a drop fault never ends cleanly, even on a short stream
        if not self.closed:
            try:
                if self._framing == "json_array":
                    await self.response.write(b"]" if self._sent else b"[]")
                await self.response.write_eof()
            except ConnectionResetError:
                self.closed = True
        return self.response

    async def _drop(self) -> None:
        self.closed = True
        await abort_connection(self.request)


class Exchange(Generic[V]):
    """An admitted request: its decoded body, the model asked for, and the fault to act out."""

    __slots__ = ("body", "dialect", "fault", "model", "request", "settings", "state")

    def __init__(
        self,
        request: web.Request,
        body: V,
        model: str,
        dialect: Dialect,
        settings: Settings,
        state: FakeState,
        fault: Fault | None,
    ) -> None:
        self.request = request
        self.body = body
        self.model = model
        self.dialect = dialect
        self.settings = settings
        self.state = state
        self.fault = fault

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra) if extra else {}
        if self.dialect.request_id_header is not None:
            headers[self.dialect.request_id_header] = new_id("req_")
        return headers

    async def reply(
        self, payload: bytes, *, tokens: int = 0, headers: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        """A JSON answer, after the time it would take to generate `tokens` pieces."""
        if tokens and self.settings.token_delay_ms:
            await asyncio.sleep(self.settings.token_delay_ms * tokens / 1000)
        if self.fault is not None and self.fault.kind == "drop":
            await abort_connection(self.request)
            return web.Response(status=204)  # never sent: the connection is gone
        return web.Response(
            body=payload, content_type="application/json", headers=self._headers(headers)
        )

    async def stream(
        self,
        *,
        content_type: str = "text/event-stream; charset=utf-8",
        framing: Framing = "sse",
        event_end: bytes = b"\n\n",
    ) -> SseStream:
        """Start a streamed answer; headers go out with the first event."""
        delay_ms = self.settings.token_delay_ms
        drop_after = None
        if self.fault is not None:
            delay_ms += self.fault.chunk_delay_ms if self.fault.kind == "slow" else 0.0
            drop_after = self.fault.after_chunks if self.fault.kind == "drop" else None
        headers = self._headers({"content-type": content_type, "cache-control": "no-cache"})
        response = web.StreamResponse(headers=headers)
        await response.prepare(self.request)
        return SseStream(
            self.request,
            response,
            delay_s=delay_ms / 1000,
            drop_after=drop_after,
            framing=framing,
            event_end=event_end,
        )


@overload
async def admit(
    request: web.Request,
    dialect: Dialect,
    route: str,
    decoder: msgspec.json.Decoder[V],
    *,
    model: str | None = None,
) -> Exchange[V] | web.StreamResponse: ...


@overload
async def admit(
    request: web.Request,
    dialect: Dialect,
    route: str,
    decoder: None,
    *,
    model: str | None = None,
) -> Exchange[None] | web.StreamResponse: ...


async def admit(
    request: web.Request,
    dialect: Dialect,
    route: str,
    decoder: msgspec.json.Decoder[V] | None,
    *,
    model: str | None = None,
) -> Exchange[V] | Exchange[None] | web.StreamResponse:
    """Gate a model request; a ready response means it was refused or faulted."""
    settings = request.app[SETTINGS]
    state = request.app[STATE]
    raw = await request.read()
    body: V | None = None
    problem: str | None = None
    if decoder is not None:
        try:
            body = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            problem = str(exc)
        except msgspec.DecodeError:
            problem = dialect.malformed_json
    asked = model if model is not None else str(getattr(body, "model", "") or "")
    state.record(route, asked, request, raw)

    if settings.api_key is not None and dialect.credential(request) != settings.api_key:
        return dialect.error(401)
    refused = dialect.precheck(request)
    if refused is not None:
        return refused
    if problem is not None:
        return dialect.error(400, problem)

    fault: Fault | HeaderFaultError | None = None
    if HEADER_FAULT in request.headers:
        fault = fault_from_headers(request.headers)
    elif state.faults:
        fault = state.faults.take(route, request.path, asked)
    if isinstance(fault, HeaderFaultError):
        return dialect.error(400, fault.message)
    delay_ms = settings.latency_ms
    if fault is not None:
        state.record_fault(fault)
        if fault.status is not None:
            retry_after = fault.retry_after if fault.status == 429 else None
            return dialect.error(fault.status, retry_after_s=retry_after)
        if fault.kind == "hang":
            await hold_until_gone(request)
            return web.Response(status=204)  # never sent: the client is gone
        if fault.kind == "slow":
            delay_ms += fault.delay_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    # body is a V whenever a decoder was given (a problem returned above), else None.
    return Exchange(request, cast("V", body), asked, dialect, settings, state, fault)
