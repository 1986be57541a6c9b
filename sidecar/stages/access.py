"""Stages `auth` and `models`: who may call, and which models they may reach by which name."""

from __future__ import annotations

from sidecar.context import RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Violation


class RequireKey:
    """Where a rule sets `auth.require_key`, only a valid virtual key gets in (401)."""

    name = "auth"

    def __call__(self, ctx: RequestContext) -> Violation | None:
        assert ctx.policy is not None
        section = ctx.policy.auth
        if section is None or not section.config.require_key or ctx.identity.virtual_key_id:
            return None
        return Violation(
            Reject(
                "authentication",
                "A valid Sidegate virtual key is required: send it as the API key.",
                code="invalid_api_key",
            ),
            rule=section.rule,
            mode=section.config.mode,
        )


class ModelAccess:
    """Resolves aliases and tiers to a catalogue model, then applies allow and deny lists."""

    name = "models"

    def __call__(self, ctx: RequestContext) -> Reject | Violation | None:
        assert ctx.view is not None and ctx.bundle is not None and ctx.policy is not None
        requested = ctx.view.model
        model = ctx.bundle.resolve_model(requested)
        if model is None:
            return Reject(
                "not_found",
                f"The model `{requested}` does not exist or is not configured in this gateway.",
                code="model_not_found", param="model",
            )  # fmt: skip
        if model.kind != ctx.route.model_kind:
            return Reject(
                "invalid_request",
                f"The model `{requested}` is a {model.kind} model and cannot serve "
                f"{ctx.route.operation} requests.",
                code="model_kind_mismatch", param="model",
            )  # fmt: skip
        ctx.model = model
        scopes = ctx.identity.key_scopes
        if scopes:
            allowed = ctx.bundle.expand(scopes)
            if allowed is not None and model.name not in allowed:
                # Key scopes are credentials, not policy: no warn or shadow mode applies.
                return Reject(
                    "permission",
                    f"This API key may not use the model `{requested}`.",
                    code="model_not_allowed", param="model",
                )  # fmt: skip
        policy = ctx.policy
        if policy.allows(model.name):
            return None
        assert policy.models is not None  # without a models section everything is allowed
        shown = requested if requested == model.name else f"{requested} ({model.name})"
        return Violation(
            Reject(
                "permission",
                f"The model `{shown}` is not allowed by policy `{policy.models.rule}`.",
                code="model_not_allowed", param="model",
            ),
            rule=policy.models.rule,
            mode=policy.models.config.mode,
        )  # fmt: skip
