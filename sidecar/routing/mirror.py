"""Mirroring: a copy of a request to a candidate model that never affects the caller's answer.

A model with `mirror: {model, percent}` sends that share of its requests, once more, to the
candidate, in the background and as a whole (non-streamed) answer. The caller's response
neither waits for nor sees the copy; its usage is recorded as a record of its own, with
`mirror_of` set to the caller's request id, so FinOps can price the candidate on real traffic.
The copy honours the caller's residency rule, is never retried, and mirrors in flight are
capped so a slow candidate cannot pile up tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable

import aiohttp
import msgspec
import structlog

from collector.record import UsageRecord
from sidecar.accounting import build_record
from sidecar.context import RequestContext
from sidecar.errors import UpstreamFailure, class_for_status
from sidecar.policy import CompiledDeployment, CompiledModel
from sidecar.providers.base import TranslationError
from sidecar.providers.bridge import Bridge
from sidecar.relay import Outcome
from sidecar.routing.attempts import Sender
from sidecar.routing.health import HealthBook
from sidecar.routing.plan import Step, choose, eligible, enforced_regions

log = structlog.get_logger("sidegate.sidecar.mirror")

_FAILURES = (
    UpstreamFailure,
    aiohttp.ClientError,
    TimeoutError,
    msgspec.DecodeError,
    msgspec.ValidationError,
)


class Mirror:
    def __init__(
        self,
        *,
        send: Sender,
        health: HealthBook,
        sink: Callable[[UsageRecord], None],
        sidecar_id: str,
        max_in_flight: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self.send = send
        self.health = health
        self.sink = sink  # the usage emitter: mirror records settle no caller budget
        self.sidecar_id = sidecar_id
        self.max_in_flight = max_in_flight
        self.rng = rng or random.Random()
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe_start(self, ctx: RequestContext, bridge: Bridge) -> None:
        """Start a mirrored copy of this request if its model asks for one; never blocks."""
        model, bundle = ctx.model, ctx.bundle
        if model is None or model.mirror is None or bundle is None:
            return
        if ctx.route.wire == "count_tokens":
            return  # nothing to compare: counting is free and not a model answer
        target = bundle.mirrors.get(model.name)
        percent = model.mirror.percent
        if target is None or (percent < 100 and self.rng.random() * 100 >= percent):
            return
        if len(self._tasks) >= self.max_in_flight:
            self.dropped += 1
            log.warning("mirror_dropped", model=target.name, dropped=self.dropped)
            return
        step = Step(target, eligible(target, ctx.route.wire, enforced_regions(ctx)))
        d = choose(step, self.health, self.rng) if step.deployments else None
        if d is None:
            return
        task = asyncio.create_task(self._run(ctx, bridge, target, d), name="mirror")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, ctx: RequestContext, bridge: Bridge, model: CompiledModel, d: CompiledDeployment
    ) -> None:
        outcome = Outcome()
        try:
            await self._call(bridge, d, outcome)
        except TranslationError as exc:
            outcome.fail("invalid_request", exc.message)
        except _FAILURES as exc:
            error_class = exc.error_class if isinstance(exc, UpstreamFailure) else "upstream_error"
            outcome.fail(error_class, str(exc) or exc.__class__.__name__)
        finally:
            record = build_record(
                ctx, outcome, sidecar_id=self.sidecar_id, sent_upstream=outcome.billable,
                record_id=os.urandom(16).hex(), deployment=d, model=model, mirror_of=ctx.record_id,
            )  # fmt: skip
            self.sink(record)

    async def _call(self, bridge: Bridge, d: CompiledDeployment, outcome: Outcome) -> None:
        call = await bridge.call(d, stream=False)
        outcome.attempts = 1
        health = self.health.of(d)
        started = self.health.clock()
        upstream = await self.send(call, deadline_at=None)
        async with upstream:
            body = await upstream.read()
            outcome.status_code = upstream.status
            outcome.billable = upstream.status < 400
            if upstream.status >= 400:
                outcome.fail(class_for_status(upstream.status), call.egress.error_message(body))
                return
            health.latency.observe(self.health.clock() - started, self.health.clock())
            if call.native:
                meter = bridge.meter()
                meter.body(body)
                outcome.model_served = meter.model
                if meter.usage is not None:
                    outcome.usage = meter.usage
            else:
                reply = call.egress.reply(body, d)
                outcome.model_served, outcome.usage = reply.model, reply.usage

    async def close(self) -> None:
        """Cancel mirrors still running (at shutdown); their records are still emitted."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
