"""The ordered stage pipeline: small policy units with an explicit continue-or-stop result.

Like Envoy's HTTP filter chain, a stage is built once per bundle and called per request. A
stage returns None (continue), a `Reject` (stop: the request is invalid, whatever the mode), or
a `Violation` (a policy would deny). The runner alone turns a violation into a denial, a
warning or a silent record according to the rule's mode, so no stage re-implements modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from collector.record import Decision
from policyd.bundle import Mode
from sidecar.context import RequestContext
from sidecar.errors import Reject

WARNING_HEADER = "x-sidegate-warning"


class Violation(msgspec.Struct, frozen=True):
    """A policy rule that would deny this request; its mode decides what happens."""

    reject: Reject
    rule: str
    mode: Mode


class Stage(Protocol):
    name: str

    def __call__(self, ctx: RequestContext) -> Reject | Violation | None: ...


class Pipeline:
    """Runs stages in order; returns the first enforced denial, or None to forward."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)

    def run(self, ctx: RequestContext) -> Reject | None:
        for stage in self.stages:
            result = stage(ctx)
            if result is None:
                continue
            if isinstance(result, Reject):
                return result
            if judge(ctx, stage.name, result):
                return result.reject
        return None


def judge(ctx: RequestContext, stage: str, violation: Violation) -> bool:
    """Record a violation per its mode; True when the request must be denied."""
    if violation.mode == "off":
        return False
    reason = violation.reject.code or violation.reject.error_class
    ctx.decisions.append(
        Decision(
            stage=stage,
            rule=violation.rule,
            mode=violation.mode,
            outcome="denied" if violation.mode == "enforce" else "would_deny",
            reason=f"{reason}: {violation.reject.message}",
        )
    )
    if violation.mode == "warn":
        previous = ctx.response_headers.get(WARNING_HEADER)
        note = f"{stage}/{violation.rule}: {reason}"
        ctx.response_headers[WARNING_HEADER] = f"{previous}; {note}" if previous else note
    return violation.mode == "enforce"
