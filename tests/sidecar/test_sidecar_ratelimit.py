"""Rate limits: token buckets with burst, headers, TPM settlement, scopes, modes, memory bound."""

from __future__ import annotations

from pathlib import Path

import pytest
from sidecar_kit import chat, compile_policy, routed

from collector.record import TokenSource, UsageRecord
from sidecar.context import RequestContext
from sidecar.limits import Limiter, duration
from sidecar.pipeline import WARNING_HEADER, Violation
from sidecar.policy import CompiledBundle
from sidecar.stages.caps import input_tokens
from sidecar.stages.ratelimit import RateLimit

RULES = """
rules:
  - name: per-user
    rate_limits: [{scope: user, rpm: 60, burst: 0.05}]
  - name: tokens
    match: {tenant: globex}
    rate_limits: [{scope: tenant, tpm: 6000}]
  - name: layered
    match: {tenant: initech}
    rate_limits: [{scope: tenant, rpm: 500, burst: 0.01}, {scope: user, rpm: 60, burst: 0.05}]
  - name: trial
    match: {tenant: soylent}
    rate_limits: [{scope: tenant, rpm: 60, burst: 0.05, mode: shadow}]
  - name: loud
    match: {tenant: tyrell}
    rate_limits: [{scope: tenant, rpm: 60, burst: 0.05, mode: warn}]
  - name: keys
    match: {tenant: hooli}
    rate_limits: [{scope: key, rpm: 60, burst: 0.05}]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> Limiter:
    return Limiter(clock=clock)


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path / "policy", RULES))


def request(
    bundle: CompiledBundle, limiter: Limiter, **headers: str
) -> tuple[RequestContext, Violation | None]:
    """One request through the stage; header names use _ for -, e.g. x_sidegate_user."""
    ctx = routed(
        bundle, chat(max_tokens=1000), {k.replace("_", "-"): v for k, v in headers.items()}
    )
    return ctx, RateLimit(limiter)(ctx)


def test_requests_within_the_burst_pass_with_rate_limit_headers(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    ctx, result = request(bundle, limiter, x_sidegate_user="ann")
    assert result is None
    assert ctx.response_headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1s",
    }


def test_a_rate_limit_rejects_after_the_burst_is_spent(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    for _ in range(3):
        assert request(bundle, limiter, x_sidegate_user="ann")[1] is None
    ctx, result = request(bundle, limiter, x_sidegate_user="ann")
    assert isinstance(result, Violation)
    reject = result.reject
    assert (reject.status, reject.error_class, reject.code) == (
        429,
        "rate_limited",
        "rate_limit_exceeded",
    )
    assert reject.retry_after_s == pytest.approx(1.0)
    assert reject.headers == {"retry-after-ms": "1000"}
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert ctx.response_headers["x-ratelimit-reset-requests"] == "3s"


def test_a_spent_bucket_refills_at_the_per_minute_rate(
    bundle: CompiledBundle, limiter: Limiter, clock: Clock
) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_user="ann")
    clock.now += 0.5
    assert request(bundle, limiter, x_sidegate_user="ann")[1] is not None
    clock.now += 0.5
    assert request(bundle, limiter, x_sidegate_user="ann")[1] is None


def test_each_user_has_a_bucket_of_their_own(bundle: CompiledBundle, limiter: Limiter) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_user="ann")
    assert request(bundle, limiter, x_sidegate_user="bob")[1] is None


def test_requests_without_a_user_share_one_bucket(bundle: CompiledBundle, limiter: Limiter) -> None:
    for _ in range(3):
        assert request(bundle, limiter)[1] is None
    result = request(bundle, limiter)[1]
    assert isinstance(result, Violation)
    assert "requests without a user" in result.reject.message


def test_the_same_user_name_in_two_tenants_is_two_users(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_user="ann")
    assert request(bundle, limiter, x_sidegate_user="ann", x_sidegate_tenant="wonka")[1] is None


def test_a_virtual_key_scope_limits_each_key(bundle: CompiledBundle, limiter: Limiter) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_tenant="hooli")
    result = request(bundle, limiter, x_sidegate_tenant="hooli")[1]
    assert isinstance(result, Violation) and result.rule == "keys"


def test_a_denial_charges_none_of_the_other_buckets(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    # The tenant holds 5 requests, each user 3: ann spends 3 of the tenant's 5.
    initech = {"x_sidegate_tenant": "initech"}
    for _ in range(3):
        assert request(bundle, limiter, **initech, x_sidegate_user="ann")[1] is None
    for _ in range(5):
        assert request(bundle, limiter, **initech, x_sidegate_user="ann")[1] is not None
    # Had ann's denied requests charged the tenant bucket, bob would be refused at once.
    for _ in range(2):
        assert request(bundle, limiter, **initech, x_sidegate_user="bob")[1] is None
    refused = request(bundle, limiter, **initech, x_sidegate_user="bob")[1]
    assert refused is not None and "tenant 'initech'" in refused.reject.message


def test_tokens_are_reserved_before_the_call(bundle: CompiledBundle, limiter: Limiter) -> None:
    ctx, result = request(bundle, limiter, x_sidegate_tenant="globex")
    assert result is None
    reserved = input_tokens(ctx) + 1000
    assert ctx.response_headers["x-ratelimit-limit-tokens"] == "6000"
    assert ctx.response_headers["x-ratelimit-remaining-tokens"] == str(6000 - reserved)


def usage(
    ctx: RequestContext, used_in: int, used_out: int, source: TokenSource = "provider"
) -> UsageRecord:
    return UsageRecord(
        id=ctx.record_id, ts_ms=0, input_tokens=used_in, output_tokens=used_out,
        token_source=source,
    )  # fmt: skip


def test_the_reservation_is_settled_with_the_real_usage(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    first, _ = request(bundle, limiter, x_sidegate_tenant="globex")
    limiter.settle_record(first, usage(first, 12, 30))
    second, _ = request(bundle, limiter, x_sidegate_tenant="globex")
    reserved = input_tokens(second) + 1000
    assert second.response_headers["x-ratelimit-remaining-tokens"] == str(6000 - 42 - reserved)


def test_usage_above_the_reservation_is_charged_in_full(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    first, _ = request(bundle, limiter, x_sidegate_tenant="globex")
    limiter.settle_record(first, usage(first, 2000, 1000))
    second, _ = request(bundle, limiter, x_sidegate_tenant="globex")
    reserved = input_tokens(second) + 1000
    assert second.response_headers["x-ratelimit-remaining-tokens"] == str(6000 - 3000 - reserved)


def test_a_request_that_never_ran_gives_its_reservation_back(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    first, _ = request(bundle, limiter, x_sidegate_tenant="globex")
    limiter.settle_record(first, usage(first, 0, 0, source="none"))
    second, _ = request(bundle, limiter, x_sidegate_tenant="globex")
    reserved = input_tokens(second) + 1000
    assert second.response_headers["x-ratelimit-remaining-tokens"] == str(6000 - reserved)


def test_a_request_larger_than_the_whole_token_bucket_is_told_waiting_cannot_help(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    ctx = routed(bundle, chat(max_tokens=7000), {"x-sidegate-tenant": "globex"})
    result = RateLimit(limiter)(ctx)
    assert isinstance(result, Violation)
    assert result.reject.code == "tokens_exceed_limit"
    assert result.reject.retry_after_s is None


def test_a_changed_limit_keeps_what_was_spent(
    bundle: CompiledBundle, limiter: Limiter, clock: Clock, tmp_path: Path
) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_user="ann")
    doubled = CompiledBundle(
        compile_policy(
            tmp_path / "v2",
            RULES.replace("rpm: 60, burst: 0.05}]", "rpm: 120, burst: 0.05}]", 1),
            revision=2,
        )
    )
    ctx, result = request(doubled, limiter, x_sidegate_user="ann")
    assert result is not None  # not reset to a full bucket by the new bundle
    assert ctx.response_headers["x-ratelimit-limit-requests"] == "6"
    clock.now += 0.5  # the new rate, 2 per second, applies from the swap on
    assert request(doubled, limiter, x_sidegate_user="ann")[1] is None


def test_a_shadow_limit_records_the_would_be_denial_and_lets_the_request_through(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_tenant="soylent")
    ctx, result = request(bundle, limiter, x_sidegate_tenant="soylent")
    assert result is None
    [decision] = ctx.decisions
    assert (decision.stage, decision.rule, decision.mode, decision.outcome) == (
        "rate_limit", "trial", "shadow", "would_deny",
    )  # fmt: skip
    assert decision.reason.startswith("rate_limit_exceeded: Rate limit of 60 requests per minute")
    assert ctx.response_headers == {}  # a shadow limit is invisible to the caller


def test_a_shadow_limit_charges_only_what_enforcement_would_have_allowed(
    bundle: CompiledBundle, limiter: Limiter, clock: Clock
) -> None:
    for _ in range(10):
        request(bundle, limiter, x_sidegate_tenant="soylent")
    clock.now += 1.0
    ctx, _ = request(bundle, limiter, x_sidegate_tenant="soylent")
    assert ctx.decisions == []  # one second refilled one request, as under enforcement


def test_a_warn_limit_proceeds_with_the_warning_and_rate_limit_headers(
    bundle: CompiledBundle, limiter: Limiter
) -> None:
    for _ in range(3):
        request(bundle, limiter, x_sidegate_tenant="tyrell")
    ctx, result = request(bundle, limiter, x_sidegate_tenant="tyrell")
    assert result is None
    assert ctx.response_headers[WARNING_HEADER] == "rate_limit/loud: rate_limit_exceeded"
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "0"


def test_idle_buckets_that_refilled_are_swept(bundle: CompiledBundle, clock: Clock) -> None:
    limiter = Limiter(clock=clock, sweep_interval_s=5)
    for user in ("ann", "bob", "cy"):
        request(bundle, limiter, x_sidegate_user=user)
    assert len(limiter) == 3
    clock.now += 10  # every bucket is full again: identical to a new one
    request(bundle, limiter, x_sidegate_user="dee")
    assert len(limiter) == 1


def test_the_bucket_count_never_exceeds_its_bound(bundle: CompiledBundle, clock: Clock) -> None:
    limiter = Limiter(clock=clock, max_buckets=2)
    for user in ("ann", "bob", "cy"):
        request(bundle, limiter, x_sidegate_user=user)
    assert len(limiter) == 2
    ctx, _ = request(bundle, limiter, x_sidegate_user="cy")
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "1"  # cy was kept


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (1, "1s"), (12.5, "12.5s"), (90, "1m30s"), (360, "6m0s")]
)
def test_reset_times_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text
