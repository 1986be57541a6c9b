"""Stages `auth` and `models`: who may call, and which models they may reach by which name."""

from __future__ import annotations

from policyd.bundle import WILDCARD
from sidecar.context import RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Violation
from sidecar.policy import CompiledBundle, CompiledModel, ResolvedPolicy

TIER_PREFIX = "tier:"
_SCOPE_CACHE_MAX = 4096


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

    def __init__(self) -> None:
        # Key scopes expanded to model names, per bundle: a handful of distinct keys call
        # again and again, so the expansion is done once per (bundle, scopes). The bundle is
        # held by reference, so a new one always starts a fresh cache.
        self._scopes: dict[tuple[str, ...], frozenset[str] | None] = {}
        self._scopes_of: CompiledBundle | None = None

    def __call__(self, ctx: RequestContext) -> Reject | Violation | None:
        assert ctx.view is not None and ctx.bundle is not None and ctx.policy is not None
        requested = ctx.view.model
        scoped = self._scoped(ctx.bundle, ctx.identity.key_scopes)
        policy = ctx.policy
        if requested.startswith(TIER_PREFIX):
            model = _tier_model(ctx.bundle, policy, requested[len(TIER_PREFIX) :], scoped)
        else:
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
        if scoped is not None and model.name not in scoped:
            # Key scopes are credentials, not policy: no warn or shadow mode applies.
            return Reject(
                "permission",
                f"This API key may not use the model `{requested}`.",
                code="model_not_allowed", param="model",
            )  # fmt: skip
        if _permits(policy, model.name):
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

    def _scoped(self, bundle: CompiledBundle, scopes: tuple[str, ...]) -> frozenset[str] | None:
        """The models a key's scopes allow; None when the key (or its absence) allows all."""
        if not scopes:
            return None
        if bundle is not self._scopes_of or len(self._scopes) >= _SCOPE_CACHE_MAX:
            self._scopes = {}
            self._scopes_of = bundle
        if scopes not in self._scopes:
            self._scopes[scopes] = bundle.expand(scopes)
        return self._scopes[scopes]


def _permits(policy: ResolvedPolicy, name: str) -> bool:
    # `deny: ["*"]` expands to "every model", which the compiled deny set cannot hold (the
    # expansion says None for "all"), so it is read from the section itself.
    if policy.models is not None and WILDCARD in policy.models.config.deny:
        return False
    return policy.allows(name)


def _tier_model(
    bundle: CompiledBundle, policy: ResolvedPolicy, tier: str, scoped: frozenset[str] | None
) -> CompiledModel | None:
    """`tier:<name>`: the first model of the tier this caller may use, else the tier's first.

    A tier is a promise of quality and price, not of one model, so a tenant whose policy
    denies one cheap model gets the next cheap one instead of a 403. Only an enforced model
    policy steers the choice: a warn or shadow one must not change where requests go.
    """
    names = bundle.tiers.get(tier, ())
    steer = policy.models is not None and policy.models.config.mode == "enforce"
    usable = [name for name in names if scoped is None or name in scoped]
    for name in usable:
        if not steer or _permits(policy, name):
            return bundle.models[name]
    chosen = usable[0] if usable else (names[0] if names else None)
    return bundle.models[chosen] if chosen is not None else None
