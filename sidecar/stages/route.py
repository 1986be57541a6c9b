"""Stage `route`: residency and credentials decide where a request may go; pick the first place.

The stage settles what policy decides: which deployments of the model the caller may reach
(its rule's `routing.regions`, enforced or only recorded per mode) and whether any of them has
a credential in this sidecar. It then makes the weighted pick that the cost cap prices. The
forwarder (sidecar/routing/attempts.py) starts there, unless that deployment's circuit is
open, and owns retries, health, latency and fallbacks.
"""

from __future__ import annotations

import random

from sidecar.context import RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Violation, judge
from sidecar.policy import CompiledDeployment
from sidecar.views import ChatView


class ChooseDeployment:
    name = "route"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def __call__(self, ctx: RequestContext) -> Reject | Violation | None:
        assert ctx.model is not None and ctx.view is not None and ctx.policy is not None
        model = ctx.model
        candidates = [d for d in model.deployments if d.credential_error is None]
        if not candidates:
            d = model.deployments[0]
            return Reject(
                "upstream_unavailable",
                f"Provider `{d.provider_id}` has no credential in this sidecar: "
                f"{d.credential_error}.",
                code="provider_credential_missing",
            )
        section = ctx.policy.routing
        if section is not None and section.config.regions and section.config.mode != "off":
            regions = section.config.regions
            inside = [d for d in candidates if d.in_regions(regions)]
            if not inside:
                violation = Violation(
                    Reject(
                        "permission",
                        f"No deployment of `{model.name}` is in the regions policy "
                        f"`{section.rule}` allows ({', '.join(regions)}).",
                        code="residency_unavailable", param="model",
                    ),
                    rule=section.rule,
                    mode=section.config.mode,
                )  # fmt: skip
                if section.config.mode == "enforce":
                    return violation
                judge(ctx, self.name, violation)  # recorded; the request goes on unconfined
            elif section.config.mode == "enforce":
                candidates = inside
        ctx.deployment = self._pick(model.pick(self.rng), candidates)
        view = ctx.view
        if isinstance(view, ChatView) and view.stream:
            options = view.stream_options
            if options is None or not options.include_usage:
                # Exact stream usage needs the provider's usage chunk; the client did not ask
                # for it, so the relay removes it again before the client sees it.
                ctx.body_patch["stream_options"] = {"include_usage": True}
                ctx.strip_usage_chunk = True
        return None

    def _pick(
        self, weighted: CompiledDeployment, candidates: list[CompiledDeployment]
    ) -> CompiledDeployment:
        """The model's weighted pick when allowed, else a weighted pick among the allowed."""
        if any(d is weighted for d in candidates):
            return weighted
        return self.rng.choices(candidates, weights=[d.weight for d in candidates])[0]
