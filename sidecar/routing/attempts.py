"""The attempt loop: try a deployment, classify the failure, back off, fall back, answer once.

For each model of the fallback chain, up to `retry.max_attempts` attempts are made, each on a
healthy deployment (untried ones first). A retry needs a token from the target deployment's
retry budget and waits a full-jitter backoff (or the provider's retry-after when it goes back
to the same deployment), all inside the request's deadline. A failure that is not retryable
is the answer; once a stream has sent bytes to the client nothing is retried. Every attempt's
verdict feeds the deployment's circuit breaker and latency average.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Protocol

import aiohttp
import msgspec
from aiohttp import web

from sidecar import tokens
from sidecar.context import RequestContext
from sidecar.errors import Reject, UpstreamFailure, class_for_status, error_response
from sidecar.policy import CompiledDeployment
from sidecar.providers.base import TranslationError
from sidecar.providers.bridge import EGRESS, Bridge, Call
from sidecar.relay import Outcome, StreamNotStarted
from sidecar.routing import retry
from sidecar.routing.health import DeploymentHealth, HealthBook
from sidecar.routing.plan import Step, chain, choose
from sidecar.routing.retry import Failure

_BODY_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)
_BAD_ANSWER = (msgspec.DecodeError, msgspec.ValidationError)


class Sender(Protocol):
    """Sends one call and returns once its headers arrived (`UpstreamClient.send`)."""

    def __call__(
        self, call: Call, *, deadline_at: float | None
    ) -> Awaitable[aiohttp.ClientResponse]: ...


class Forwarder:
    def __init__(
        self,
        *,
        upstream: Sender,
        health: HealthBook,
        rng: random.Random | None = None,
        capture_limit: int = 1024 * 1024,
    ) -> None:
        self.send = upstream
        self.health = health
        self.rng = rng or random.Random()
        self.capture_limit = capture_limit

    async def forward(
        self, ctx: RequestContext, outcome: Outcome, bridge: Bridge
    ) -> web.StreamResponse:
        assert ctx.model is not None
        steps = chain(ctx)
        if not steps:
            return answer_reject(ctx, outcome, _no_deployment(ctx))
        if ctx.route.wire == "count_tokens" and not _native_somewhere(steps, "count_tokens"):
            return count_locally(ctx, outcome)
        primary = steps[0].model
        last: Failure | None = None
        for index, step in enumerate(steps):
            result = await self._step(ctx, outcome, bridge, step, first=index == 0)
            if isinstance(result, web.StreamResponse):
                if index:
                    outcome.fallback_from = primary.name
                return result
            if result is None or (last is not None and _untranslatable_failure(result)):
                continue  # nothing new learned: the earlier failure stays the answer
            last = result
            if not last.retryable or _past_deadline(ctx):
                break
        if last is None:
            return answer_reject(ctx, outcome, self._all_open(steps))
        return answer_failure(ctx, outcome, last)

    async def _step(
        self,
        ctx: RequestContext,
        outcome: Outcome,
        bridge: Bridge,
        step: Step,
        *,
        first: bool,
    ) -> web.StreamResponse | Failure | None:
        """Attempts on one model; returns its answer, its last failure, or None (none made)."""
        policy = step.deployments[0].provider.retry
        tried: list[str] = []
        previous: CompiledDeployment | None = None
        failure: Failure | None = None
        for attempt in range(policy.max_attempts):
            preferred = ctx.deployment if first and attempt == 0 else None
            d = choose(step, self.health, self.rng, tried=tried, preferred=preferred)
            if d is None:
                break  # every circuit of this model is open: on to the fallback
            health = self.health.of(d)
            now = self.health.clock()
            if attempt == 0:
                health.budget.deposit(now)
            else:
                assert failure is not None
                delay = retry.backoff_s(policy, attempt, self.rng)
                if d is previous and failure.retry_after_s is not None:
                    if failure.retry_after_s * 1000 > policy.max_retry_after_ms:
                        break  # the provider asks for longer than we wait: fall back
                    delay = max(delay, failure.retry_after_s)
                if ctx.deadline_at is not None and time.monotonic() + delay >= ctx.deadline_at:
                    break
                if not health.budget.withdraw(d.provider.retry, now):
                    break  # the retry budget is spent: no storm on this deployment
                await asyncio.sleep(delay)
                outcome.retries += 1
            if not health.breaker.acquire(d.provider.breaker, self.health.clock()):
                break  # cannot happen after `choose` (no await between), but never call past it
            tried.append(d.label)
            previous = d
            result = await self._attempt(ctx, outcome, bridge, step, d, health)
            if isinstance(result, web.StreamResponse):
                return result
            failure = result
            if not failure.retryable:
                break
        return failure

    async def _attempt(
        self,
        ctx: RequestContext,
        outcome: Outcome,
        bridge: Bridge,
        step: Step,
        d: CompiledDeployment,
        health: DeploymentHealth,
    ) -> web.StreamResponse | Failure:
        outcome.attempts += 1
        ctx.deployment = d
        verdict: bool | None = None  # None: no verdict (cancelled), only the probe is freed
        clock = self.health.clock
        try:
            try:
                call = await bridge.call(d)
            except TranslationError as exc:
                verdict = True  # not the deployment's fault
                return _untranslatable(exc)
            except UpstreamFailure as exc:  # e.g. no AWS credentials to sign with
                verdict = True
                return retry.from_exception(exc)
            started = clock()
            try:
                upstream = await self.send(call, deadline_at=ctx.deadline_at)
            except UpstreamFailure as exc:
                verdict = False
                return retry.from_exception(exc)
            async with upstream:
                if upstream.status < 400:
                    # Successes only: a fast refusal (429) must not attract traffic.
                    health.latency.observe(clock() - started, clock())
                else:
                    try:
                        body = await upstream.read()
                    except _BODY_ERRORS:
                        body = b""
                    headers = upstream.headers
                    reject = call.failure(upstream.status, body, retry.retry_after_s(headers))
                    failure = retry.from_status(upstream.status, body, headers, reject, d.label)
                    verdict = not failure.unhealthy
                    return failure
                ctx.model = step.model
                outcome.billable = True
                try:
                    response = await bridge.relay(
                        call, upstream, outcome, capture_limit=self.capture_limit
                    )
                except StreamNotStarted as exc:
                    verdict = False
                    return msgspec.structs.replace(retry.from_exception(exc), retryable=True)
                except _BODY_ERRORS as exc:
                    verdict = False
                    return _broken_answer(f"The upstream answer was cut off: {exc!r}")
                except _BAD_ANSWER as exc:
                    verdict = False
                    return _broken_answer(f"The upstream answer could not be read: {exc}")
                verdict = outcome.error_class is None or outcome.error_class == "client_closed"
                return response
        finally:
            if verdict is None:
                health.breaker.release()
            else:
                health.breaker.record(d.provider.breaker, verdict, clock())

    def _all_open(self, steps: list[Step]) -> Reject:
        now = self.health.clock()
        waits = [
            self.health.of(d).breaker.reopens_in(d.provider.breaker, now)
            for step in steps
            for d in step.deployments
        ]
        return Reject(
            "upstream_unavailable",
            f"Every deployment of `{steps[0].model.name}` and its fallbacks is unavailable "
            "(circuit open); retry later.",
            code="circuit_open",
            retry_after_s=min(waits, default=1.0),
        )


def _native_somewhere(steps: list[Step], wire: str) -> bool:
    return any(wire in EGRESS[d.kind].native for step in steps for d in step.deployments)


def _past_deadline(ctx: RequestContext) -> bool:
    return ctx.deadline_at is not None and time.monotonic() >= ctx.deadline_at


def _no_deployment(ctx: RequestContext) -> Reject:
    assert ctx.model is not None
    return Reject(
        "invalid_request",
        f"The model `{ctx.model.name}` has no deployment here that can serve "
        f"{ctx.route.operation} requests.",
        code="no_deployment",
        param="model",
    )


def _untranslatable_failure(failure: Failure) -> bool:
    return failure.reject is not None and failure.reject.code == "untranslatable"


def _untranslatable(exc: TranslationError) -> Failure:
    reject = Reject("invalid_request", exc.message, code="untranslatable", param=exc.param)
    return Failure(reject=reject, status=400, retryable=False, unhealthy=False)


def _broken_answer(message: str) -> Failure:
    reject = Reject("upstream_error", message, code="upstream_error")
    return Failure(reject=reject, status=502, retryable=False, unhealthy=True, billable=True)


def answer_reject(ctx: RequestContext, outcome: Outcome, reject: Reject) -> web.Response:
    outcome.status_code = reject.status
    outcome.fail(reject.record_class, reject.message)
    headers = {"x-request-id": ctx.record_id, **ctx.response_headers}
    return error_response(reject, ctx.route.ingress, headers)


def answer_failure(ctx: RequestContext, outcome: Outcome, failure: Failure) -> web.Response:
    """The last failure, as the caller's answer: the provider's own bytes when same-format."""
    outcome.billable = failure.billable
    if failure.reject is not None:
        if failure.reject.error_class == "upstream_timeout" and _past_deadline(ctx):
            failure.reject = Reject(
                "upstream_timeout",
                "The request deadline passed before an upstream answered.",
                code="deadline_exceeded",
            )
        return answer_reject(ctx, outcome, failure.reject)
    outcome.status_code = failure.status
    outcome.fail(class_for_status(failure.status), failure.message)
    headers = {**failure.headers, "x-request-id": ctx.record_id, **ctx.response_headers}
    return web.Response(body=failure.body, status=failure.status, headers=headers)


def count_locally(ctx: RequestContext, outcome: Outcome) -> web.Response:
    """count_tokens for a model served only by non-Anthropic providers: the sidecar's own
    estimate (cl100k), since those providers have no equivalent endpoint for Messages."""
    assert ctx.view is not None
    estimate = tokens.count_prompt(ctx.view.prompt_texts())
    outcome.status_code = 200
    headers = {"x-request-id": ctx.record_id, **ctx.response_headers}
    return web.json_response({"input_tokens": estimate}, headers=headers)
