"""Stage `caps`: per-request ceilings on output tokens, input tokens, estimated cost and time.

Order: this stage runs after `route`, so the cost cap prices the deployment that was actually
chosen. When no deployment has been chosen yet (a forwarder that picks one per attempt), the
most expensive priced deployment of the model is used instead: a fallback may land there, and
a cap is a ceiling. A model with no price at all is not limited by `max_cost_usd`.

Modes: in `enforce` a too-high max_tokens is clamped (or rejected, per `max_tokens_action`), a
request without one gets the cap written in, and the deadline is set. In `warn` and `shadow`
the request is left exactly as sent: every cap that would clamp or reject is recorded as a
would-have-denied decision instead, and no deadline is set.
"""

from __future__ import annotations

import time
from decimal import Decimal

from collector.record import Decision
from policyd.bundle import Caps as CapsConfig
from sidecar import tokens
from sidecar.context import RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Violation, judge
from sidecar.policy import CompiledPrice, Section
from sidecar.views import ChatView, CountTokensView, EmbeddingsView, RequestView

# Output tokens planned for a request that sets no limit and meets no cap: used by the cost
# cap and the tokens-per-minute reservation, and settled against the real count afterwards.
ASSUMED_OUTPUT_TOKENS = 1024

# OpenAI chat accepts both spellings; reasoning models refuse the older `max_tokens`.
_CHAT_FIELDS = ("max_completion_tokens", "max_tokens")
# Providers whose chat API takes `max_completion_tokens` when a cap is written into a
# request that had no limit; other OpenAI-compatible servers know `max_tokens` best.
_COMPLETION_FIELD_KINDS = frozenset({"openai", "azure"})
_COST_CACHE_MAX = 256


def input_tokens(ctx: RequestContext) -> int:
    """The prompt's estimated tokens, counted once per request and kept on the context."""
    counted = ctx.estimated_input_tokens
    if counted is None:
        view = ctx.view
        assert view is not None
        if isinstance(view, ChatView | CountTokensView):  # Anthropic Messages included
            counted = tokens.count_prompt(view.prompt_texts(), messages=len(view.messages))
        elif isinstance(view, EmbeddingsView):
            counted = tokens.count_prompt(view.prompt_texts()) + view.token_array_count()
        else:
            counted = tokens.count_prompt(view.prompt_texts())
        ctx.estimated_input_tokens = counted
    return counted


def limit_field(view: RequestView) -> str:
    """The body field holding a non-chat view's output limit (Responses: max_output_tokens)."""
    field = getattr(view, "output_limit_field", "max_tokens")
    return field if isinstance(field, str) else "max_tokens"


def generates(ctx: RequestContext) -> bool:
    """False for requests that produce no output tokens: embeddings, token counting."""
    assert ctx.view is not None
    return ctx.route.model_kind == "chat" and ctx.view.max_output_tokens != 0


def output_limit(ctx: RequestContext) -> int | None:
    """The output-token limit the upstream will see, after any rewrite by this stage."""
    view = ctx.view
    assert view is not None
    patch = ctx.body_patch
    if isinstance(view, ChatView):
        completion = patch.get("max_completion_tokens", view.max_completion_tokens)
        legacy = patch.get("max_tokens", view.max_tokens)
        limit: int | None = completion or legacy
        return limit
    field = limit_field(view)
    if field in patch:
        patched: int = patch[field]
        return patched
    return view.max_output_tokens


def output_tokens(ctx: RequestContext) -> int:
    """Output tokens to plan for: the effective limit, else `ASSUMED_OUTPUT_TOKENS`."""
    if not generates(ctx):
        return 0
    return output_limit(ctx) or ASSUMED_OUTPUT_TOKENS


class Caps:
    name = "caps"

    def __init__(self) -> None:
        # `max_cost_usd` is a decimal string in the bundle; parse each distinct one once.
        self._cost_limits: dict[str, Decimal] = {}

    def __call__(self, ctx: RequestContext) -> Violation | None:
        assert ctx.policy is not None and ctx.view is not None
        section = ctx.policy.caps
        if section is None or section.config.mode == "off":
            return None
        caps = section.config
        enforce = caps.mode == "enforce"
        violations: list[Violation] = []
        planned_output = self._output(ctx, section, violations)
        if caps.max_input_tokens is not None:
            counted = input_tokens(ctx)
            if counted > caps.max_input_tokens:
                violations.append(
                    _violation(
                        section,
                        f"The prompt is about {counted} tokens, above the limit of "
                        f"{caps.max_input_tokens} set by policy `{section.rule}`.",
                        code="max_input_tokens_exceeded", param="messages",
                    )
                )  # fmt: skip
        if caps.max_cost_usd is not None:
            over = self._cost(ctx, section, planned_output)
            if over is not None:
                violations.append(over)
        if not enforce:
            for violation in violations:
                judge(ctx, self.name, violation)
            return None
        if caps.deadline_ms is not None:
            deadline = time.monotonic() + caps.deadline_ms / 1000
            if ctx.deadline_at is None or deadline < ctx.deadline_at:
                ctx.deadline_at = deadline
        return violations[0] if violations else None

    def _output(
        self, ctx: RequestContext, section: Section[CapsConfig], violations: list[Violation]
    ) -> int:
        """Apply `max_tokens`; returns the output tokens the cost cap should plan for."""
        if not generates(ctx):
            return 0
        caps = section.config
        requested = output_limit(ctx)
        cap = caps.max_tokens
        if cap is None:
            return requested or ASSUMED_OUTPUT_TOKENS
        enforce = caps.mode == "enforce"
        if requested is None:
            if enforce:
                # No limit at all means "as long as the model likes": the cap is the limit.
                ctx.body_patch[_absent_field(ctx)] = cap
            return cap
        if requested <= cap:
            return requested
        clamp = caps.max_tokens_action == "clamp"
        fields = _fields_over(ctx, cap)
        if clamp and enforce:
            for field in fields:
                ctx.body_patch[field] = cap
            ctx.decisions.append(
                Decision(
                    stage=self.name, rule=section.rule, mode="enforce", outcome="modified",
                    reason=f"max_tokens_clamped: {'/'.join(fields)} {requested} -> {cap}",
                )
            )  # fmt: skip
            return cap
        if clamp:
            message = (
                f"max_tokens {requested} would be clamped to {cap} by policy `{section.rule}`."
            )
            code = "max_tokens_clamped"
        else:
            message = (
                f"max_tokens {requested} is above the limit of {cap} set by policy "
                f"`{section.rule}`; ask for {cap} or fewer."
            )
            code = "max_tokens_exceeded"
        violations.append(_violation(section, message, code=code, param=fields[0]))
        return cap if clamp else requested

    def _cost(
        self, ctx: RequestContext, section: Section[CapsConfig], planned_output: int
    ) -> Violation | None:
        assert section.config.max_cost_usd is not None
        text = section.config.max_cost_usd
        limit = self._cost_limits.get(text)
        if limit is None:
            if len(self._cost_limits) >= _COST_CACHE_MAX:
                self._cost_limits.clear()  # old bundles' values; a new one re-parses once
            limit = self._cost_limits[text] = Decimal(text)
        prices = _prices(ctx)
        if not prices:
            return None
        prompt = input_tokens(ctx)
        cost = max(prompt * p.input + planned_output * p.output for p in prices)
        if cost <= limit:
            return None
        return _violation(
            section,
            f"The estimated cost of this request, ${cost:.6f} ({prompt} input and up to "
            f"{planned_output} output tokens), is above the limit of ${limit} per request "
            f"set by policy `{section.rule}`.",
            code="max_cost_exceeded",
        )


def _violation(
    section: Section[CapsConfig], message: str, *, code: str, param: str | None = None
) -> Violation:
    return Violation(
        Reject("policy_violation", message, code=code, param=param),
        rule=section.rule,
        mode=section.config.mode,
    )


def _prices(ctx: RequestContext) -> list[CompiledPrice]:
    """The chosen deployment's price, or every priced deployment of the model (worst case)."""
    if ctx.deployment is not None:
        return [ctx.deployment.price] if ctx.deployment.price is not None else []
    assert ctx.model is not None
    return [d.price for d in ctx.model.deployments if d.price is not None]


def _fields_over(ctx: RequestContext, cap: int) -> tuple[str, ...]:
    """The output-limit fields the client set above the cap, in the client's own spelling."""
    view = ctx.view
    if isinstance(view, ChatView):
        values = {
            "max_completion_tokens": view.max_completion_tokens,
            "max_tokens": view.max_tokens,
        }
        over = tuple(f for f in _CHAT_FIELDS if (values[f] or 0) > cap)
        return over or ("max_tokens",)
    assert view is not None
    return (limit_field(view),)


def _absent_field(ctx: RequestContext) -> str:
    view = ctx.view
    assert view is not None
    if not isinstance(view, ChatView):
        return limit_field(view)  # Responses' max_output_tokens; Anthropic's is required
    kind = ctx.deployment.provider.kind if ctx.deployment is not None else "openai"
    return "max_completion_tokens" if kind in _COMPLETION_FIELD_KINDS else "max_tokens"
