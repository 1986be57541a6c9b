"""The model-call handler: body in, pipeline, upstream, relay, and one usage record out."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from collector.record import UsageRecord
from sidecar.accounting import build_record
from sidecar.bundles import PolicyState
from sidecar.context import RequestContext
from sidecar.errors import Reject, UpstreamFailure, UpstreamUnavailable, error_response
from sidecar.pipeline import Pipeline
from sidecar.relay import Outcome, relay_body, relay_stream
from sidecar.routes import Route
from sidecar.upstream import UpstreamClient

_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_json_encode = msgspec.json.Encoder().encode
NO_BUNDLE = Reject(
    "policy_unavailable",
    "No verified policy bundle is active in this sidecar yet; retry shortly.",
    code="policy_unavailable",
    retry_after_s=1,
)


Observer = Callable[[RequestContext, UsageRecord], None]
"""Called once per finished request (usage emission, metrics, access log); must not block."""


def new_record_id() -> str:
    return os.urandom(16).hex()


def patched_body(body: bytes, patch: dict[str, Any]) -> bytes:
    """Apply top-level rewrites (model, stream_options, caps). Dicts merge, scalars replace."""
    document = _json_decode(body)
    for key, value in patch.items():
        current = document.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            document[key] = {**current, **value}
        else:
            document[key] = value
    return _json_encode(document)


class Proxy:
    def __init__(
        self,
        *,
        state: PolicyState,
        pipeline: Pipeline,
        upstream: UpstreamClient,
        observers: Sequence[Observer],
        sidecar_id: str,
        max_body_bytes: int,
    ) -> None:
        self.state = state
        self.pipeline = pipeline
        self.upstream = upstream
        self.observers = tuple(observers)
        self.sidecar_id = sidecar_id
        self.max_body_bytes = max_body_bytes

    def handler(self, route: Route) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, route)

        return handle

    async def handle(self, request: web.Request, route: Route) -> web.StreamResponse:
        ctx = RequestContext(request, route, new_record_id())
        outcome = Outcome()
        sent = False
        try:
            response, sent = await self._serve(ctx, outcome)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): the upstream call is
            # cancelled with us, and the record below still says what happened.
            outcome.status_code = outcome.status_code or 499
            outcome.fail("client_closed", "The client closed the connection.")
            sent = sent or ctx.deployment is not None
            raise
        finally:
            record = build_record(ctx, outcome, sidecar_id=self.sidecar_id, sent_upstream=sent)
            for observe in self.observers:
                observe(ctx, record)
        return response

    async def _serve(
        self, ctx: RequestContext, outcome: Outcome
    ) -> tuple[web.StreamResponse, bool]:
        bundle = self.state.active
        if bundle is None:
            return self._deny(ctx, outcome, NO_BUNDLE, denied=False), False
        ctx.bundle = bundle
        too_large = await self._read_body(ctx)
        if too_large is not None:
            return self._deny(ctx, outcome, too_large, denied=False), False
        reject = self.pipeline.run(ctx)
        if reject is not None:
            policy = reject.error_class not in ("invalid_request", "not_found")
            return self._deny(ctx, outcome, reject, denied=policy), False
        body = patched_body(ctx.body, ctx.body_patch) if ctx.body_patch else ctx.body
        try:
            upstream = await self.upstream.post(ctx, body)
        except UpstreamFailure as failure:
            # An unreachable upstream never saw the request; a timeout may have billed it.
            sent = not isinstance(failure, UpstreamUnavailable)
            return self._deny(ctx, outcome, failure.to_reject(), denied=False), sent
        async with upstream:
            assert ctx.view is not None
            streaming = ctx.view.is_stream and upstream.headers.get("content-type", "").startswith(
                "text/event-stream"
            )
            if streaming:
                return await relay_stream(ctx, ctx.request, upstream, outcome), True
            return await relay_body(ctx, upstream, outcome), True

    async def _read_body(self, ctx: RequestContext) -> Reject | None:
        request = ctx.request
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _too_large(limit)
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                return _too_large(limit)
            chunks.append(chunk)
        ctx.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return None

    def _deny(
        self, ctx: RequestContext, outcome: Outcome, reject: Reject, *, denied: bool
    ) -> web.Response:
        outcome.status_code = reject.status
        outcome.denied = denied
        outcome.fail(reject.record_class, reject.message)
        headers = {"x-request-id": ctx.record_id, **ctx.response_headers}
        return error_response(reject, ctx.route.ingress, headers)


def _too_large(limit: int) -> Reject:
    return Reject(
        "request_too_large",
        f"The request body exceeds this gateway's limit of {limit} bytes.",
        code="request_too_large",
    )
