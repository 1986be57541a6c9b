"""The model-call handler: body in, pipeline, idempotency, forwarding, and one usage record out."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from collector.record import UsageRecord
from sidecar import tokens
from sidecar.accounting import build_record
from sidecar.bundles import PolicyState
from sidecar.context import RequestContext
from sidecar.errors import Reject, error_response
from sidecar.pipeline import Pipeline
from sidecar.providers.bridge import Bridge, patched_body
from sidecar.relay import Outcome
from sidecar.routes import Route
from sidecar.routing.attempts import Forwarder
from sidecar.routing.health import HealthBook
from sidecar.routing.idempotency import (
    IdempotencyCache,
    Mismatch,
    Owner,
    Replay,
    Stored,
    Wait,
)
from sidecar.routing.mirror import Mirror
from sidecar.upstream import UpstreamClient

__all__ = ["NO_BUNDLE", "Observer", "Proxy", "new_record_id", "patched_body"]

NO_BUNDLE = Reject(
    "policy_unavailable",
    "No verified policy bundle is active in this sidecar yet; retry shortly.",
    code="policy_unavailable",
    retry_after_s=1,
)
IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
_STREAM_TYPE = "text/event-stream; charset=utf-8"
_KEY_REUSED = Reject(
    "invalid_request",
    "This idempotency-key was already used with a different request body.",
    code="idempotency_key_reused",
)


Observer = Callable[[RequestContext, UsageRecord], None]
"""Called once per finished request (usage emission, metrics, access log); must not block."""


def new_record_id() -> str:
    return os.urandom(16).hex()


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
        health: HealthBook | None = None,
        idempotency: IdempotencyCache | None = None,
        mirror_sink: Callable[[UsageRecord], None] | None = None,
    ) -> None:
        self.state = state
        self.pipeline = pipeline
        self.upstream = upstream
        self.observers = tuple(observers)
        self.sidecar_id = sidecar_id
        self.max_body_bytes = max_body_bytes
        self.health = health or HealthBook()
        self.idempotency = idempotency or IdempotencyCache()
        self.forwarder = Forwarder(
            upstream=upstream.send,
            health=self.health,
            capture_limit=self.idempotency.max_answer_bytes,
        )
        self.mirror = Mirror(
            send=upstream.send,
            health=self.health,
            sink=mirror_sink or (lambda record: None),
            sidecar_id=sidecar_id,
        )

    def handler(self, route: Route) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, route)

        return handle

    async def close(self) -> None:
        await self.mirror.close()

    async def handle(self, request: web.Request, route: Route) -> web.StreamResponse:
        ctx = RequestContext(request, route, new_record_id())
        outcome = Outcome()
        try:
            response = await self._serve(ctx, outcome)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): the upstream call is
            # cancelled with us, and the record below still says what happened.
            outcome.status_code = outcome.status_code or 499
            outcome.fail("client_closed", "The client closed the connection.")
            outcome.billable = outcome.billable or outcome.attempts > 0
            raise
        finally:
            record = build_record(
                ctx, outcome, sidecar_id=self.sidecar_id, sent_upstream=outcome.billable
            )
            for observe in self.observers:
                observe(ctx, record)
        return response

    async def _serve(self, ctx: RequestContext, outcome: Outcome) -> web.StreamResponse:
        bundle = self.state.active
        if bundle is None:
            return self._deny(ctx, outcome, NO_BUNDLE, denied=False)
        ctx.bundle = bundle
        too_large = await self._read_body(ctx)
        if too_large is not None:
            return self._deny(ctx, outcome, too_large, denied=False)
        reject = self.pipeline.run(ctx)
        if reject is not None:
            policy = reject.error_class not in ("invalid_request", "not_found")
            return self._deny(ctx, outcome, reject, denied=policy)
        owner: Owner | None = None
        key = ctx.request.headers.get(IDEMPOTENCY_HEADER)
        if key:
            found = await self._idempotent(ctx, key)
            if isinstance(found, Replay):
                return self._replay(ctx, outcome, found.stored)
            if isinstance(found, Mismatch):
                return self._deny(ctx, outcome, _KEY_REUSED, denied=False)
            owner = found
            outcome.capture = bytearray()
        if ctx.view is not None and ctx.view.is_stream:
            # An aborted stream is estimated with tiktoken: have it ready before one aborts.
            tokens.load_in_background()
        bridge = Bridge(ctx)
        self.mirror.maybe_start(ctx, bridge)
        try:
            response = await self.forwarder.forward(ctx, outcome, bridge)
        except BaseException:
            if owner is not None:
                self.idempotency.complete(owner, None)  # release the key for a retry
            raise
        if owner is not None:
            self.idempotency.complete(owner, _stored(outcome, response))
        return response

    async def _idempotent(self, ctx: RequestContext, key: str) -> Replay | Mismatch | Owner:
        """Look the key up; while its first request still runs, wait for it (within the
        deadline) instead of making a second paid call."""
        scope = (ctx.identity.tenant, ctx.route.operation, key)
        fingerprint = IdempotencyCache.fingerprint(ctx.body)
        while True:
            found = self.idempotency.begin(scope, fingerprint)
            if not isinstance(found, Wait):
                return found
            timeout = None if ctx.deadline_at is None else ctx.deadline_at - time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(found.done), timeout)
            except TimeoutError:
                return Owner(scope, fingerprint)  # the first one is too slow: answer ourselves

    def _replay(self, ctx: RequestContext, outcome: Outcome, stored: Stored) -> web.Response:
        outcome.status_code = stored.status
        outcome.idempotent_replay = True
        headers = {
            "content-type": stored.content_type,
            "x-request-id": ctx.record_id,
            REPLAYED_HEADER: "true",
            **ctx.response_headers,
        }
        return web.Response(body=stored.body, status=stored.status, headers=headers)

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


def _stored(outcome: Outcome, response: web.StreamResponse) -> Stored | None:
    """The answer worth keeping for an idempotency key: a complete success only."""
    if outcome.error_class is not None or not 200 <= response.status < 300:
        return None
    if isinstance(response, web.Response):
        body = response.body
        if not isinstance(body, bytes):
            return None
        return Stored(response.status, response.content_type, body)
    if outcome.capture is None:
        return None  # a stream too large to keep
    return Stored(response.status, _STREAM_TYPE, bytes(outcome.capture))


def _too_large(limit: int) -> Reject:
    return Reject(
        "request_too_large",
        f"The request body exceeds this gateway's limit of {limit} bytes.",
        code="request_too_large",
    )
