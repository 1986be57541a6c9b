"""Stage `rate_limit`: requests and tokens per minute per tenant, app, user, key or endpoint.

Each `rate_limits` entry is a token bucket per scope value (sidecar/limits.py) holding
`rpm * burst` requests or `tpm * burst` tokens, refilled at rpm/60 or tpm/60 per second.
Tokens are the prompt estimate plus the output limit (ASSUMED_OUTPUT_TOKENS when the request
sets none), reserved here and settled with the real usage when the request finishes.

Every bucket of the request is checked before any is charged, so a denial costs the caller
nothing. A limit in `warn` or `shadow` that would deny is recorded and not charged, exactly as
`enforce` would have left it; one that allows is charged, so the buckets of a shadow rollout
evolve as they would under enforcement. `x-ratelimit-*` headers (OpenAI's names) describe the
tightest `enforce` or `warn` bucket; shadow limits stay invisible to the caller.

This stage runs last: a later denial would otherwise have charged a request that never ran.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from policyd.bundle import Mode, Scope
from policyd.bundle import RateLimit as RateLimitConfig
from sidecar.context import Identity, RequestContext
from sidecar.errors import Reject
from sidecar.limits import Bucket, Limiter, duration
from sidecar.pipeline import Violation, judge
from sidecar.policy import CompiledBundle
from sidecar.stages.caps import input_tokens, output_tokens

_PLAN_CACHE_MAX = 1024


class _Entry:
    """One bucket a rule's limit implies, with its numbers worked out once per bundle."""

    __slots__ = ("capacity", "key", "mode", "per_minute", "rate", "rule", "scope", "tokens")

    def __init__(self, rule: str, limit: RateLimitConfig, slot: int, tokens: bool) -> None:
        per_minute = limit.tpm if tokens else limit.rpm
        assert per_minute is not None
        self.rule = rule
        self.scope: Scope = limit.scope
        self.mode: Mode = limit.mode
        self.tokens = tokens
        self.per_minute = per_minute
        self.capacity = max(1.0, per_minute * limit.burst)
        self.rate = per_minute / 60
        # Never the numbers: a bundle that changes them keeps the bucket (sidecar/limits.py).
        # `slot` tells apart two limits of one scope in one rule.
        self.key = (rule, limit.scope, slot, "tokens" if tokens else "requests")

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens else "requests"


def plan(rule: str, limits: tuple[RateLimitConfig, ...]) -> tuple[_Entry, ...]:
    entries: list[_Entry] = []
    scopes: list[str] = []
    for limit in limits:
        slot = scopes.count(limit.scope)
        scopes.append(limit.scope)
        if limit.mode == "off":
            continue
        if limit.rpm is not None:
            entries.append(_Entry(rule, limit, slot, tokens=False))
        if limit.tpm is not None:
            entries.append(_Entry(rule, limit, slot, tokens=True))
    return tuple(entries)


class _Check:
    __slots__ = ("amount", "bucket", "entry", "key", "value")

    def __init__(self, entry: _Entry, key: Hashable, bucket: Bucket, amount: int, value: str):
        self.entry = entry
        self.key = key
        self.bucket = bucket
        self.amount = amount
        self.value = value


def scope_value(identity: Identity, scope: str) -> tuple[Hashable, str]:
    """The bucket key part and its display for a scope.

    Users are per tenant (user ids are rarely unique across tenants). A request without a
    user, key or endpoint shares the one bucket of "nobody", so leaving a header out never
    escapes a limit.
    """
    if scope == "tenant":
        return identity.tenant, identity.tenant
    if scope == "app":
        return identity.app, identity.app
    if scope == "user":
        return (identity.tenant, identity.user), identity.user
    if scope == "key":
        return identity.virtual_key_id, identity.virtual_key_id
    return identity.endpoint, identity.endpoint


class RateLimit:
    name = "rate_limit"

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        # Plans per rule of the bundle they were made from; held by reference, so a new
        # bundle (even one reusing the old one's memory) always gets fresh plans.
        self._plans: dict[str, tuple[_Entry, ...]] = {}
        self._plans_of: CompiledBundle | None = None

    def __call__(self, ctx: RequestContext) -> Violation | None:
        assert ctx.policy is not None
        section = ctx.policy.rate_limits
        if section is None:
            return None
        entries = self._plan(ctx, section.rule, section.config)
        if not entries:
            return None
        now = self.limiter.now()
        identity = ctx.identity
        tokens = 0
        checks: list[_Check] = []
        denied: _Check | None = None
        for entry in entries:
            part, shown = scope_value(identity, entry.scope)
            if entry.tokens:
                tokens = tokens or input_tokens(ctx) + output_tokens(ctx)
            amount = tokens if entry.tokens else 1
            key = (entry.key, part)
            bucket = self.limiter.bucket(key, capacity=entry.capacity, rate=entry.rate, now=now)
            check = _Check(entry, key, bucket, amount, shown)
            checks.append(check)
            if denied is None and entry.mode == "enforce" and bucket.level < amount:
                denied = check
        if denied is not None:
            # Nothing is charged: a denied request costs the caller nothing.
            _headers(ctx, checks, denied)
            return _violation(denied)
        for check in checks:
            if check.bucket.level >= check.amount:
                check.bucket.level -= check.amount
                if check.entry.tokens:
                    self.limiter.reserve(ctx.record_id, check.key, check.amount, now)
            else:
                judge(ctx, self.name, _violation(check))
        _headers(ctx, checks, None)
        return None

    def _plan(
        self, ctx: RequestContext, rule: str, limits: tuple[RateLimitConfig, ...]
    ) -> tuple[_Entry, ...]:
        if ctx.bundle is not self._plans_of or len(self._plans) >= _PLAN_CACHE_MAX:
            self._plans = {}
            self._plans_of = ctx.bundle
        entries = self._plans.get(rule)
        if entries is None:
            entries = self._plans[rule] = plan(rule, limits)
        return entries


def _violation(check: _Check) -> Violation:
    entry, bucket = check.entry, check.bucket
    rule, scope, unit = entry.rule, entry.scope, entry.kind
    who = f"{scope} '{check.value}'" if check.value else f"requests without a {scope}"
    if check.amount > bucket.capacity:
        # Waiting cannot help: the request alone is larger than the whole bucket.
        reject = Reject(
            "rate_limited",
            f"This request needs about {check.amount} tokens, more than the {entry.per_minute} "
            f"{unit} per minute (burst {math.floor(bucket.capacity)}) that policy `{rule}` "
            f"allows for {who}.",
            code="tokens_exceed_limit",
        )
    else:
        wait = bucket.wait_s(check.amount)
        reject = Reject(
            "rate_limited",
            f"Rate limit of {entry.per_minute} {unit} per minute reached for {who} "
            f"(policy `{rule}`). Retry in {wait:.1f} s.",
            code="rate_limit_exceeded",
            retry_after_s=wait,
            headers={"retry-after-ms": str(math.ceil(wait * 1000))},
        )
    return Violation(reject, rule=rule, mode=entry.mode)


def _headers(ctx: RequestContext, checks: list[_Check], denied: _Check | None) -> None:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} of the tightest visible bucket."""
    tightest: dict[bool, _Check] = {}
    for check in checks:
        if check.entry.mode == "shadow":
            continue  # a shadow limit stays invisible to the caller
        shown = tightest.get(check.entry.tokens)
        if shown is None or check.bucket.level < shown.bucket.level:
            tightest[check.entry.tokens] = check
    if denied is not None:
        tightest[denied.entry.tokens] = denied
    headers = ctx.response_headers
    for check in tightest.values():
        kind, bucket = check.entry.kind, check.bucket
        headers[f"x-ratelimit-limit-{kind}"] = str(math.floor(bucket.capacity))
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
        headers[f"x-ratelimit-reset-{kind}"] = duration(bucket.reset_s())
