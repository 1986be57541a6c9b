"""Stage `budget`: reserve a request's worst-case cost against each budget it falls under.

The worst case is the prompt estimate times the input price plus the output limit times the
output price, at the deployment the `route` stage chose (every priced deployment of the
model when none is chosen yet): the same token estimate the caps stage already counted, so
this stage runs after `caps` and sees any max_tokens it wrote in. A request without an
output limit is planned at ASSUMED_OUTPUT_TOKENS; a longer answer is still charged in full
when the request settles, so set `caps.max_tokens` where a budget must be a hard ceiling. A
model without any price cannot be counted in money and passes every budget.

The money comes from this sidecar's slice of the budget (sidecar/budgets.py); nothing here
waits on the network. Every budget of the request is checked before any is charged, so a
denial costs nothing. As with rate limits, a budget in `warn` or `shadow` that would deny is
recorded and not charged, one that allows is charged, so a shadow rollout sees the spend an
enforced budget would; `x-sidegate-budget-*` headers describe the tightest `enforce` or `warn`
budget, and shadow budgets stay invisible. The reservation is settled with the record's exact
cost by `BudgetLedger.settle_record`, a proxy observer, for every request, including those a
later stage denies, so rate limits may safely run after this stage.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from policyd.bundle import Budget as BudgetConfig
from sidecar.budgets import Account, BudgetLedger, BudgetSpec
from sidecar.context import Identity, RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Violation, judge
from sidecar.stages.caps import input_tokens, output_tokens
from sidecar.stages.ratelimit import scope_value

_MICROS = Decimal("0.000001")  # headers show micro-dollars: a cheap request is a few of them


class _Check:
    __slots__ = ("account", "allowed", "shown", "spec")

    def __init__(self, spec: BudgetSpec, account: Account, shown: str, allowed: bool) -> None:
        self.spec = spec
        self.account = account
        self.shown = shown
        self.allowed = allowed


def worst_case(ctx: RequestContext) -> Decimal | None:
    """The most this request can cost at its deployment's price; None when nothing is priced."""
    if ctx.deployment is not None:
        prices = [ctx.deployment.price] if ctx.deployment.price is not None else []
    else:
        assert ctx.model is not None
        prices = [d.price for d in ctx.model.deployments if d.price is not None]
    if not prices:
        return None
    prompt, output = input_tokens(ctx), output_tokens(ctx)
    return max(prompt * p.input + output * p.output for p in prices)


def account_value(identity: Identity, scope: str) -> tuple[str, str]:
    """The scope value as the quota owner keys it, and as a message shows it.

    Users are per tenant (as for rate limits); both parts are kept apart as a JSON list so
    no tenant and user names can ever add up to someone else's account.
    """
    part, shown = scope_value(identity, scope)
    if isinstance(part, tuple):
        return msgspec.json.encode(list(part)).decode(), shown
    return str(part), shown


class Budget:
    name = "budget"

    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger
        self._specs: dict[BudgetConfig, BudgetSpec] = {}  # parsed once per distinct budget

    def __call__(self, ctx: RequestContext) -> Violation | None:
        assert ctx.policy is not None
        section = ctx.policy.budgets
        if section is None:
            return None
        cost = worst_case(ctx)
        if cost is None:
            return None
        ledger, rule = self.ledger, section.rule
        now = ledger.now()
        checks: list[_Check] = []
        for budget in section.config:
            if budget.mode == "off":
                continue
            spec = self._specs.get(budget)
            if spec is None:
                spec = self._specs[budget] = BudgetSpec.compile(budget)
            value, shown = account_value(ctx.identity, spec.scope)
            account = ledger.account(spec, value, now)
            checks.append(_Check(spec, account, shown, account.available(now) >= cost))
        denied = next((c for c in checks if c.spec.mode == "enforce" and not c.allowed), None)
        if denied is not None:
            ledger.short(denied.account, cost)
            _headers(ctx, checks, denied, now)
            return _violation(rule, denied, cost, now)
        for check in checks:
            if check.allowed:
                ledger.reserve(ctx.record_id, check.account, cost, now)
            else:
                ledger.short(check.account, cost)
                judge(ctx, self.name, _violation(rule, check, cost, now))
        _headers(ctx, checks, None, now)
        return None


def _violation(rule: str, check: _Check, cost: Decimal, now: float) -> Violation:
    spec, account = check.spec, check.account
    who = f"{spec.scope} '{check.shown}'" if check.shown else f"requests without a {spec.scope}"
    wait = account.retry_after_s(now)
    if account.exhausted:
        reset = datetime.fromtimestamp(account.period_end, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = (
            f"Budget `{spec.name}` of ${spec.limit} per {spec.period} for {who} is spent "
            f"(policy `{rule}`); it resets at {reset}."
        )
    elif account.unreachable or not account.answered:
        message = (
            f"This request may cost up to ${cost.quantize(_MICROS)}, more than this gateway may "
            f"spend of budget `{spec.name}` for {who} (policy `{rule}`) until the quota owner "
            f"answers. Retry in {wait:.0f} s."
        )
    else:
        message = (
            f"This request may cost up to ${cost.quantize(_MICROS)}, more than this gateway holds "
            f"of budget `{spec.name}` for {who} (policy `{rule}`) right now. Retry in {wait:.0f} s."
        )
    reject = Reject("budget_exceeded", message, code="budget_exceeded", retry_after_s=wait)
    return Violation(reject, rule=rule, mode=spec.mode)


def _headers(ctx: RequestContext, checks: list[_Check], denied: _Check | None, now: float) -> None:
    """x-sidegate-budget{,-limit,-remaining} of the denying or the tightest visible budget."""
    shown = denied
    if shown is None:
        visible = [c for c in checks if c.spec.mode != "shadow"]
        shown = min(visible, key=lambda c: c.account.remaining(now), default=None)
    if shown is None:
        return
    headers = ctx.response_headers
    headers["x-sidegate-budget"] = shown.spec.name
    headers["x-sidegate-budget-limit"] = str(shown.spec.limit)
    headers["x-sidegate-budget-remaining"] = str(shown.account.remaining(now).quantize(_MICROS))
