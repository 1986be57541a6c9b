"""Rule precedence per section, model access (allow, deny, aliases, tiers) and the four modes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sidecar_kit import WORKLOAD, chat, compile_policy, context

from sidecar.app import build_pipeline
from sidecar.context import Identity
from sidecar.limits import Limiter
from sidecar.pipeline import WARNING_HEADER, Pipeline
from sidecar.policy import CompiledBundle
from sidecar.settings import Settings

PRECEDENCE = """
rules:
  - name: everyone
    models: {allow: ["*"], deny: [gpt-4o]}
    rate_limits: [{scope: tenant, rpm: 1000}]
    caps: {max_tokens: 4000}
  - name: acme
    match: {tenant: acme}
    caps: {max_tokens: 1000}
  - name: billing-app
    match: {app: billing}
    caps: {max_tokens: 2000}
    models: {allow: [gpt-4o-mini, gpt-4o]}
  - name: billing-batch
    match: {app: billing, endpoint: batch}
    caps: {max_tokens: 3000}
    models: {allow: ["tier:cheap"]}
  - name: acme-batch
    match: {tenant: acme, endpoint: batch}
    required_metadata: {fields: [user]}
"""


@pytest.fixture
def rules(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path / "policy", PRECEDENCE))


def sources(bundle: CompiledBundle, tenant: str, app: str, endpoint: str) -> dict[str, str]:
    """Which rule each section of the resolved policy came from."""
    policy = bundle.policy_for(tenant, app, endpoint)
    return {
        name: section.rule
        for name in ("models", "caps", "rate_limits", "required_metadata", "auth")
        if (section := getattr(policy, name)) is not None
    }


def test_each_section_comes_from_the_most_specific_rule_that_sets_it(
    rules: CompiledBundle,
) -> None:
    assert sources(rules, "acme", "billing", "batch") == {
        "models": "billing-batch",  # acme-batch and acme set no models section
        "caps": "acme",  # tenant outranks app + endpoint
        "rate_limits": "everyone",
        "required_metadata": "acme-batch",
    }


def test_an_app_rule_outranks_an_endpoint_free_wildcard(rules: CompiledBundle) -> None:
    assert sources(rules, "globex", "billing", "") == {
        "models": "billing-app",
        "caps": "billing-app",
        "rate_limits": "everyone",
    }


def test_app_and_endpoint_together_outrank_the_app_alone(rules: CompiledBundle) -> None:
    assert sources(rules, "globex", "billing", "batch")["caps"] == "billing-batch"


def test_a_request_no_specific_rule_matches_gets_the_wildcard_rule(
    rules: CompiledBundle,
) -> None:
    assert set(sources(rules, "globex", "ledger", "").values()) == {"everyone"}


MODELS = """
rules:
  - name: acme-models
    match: {tenant: acme}
    models: {allow: ["tier:cheap", fast], deny: [gpt-4o-mini]}
  - name: initech-nothing
    match: {tenant: initech}
    models: {deny: ["*"]}
"""


@pytest.fixture
def models(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path / "policy", MODELS))


@pytest.fixture
def pipeline() -> Pipeline:
    return build_pipeline(Settings(workload=WORKLOAD), Limiter())


def test_a_model_in_the_allowlist_is_forwarded_under_its_catalogue_name(
    pipeline: Pipeline, models: CompiledBundle
) -> None:
    ctx = context(models, chat("small-2"))
    assert pipeline.run(ctx) is None
    assert ctx.model is not None and ctx.model.name == "small-2"


def test_a_model_outside_the_allowlist_gets_403_naming_the_rule(
    pipeline: Pipeline, models: CompiledBundle
) -> None:
    reject = pipeline.run(context(models, chat("gpt-4o")))
    assert reject is not None
    assert (reject.status, reject.code) == (403, "model_not_allowed")
    assert "acme-models" in reject.message


def test_the_denylist_wins_over_the_allowlist(pipeline: Pipeline, models: CompiledBundle) -> None:
    reject = pipeline.run(context(models, chat("gpt-4o-mini")))
    assert reject is not None and reject.code == "model_not_allowed"


def test_an_alias_of_a_denied_model_is_denied_too(
    pipeline: Pipeline, models: CompiledBundle
) -> None:
    reject = pipeline.run(context(models, chat("fast")))
    assert reject is not None and "fast (gpt-4o-mini)" in reject.message


def test_an_alias_resolves_to_its_model_and_that_model_s_deployment(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    bundle = CompiledBundle(compile_policy(tmp_path / "p", "rules: []\n"))
    ctx = context(bundle, chat("fast"))
    assert pipeline.run(ctx) is None
    assert ctx.model is not None and ctx.model.name == "gpt-4o-mini"
    assert ctx.deployment is not None and ctx.deployment.model == "gpt-4o-mini"


def test_a_tier_resolves_to_the_first_model_of_the_tier_the_policy_allows(
    pipeline: Pipeline, models: CompiledBundle
) -> None:
    # gpt-4o-mini is the tier's first model, but acme's policy denies it.
    ctx = context(models, chat("tier:cheap"))
    assert pipeline.run(ctx) is None
    assert ctx.model is not None and ctx.model.name == "small-2"


def test_deny_of_everything_denies_every_model(pipeline: Pipeline, models: CompiledBundle) -> None:
    reject = pipeline.run(context(models, chat("small-2"), {"x-sidegate-tenant": "initech"}))
    assert reject is not None and reject.code == "model_not_allowed"


def test_an_unknown_model_gets_404(pipeline: Pipeline, models: CompiledBundle) -> None:
    reject = pipeline.run(context(models, chat("gpt-9")))
    assert reject is not None
    assert (reject.status, reject.code) == (404, "model_not_found")


def test_an_unknown_tier_gets_404(pipeline: Pipeline, models: CompiledBundle) -> None:
    reject = pipeline.run(context(models, chat("tier:platinum")))
    assert reject is not None and reject.status == 404


def test_an_embedding_model_cannot_serve_chat(pipeline: Pipeline, models: CompiledBundle) -> None:
    reject = pipeline.run(context(models, chat("text-embedding-3-small")))
    assert reject is not None and reject.code == "model_kind_mismatch"


# --- modes ---------------------------------------------------------------------------------


def moded(tmp_path: Path, mode: str) -> CompiledBundle:
    rules = f"rules:\n  - name: only-mini\n    models: {{allow: [gpt-4o-mini], mode: {mode}}}\n"
    return CompiledBundle(compile_policy(tmp_path / mode, rules))


def test_enforce_mode_denies_and_records_the_denial(pipeline: Pipeline, tmp_path: Path) -> None:
    ctx = context(moded(tmp_path, "enforce"), chat("gpt-4o"))
    reject = pipeline.run(ctx)
    assert reject is not None and reject.status == 403
    [decision] = ctx.decisions
    assert (decision.stage, decision.rule, decision.mode, decision.outcome) == (
        "models", "only-mini", "enforce", "denied",
    )  # fmt: skip


def test_warn_mode_proceeds_with_a_warning_header_and_a_decision(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    ctx = context(moded(tmp_path, "warn"), chat("gpt-4o"))
    assert pipeline.run(ctx) is None
    assert ctx.response_headers[WARNING_HEADER] == "models/only-mini: model_not_allowed"
    [decision] = ctx.decisions
    assert (decision.mode, decision.outcome) == ("warn", "would_deny")
    assert decision.reason.startswith("model_not_allowed: ")


def test_shadow_mode_proceeds_with_a_decision_and_no_header(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    ctx = context(moded(tmp_path, "shadow"), chat("gpt-4o"))
    assert pipeline.run(ctx) is None
    assert WARNING_HEADER not in ctx.response_headers
    [decision] = ctx.decisions
    assert (decision.mode, decision.outcome) == ("shadow", "would_deny")


def test_off_mode_does_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    ctx = context(moded(tmp_path, "off"), chat("gpt-4o"))
    assert pipeline.run(ctx) is None
    assert ctx.decisions == []
    assert ctx.response_headers == {}


def test_a_shadowed_model_policy_does_not_steer_tier_resolution(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    rules = "rules:\n  - name: r\n    models: {deny: [gpt-4o-mini], mode: shadow}\n"
    ctx = context(CompiledBundle(compile_policy(tmp_path / "p", rules)), chat("tier:cheap"))
    assert pipeline.run(ctx) is None
    assert ctx.model is not None and ctx.model.name == "gpt-4o-mini"
    assert [d.outcome for d in ctx.decisions] == ["would_deny"]


def test_the_workload_tenant_applies_when_no_header_names_one(
    pipeline: Pipeline, models: CompiledBundle
) -> None:
    other = Identity(tenant="initech", app="billing", environment="prod")
    ctx = context(models, chat("small-2"))
    reject = build_pipeline(Settings(workload=other), Limiter()).run(ctx)
    assert reject is not None and "initech-nothing" in reject.message
