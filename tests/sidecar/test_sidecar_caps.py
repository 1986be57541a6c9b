"""Stage `caps`: max_tokens clamp or reject, input tokens, estimated cost, deadline; modes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sidecar_kit import WORKLOAD, chat, compile_policy, context, routed, run

from sidecar.pipeline import WARNING_HEADER, Violation
from sidecar.policy import CompiledBundle
from sidecar.routes import COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES
from sidecar.stages.access import ModelAccess
from sidecar.stages.caps import ASSUMED_OUTPUT_TOKENS, Caps, input_tokens, output_tokens
from sidecar.stages.identify import Identify
from sidecar.stages.parse import Parse

RULES = """
models:
  mystery:
    deployments: [{provider: fake, model: mystery-1}]
rules:
  - name: clamp
    caps: {max_tokens: 100}
  - name: strict
    match: {tenant: globex}
    caps: {max_tokens: 100, max_tokens_action: reject}
  - name: short-prompts
    match: {tenant: initech}
    caps: {max_input_tokens: 20}
  - name: cheap-calls
    match: {tenant: umbrella}
    caps: {max_cost_usd: "0.001"}
  - name: quick
    match: {tenant: hooli}
    caps: {deadline_ms: 1500}
  - name: trial
    match: {tenant: soylent}
    caps: {max_tokens: 100, max_input_tokens: 5, deadline_ms: 10, mode: shadow}
  - name: trial-loud
    match: {tenant: tyrell}
    caps: {max_tokens: 100, mode: warn}
"""

LONG = "Summarise the following quarterly report for the board in plain words. " * 4


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path / "policy", RULES))


def tenant(name: str) -> dict[str, str]:
    return {"x-sidegate-tenant": name}


def test_a_max_tokens_above_the_cap_is_clamped_in_the_field_the_client_used(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, chat(max_tokens=500))
    assert Caps()(ctx) is None
    assert ctx.body_patch == {"max_tokens": 100}
    [decision] = ctx.decisions
    assert (decision.outcome, decision.rule) == ("modified", "clamp")
    assert decision.reason == "max_tokens_clamped: max_tokens 500 -> 100"


def test_max_completion_tokens_is_clamped_as_max_completion_tokens(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, chat(max_completion_tokens=500))
    Caps()(ctx)
    assert ctx.body_patch == {"max_completion_tokens": 100}


def test_a_max_tokens_within_the_cap_is_left_alone(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat(max_tokens=50))
    assert Caps()(ctx) is None
    assert ctx.body_patch == {}
    assert ctx.decisions == []


def test_a_request_without_a_limit_gets_the_cap_written_in(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat())
    Caps()(ctx)
    # An OpenAI provider takes max_completion_tokens for every chat model, reasoning ones too.
    assert ctx.body_patch == {"max_completion_tokens": 100}
    assert output_tokens(ctx) == 100


def test_max_tokens_above_the_cap_is_rejected_when_the_action_is_reject(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, chat(max_tokens=500), tenant("globex"))
    result = Caps()(ctx)
    assert isinstance(result, Violation)
    reject = result.reject
    assert (reject.status, reject.code, reject.param) == (400, "max_tokens_exceeded", "max_tokens")
    assert ctx.body_patch == {}


def test_a_prompt_above_max_input_tokens_is_rejected(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat(text=LONG), tenant("initech"))
    result = Caps()(ctx)
    assert isinstance(result, Violation)
    assert result.reject.code == "max_input_tokens_exceeded"
    assert ctx.estimated_input_tokens is not None and ctx.estimated_input_tokens > 20


def test_a_short_prompt_passes_max_input_tokens(bundle: CompiledBundle) -> None:
    assert Caps()(routed(bundle, chat(text="Hi"), tenant("initech"))) is None


def test_the_input_estimate_is_counted_once_and_reused(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat(text="Hi"), tenant("initech"))
    ctx.estimated_input_tokens = 999  # as if an earlier stage had counted it
    result = Caps()(ctx)
    assert isinstance(result, Violation)
    assert "about 999 tokens" in result.reject.message


def test_the_input_estimate_counts_message_overhead_with_tiktoken(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat(text="hello world"))
    assert input_tokens(ctx) == 2 + 4  # two cl100k tokens plus the per-message overhead


def test_a_request_whose_estimated_cost_exceeds_the_cap_is_rejected(
    bundle: CompiledBundle,
) -> None:
    # 1,000 output tokens of gpt-4o at $10 per million is $0.01, ten times the cap.
    ctx = routed(bundle, chat("gpt-4o", max_tokens=1000), tenant("umbrella"))
    result = Caps()(ctx)
    assert isinstance(result, Violation)
    assert result.reject.code == "max_cost_exceeded"
    assert "$0.010" in result.reject.message


def test_the_same_request_on_a_cheaper_model_is_within_the_cost_cap(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, chat("gpt-4o-mini", max_tokens=1000), tenant("umbrella"))
    assert Caps()(ctx) is None


def test_without_a_limit_the_cost_cap_plans_for_the_assumed_output(
    bundle: CompiledBundle,
) -> None:
    # 1,024 assumed output tokens of gpt-4o cost more than $0.001.
    ctx = routed(bundle, chat("gpt-4o"), tenant("umbrella"))
    assert output_tokens(ctx) == ASSUMED_OUTPUT_TOKENS
    assert isinstance(Caps()(ctx), Violation)


def test_before_a_deployment_is_chosen_the_cost_cap_uses_the_model_prices(
    bundle: CompiledBundle,
) -> None:
    ctx = context(bundle, chat("gpt-4o", max_tokens=1000), tenant("umbrella"))
    assert run(ctx, [Parse(), Identify(WORKLOAD), ModelAccess()]) is None
    assert ctx.deployment is None
    assert isinstance(Caps()(ctx), Violation)


def test_a_model_without_a_price_is_not_limited_by_cost(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat("mystery", max_tokens=100_000), tenant("umbrella"))
    assert ctx.deployment is not None and ctx.deployment.price is None
    assert Caps()(ctx) is None


def test_a_deadline_cap_sets_the_request_deadline(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat(), tenant("hooli"))
    before = time.monotonic()
    Caps()(ctx)
    assert ctx.deadline_at is not None
    assert before + 1.5 <= ctx.deadline_at <= time.monotonic() + 1.5


def test_shadow_caps_change_nothing_and_record_what_they_would_have_done(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, chat(text=LONG, max_tokens=500), tenant("soylent"))
    assert Caps()(ctx) is None
    assert ctx.body_patch == {}
    assert ctx.deadline_at is None
    assert [(d.mode, d.outcome, d.reason.split(":")[0]) for d in ctx.decisions] == [
        ("shadow", "would_deny", "max_tokens_clamped"),
        ("shadow", "would_deny", "max_input_tokens_exceeded"),
    ]
    assert WARNING_HEADER not in ctx.response_headers


def test_warn_caps_add_the_warning_header(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, chat(max_tokens=500), tenant("tyrell"))
    assert Caps()(ctx) is None
    assert ctx.body_patch == {}
    assert ctx.response_headers[WARNING_HEADER] == "caps/trial-loud: max_tokens_clamped"


def test_embeddings_have_no_output_to_cap_but_their_input_counts(bundle: CompiledBundle) -> None:
    body = {"model": "text-embedding-3-small", "input": [LONG, [1, 2, 3]]}
    ctx = routed(bundle, body, tenant("initech"), route=EMBEDDINGS)
    result = Caps()(ctx)
    assert isinstance(result, Violation) and result.reject.code == "max_input_tokens_exceeded"
    assert ctx.body_patch.keys() <= {"model"}
    assert output_tokens(ctx) == 0


def test_an_anthropic_max_tokens_above_the_cap_is_clamped(bundle: CompiledBundle) -> None:
    body = {
        "model": "claude-haiku",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    ctx = routed(bundle, body, route=MESSAGES)
    assert Caps()(ctx) is None
    assert ctx.body_patch == {"max_tokens": 100}
    assert input_tokens(ctx) == 2 + 4  # "Hello there" and the per-message overhead


def test_a_responses_request_without_a_limit_gets_max_output_tokens(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, {"model": "gpt-4o-mini", "input": "Hello"}, route=RESPONSES)
    Caps()(ctx)
    assert ctx.body_patch == {"max_output_tokens": 100}


def test_counting_tokens_generates_nothing_to_cap_or_plan_for(bundle: CompiledBundle) -> None:
    body = {"model": "claude-haiku", "messages": [{"role": "user", "content": "Hello there"}]}
    ctx = routed(bundle, body, route=COUNT_TOKENS)
    assert Caps()(ctx) is None
    assert ctx.body_patch == {}
    assert output_tokens(ctx) == 0
