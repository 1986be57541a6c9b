"""Where a request may go: the fallback chain of models, and the deployment for each attempt.

The chain is the resolved model, then its fallbacks in order. Each step keeps only the
deployments that can serve the route, have a credential in this sidecar, and (when the
caller's policy enforces residency) lie in an allowed region. A fallback the caller's policy
does not allow is skipped. Within a step, each attempt picks a healthy deployment: by weight
(canaries, splits) or, for `strategy: latency`, the lowest recent time to first byte, trying
deployments without a recent measurement first so every one keeps being measured.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import NamedTuple

from sidecar.context import RequestContext
from sidecar.policy import CompiledDeployment, CompiledModel
from sidecar.providers.bridge import can_serve
from sidecar.routing.health import HealthBook


class Step(NamedTuple):
    model: CompiledModel
    deployments: tuple[CompiledDeployment, ...]


def enforced_regions(ctx: RequestContext) -> tuple[str, ...] | None:
    """The regions the caller's policy confines it to, when that policy is enforced."""
    assert ctx.policy is not None
    section = ctx.policy.routing
    if section is None or section.config.mode != "enforce" or not section.config.regions:
        return None
    return section.config.regions


def eligible(
    model: CompiledModel, wire: str, regions: tuple[str, ...] | None
) -> tuple[CompiledDeployment, ...]:
    return tuple(
        d
        for d in model.deployments
        if d.credential_error is None
        and can_serve(wire, d.kind)
        and (regions is None or d.in_regions(regions))
    )


def chain(ctx: RequestContext) -> list[Step]:
    assert ctx.model is not None and ctx.bundle is not None and ctx.policy is not None
    primary = ctx.model
    wire = ctx.route.wire
    regions = enforced_regions(ctx)
    steps: list[Step] = []
    for model in (primary, *ctx.bundle.fallbacks.get(primary.name, ())):
        if model is not primary and (
            model.kind != primary.kind or not ctx.policy.allows(model.name)
        ):
            continue
        deployments = eligible(model, wire, regions)
        if deployments:
            steps.append(Step(model, deployments))
    return steps


def choose(
    step: Step,
    health: HealthBook,
    rng: random.Random,
    *,
    tried: Collection[str] = (),
    preferred: CompiledDeployment | None = None,
) -> CompiledDeployment | None:
    """A deployment whose circuit admits a call now, preferring ones not tried yet; None
    when every circuit of the step is open."""
    healthy = [d for d in step.deployments if health.available(d)]
    if not healthy:
        return None
    fresh = [d for d in healthy if d.label not in tried] or healthy
    if len(fresh) == 1:
        return fresh[0]
    if step.model.strategy == "latency":
        # Unmeasured (or long unmeasured) deployments sort first: they get measured.
        return min(fresh, key=lambda d: health.latency(d) or 0.0)
    if preferred is not None and any(d is preferred for d in fresh):
        return preferred
    total = sum(d.weight for d in fresh)
    point = rng.uniform(0, total)
    for d in fresh:
        point -= d.weight
        if point <= 0:
            return d
    return fresh[-1]
