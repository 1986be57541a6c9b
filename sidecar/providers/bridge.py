"""How one request reaches one deployment: pass-through or translation, and back again.

A `Bridge` is made per request and asked for a `Call` per attempted deployment. When the
deployment's provider natively speaks the route's format, the caller's bytes go out unchanged
(re-encoded once, only if a stage rewrote a field or the deployment's model name differs);
otherwise the request is decoded into the hub once and encoded for each provider tried.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from sidecar.context import RequestContext
from sidecar.errors import Reject, class_for_status
from sidecar.policy import CompiledDeployment
from sidecar.providers.anthropic import API_VERSION, AnthropicEgress, MessagesIngress
from sidecar.providers.anthropic_stream import (
    MessagesMeter,
    MessagesStreamDecoder,
    MessagesStreamEncoder,
)
from sidecar.providers.anthropic_stream import streamed_text as messages_text
from sidecar.providers.azure import AZURE
from sidecar.providers.base import Egress, Ingress, Meter, TranslationError
from sidecar.providers.bedrock import BEDROCK
from sidecar.providers.chat import ChatRequest
from sidecar.providers.gemini import GEMINI
from sidecar.providers.openai import CHAT_INGRESS, OPENAI, OPENAI_COMPATIBLE, ChatMeter
from sidecar.providers.openai import streamed_text as chat_text
from sidecar.providers.responses import ResponsesIngress, ResponsesMeter
from sidecar.providers.responses import streamed_text as responses_text
from sidecar.providers.responses_stream import ResponsesStreamEncoder
from sidecar.relay import (
    Outcome,
    relay_body,
    relay_stream,
    relay_translated_body,
    relay_translated_stream,
)

EGRESS: dict[str, Egress] = {
    "openai": OPENAI,
    "openai_compatible": OPENAI_COMPATIBLE,
    "azure": AZURE,
    "anthropic": AnthropicEgress(MessagesStreamDecoder),
    "gemini": GEMINI,
    "bedrock": BEDROCK,
}
INGRESS: dict[str, Ingress] = {
    "chat": CHAT_INGRESS,
    "messages": MessagesIngress(MessagesStreamEncoder),
    "responses": ResponsesIngress(ResponsesStreamEncoder),
}
_TEXT = {"chat": chat_text, "messages": messages_text, "responses": responses_text}
_FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")  # same-format Anthropic only
_DELETE = object()

_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_json_encode = msgspec.json.Encoder().encode


def patched_body(body: bytes, patch: dict[str, Any]) -> bytes:
    """Apply top-level rewrites (model, stream_options, caps). Dicts merge, scalars replace."""
    document = _json_decode(body)
    for key, value in patch.items():
        current = document.get(key)
        if value is _DELETE:
            document.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            document[key] = {**current, **value}
        else:
            document[key] = value
    return _json_encode(document)


def streamed_text(wire: str, events: list[bytes]) -> str:
    """The text already streamed to a caller, from the events in its own format."""
    reader = _TEXT.get(wire)
    if reader is None:
        return ""
    # A translated stream's writes may hold several events each: read them one by one.
    return reader([e for chunk in events for e in chunk.split(b"\n\n") if e])


def can_serve(wire: str, kind: str) -> bool:
    """Whether a provider kind can answer a route, natively or through the hub."""
    egress = EGRESS.get(kind)
    if egress is None:
        return False
    return wire in egress.native or wire in INGRESS or wire == "count_tokens"


class Call(msgspec.Struct, kw_only=True):
    """One upstream request, ready to send."""

    deployment: CompiledDeployment
    egress: Egress
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    native: bool  # same format both ways: bytes pass through

    def failure(self, status: int, body: bytes, retry_after_s: float | None) -> Reject | None:
        """An upstream error in the caller's terms; None when its own bytes can pass through."""
        if self.native:
            return None
        return Reject(
            class_for_status(status),
            self.egress.error_message(body),
            code=f"upstream_{status}",
            retry_after_s=retry_after_s,
        )


class Bridge:
    __slots__ = ("_chat", "_native", "ctx", "ingress", "wire")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.wire = ctx.route.wire
        self.ingress = INGRESS.get(self.wire)
        self._chat: ChatRequest | None = None
        self._native: dict[tuple[str, bool], bytes] = {}

    def _hub(self) -> ChatRequest:
        """The caller's request in the hub format, decoded on first need only."""
        if self._chat is None:
            if self.ingress is None:
                raise TranslationError(f"{self.ctx.route.operation} requests cannot be translated.")
            ctx = self.ctx
            body = patched_body(ctx.body, ctx.body_patch) if ctx.body_patch else ctx.body
            try:
                self._chat = self.ingress.to_chat(body)
            except msgspec.ValidationError as exc:
                raise TranslationError(f"Invalid request body: {exc}") from exc
        return self._chat

    def _native_body(self, model: str, stream: bool) -> bytes:
        ctx = self.ctx
        assert ctx.view is not None
        key = (model, stream)
        body = self._native.get(key)
        if body is None:
            patch = dict(ctx.body_patch)
            if model != ctx.view.model:
                patch["model"] = model
            if stream != ctx.view.is_stream:  # a mirror: always a whole answer
                patch["stream"] = False
                patch["stream_options"] = _DELETE
            body = self._native[key] = patched_body(ctx.body, patch) if patch else ctx.body
        return body

    async def call(self, d: CompiledDeployment, *, stream: bool | None = None) -> Call:
        """The request for deployment `d`; raises TranslationError when it cannot be expressed."""
        ctx = self.ctx
        assert ctx.view is not None
        streaming = ctx.view.is_stream if stream is None else stream
        egress = EGRESS[d.kind]
        native = self.wire in egress.native
        if native:
            body = self._native_body(d.model, streaming)
            url = egress.url(d, self.wire, stream=streaming)
        else:
            body = egress.encode(self._hub(), d, stream=streaming)
            url = egress.url(d, "chat", stream=streaming)
        headers = d.request_headers()
        headers["x-request-id"] = ctx.record_id
        if ctx.identity.traceparent:
            headers["traceparent"] = ctx.identity.traceparent
        if egress.kind == "anthropic":
            incoming = ctx.request.headers
            if native:
                for name in _FORWARDED_HEADERS:
                    if name in incoming:
                        headers[name] = incoming[name]
            headers.setdefault("anthropic-version", API_VERSION)
        elif d.kind == "bedrock" and d.credential is None:
            headers.update(await BEDROCK.signer.sign(d, url, body))
        return Call(
            deployment=d, egress=egress, url=url, headers=headers, body=body,
            stream=streaming, native=native,
        )  # fmt: skip

    def meter(self) -> Meter:
        if self.wire == "messages" or self.wire == "count_tokens":
            return MessagesMeter()
        if self.wire == "responses":
            return ResponsesMeter()
        return ChatMeter(strip_usage_chunk=self.ctx.strip_usage_chunk)

    async def relay(
        self,
        call: Call,
        upstream: aiohttp.ClientResponse,
        outcome: Outcome,
        *,
        capture_limit: int = 0,
    ) -> web.StreamResponse:
        """The upstream's successful answer, relayed to the caller in its own format."""
        ctx = self.ctx
        content_type = upstream.headers.get("content-type", "")
        streaming = call.stream and content_type.startswith(call.egress.stream_content_types)
        if call.native:
            if streaming:
                return await relay_stream(
                    ctx, upstream, outcome, self.meter(), capture_limit=capture_limit
                )
            return await relay_body(ctx, upstream, outcome, self.meter())
        assert self.ingress is not None
        if streaming:
            decoder = call.egress.decoder(call.deployment)
            encoder = self.ingress.encoder(include_usage=not ctx.strip_usage_chunk)
            return await relay_translated_stream(
                ctx, upstream, outcome, decoder, encoder, capture_limit=capture_limit
            )
        reply = call.egress.reply(await upstream.read(), call.deployment)
        return await relay_translated_body(ctx, upstream, outcome, reply, self.ingress)
