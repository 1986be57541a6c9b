"""Stage `route`: choose the deployment that serves the request and shape the upstream body."""

from __future__ import annotations

import random

from sidecar.context import RequestContext
from sidecar.errors import Reject
from sidecar.views import ChatView


class ChooseDeployment:
    name = "route"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def __call__(self, ctx: RequestContext) -> Reject | None:
        assert ctx.model is not None and ctx.view is not None
        deployment = ctx.model.pick(self.rng)
        if deployment.credential_error is not None:
            return Reject(
                "upstream_unavailable",
                f"Provider `{deployment.provider_id}` has no credential in this sidecar: "
                f"{deployment.credential_error}.",
                code="provider_credential_missing",
            )
        ctx.deployment = deployment
        view = ctx.view
        if deployment.model != view.model:
            ctx.body_patch["model"] = deployment.model
        if isinstance(view, ChatView) and view.stream:
            options = view.stream_options
            if options is None or not options.include_usage:
                # Exact stream usage needs the provider's usage chunk; the client did not ask
                # for it, so the relay removes it again before the client sees it.
                ctx.body_patch["stream_options"] = {"include_usage": True}
                ctx.strip_usage_chunk = True
        return None
