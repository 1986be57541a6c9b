"""Identity from workload, headers and virtual keys; `auth.require_key`; key scopes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sidecar_kit import WORKLOAD, chat, compile_policy, context

from sidecar.app import build_pipeline
from sidecar.errors import Reject
from sidecar.limits import Limiter
from sidecar.pipeline import Pipeline
from sidecar.policy import CompiledBundle
from sidecar.settings import Settings
from sidecar.stages.access import ModelAccess
from sidecar.stages.identify import Identify


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


RULES = f"""
virtual_keys:
  - {{id: alice-key, tenant: globex, user: alice, key_sha256: {sha("sk-alice")}, scopes: [fast]}}
  - {{id: old-key, tenant: globex, key_sha256: {sha("sk-old")}, expires_at: "2020-01-01"}}
  - {{id: batch-key, tenant: globex, key_sha256: {sha("sk-batch")}}}
  - {{id: small-key, tenant: globex, key_sha256: {sha("sk-small")}, scopes: [small-2]}}
rules:
  - name: globex-needs-keys
    match: {{tenant: globex}}
    auth: {{require_key: true}}
    models: {{allow: [gpt-4o-mini], mode: shadow}}
  - name: initech-tries-keys
    match: {{tenant: initech}}
    auth: {{require_key: true, mode: shadow}}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path / "policy", RULES))


@pytest.fixture
def pipeline() -> Pipeline:
    return build_pipeline(Settings(workload=WORKLOAD), Limiter())


def identified(bundle: CompiledBundle, headers: dict[str, str], **body: object) -> Reject | None:
    ctx = context(bundle, chat(**body), headers)
    ctx.view = ctx.route.decoder.decode(ctx.body)
    return Identify(WORKLOAD)(ctx)


def test_identity_comes_from_the_workload_and_the_metadata_headers(bundle: CompiledBundle) -> None:
    ctx = context(
        bundle,
        chat(),
        {
            "x-sidegate-user": "u-7",
            "x-sidegate-endpoint": "summarize",
            "x-sidegate-prompt-version": "v3",
            "x-sidegate-data-mode": "test",
            "x-request-id": "client-1",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    ctx.view = ctx.route.decoder.decode(ctx.body)
    assert Identify(WORKLOAD)(ctx) is None
    i = ctx.identity
    assert (i.tenant, i.app, i.namespace, i.environment) == ("acme", "billing", "acme", "prod")
    assert (i.user, i.endpoint, i.prompt_version, i.data_mode) == ("u-7", "summarize", "v3", "test")
    assert (i.client_request_id, i.trace_id) == ("client-1", "0af7651916cd43dd8448eb211c80319c")


def test_the_openai_user_field_is_the_user_when_no_header_names_one(
    bundle: CompiledBundle,
) -> None:
    ctx = context(bundle, chat(user="end-user-9"))
    ctx.view = ctx.route.decoder.decode(ctx.body)
    Identify(WORKLOAD)(ctx)
    assert ctx.identity.user == "end-user-9"


def test_a_data_mode_other_than_real_or_test_is_refused(bundle: CompiledBundle) -> None:
    reject = identified(bundle, {"x-sidegate-data-mode": "demo"})
    assert reject is not None and reject.code == "invalid_data_mode" and reject.status == 400


def test_a_valid_virtual_key_binds_its_tenant_and_user_over_any_header(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    ctx = context(
        bundle,
        chat("fast"),
        {"authorization": "Bearer sk-alice", "x-sidegate-tenant": "acme", "x-sidegate-user": "x"},
    )
    assert pipeline.run(ctx) is None
    assert (ctx.identity.tenant, ctx.identity.user) == ("globex", "alice")
    assert ctx.identity.virtual_key_id == "alice-key"


def test_an_anthropic_style_x_api_key_is_read_as_the_virtual_key(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    ctx = context(bundle, chat(), {"x-api-key": "sk-batch"})
    assert pipeline.run(ctx) is None
    assert ctx.identity.virtual_key_id == "batch-key"


def test_an_expired_virtual_key_gets_401(pipeline: Pipeline, bundle: CompiledBundle) -> None:
    reject = pipeline.run(context(bundle, chat(), {"authorization": "Bearer sk-old"}))
    assert reject is not None
    assert (reject.status, reject.code) == (401, "expired_api_key")


def test_a_request_without_a_key_where_one_is_required_gets_401(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    ctx = context(bundle, chat(), {"x-sidegate-tenant": "globex"})
    reject = pipeline.run(ctx)
    assert reject is not None
    assert (reject.status, reject.code) == (401, "invalid_api_key")
    assert ctx.decisions[0].rule == "globex-needs-keys"


def test_a_key_that_is_not_a_virtual_key_counts_as_no_key(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    headers = {"x-sidegate-tenant": "globex", "authorization": "Bearer sk-made-up"}
    reject = pipeline.run(context(bundle, chat(), headers))
    assert reject is not None and reject.status == 401


def test_no_key_is_needed_where_no_rule_requires_one(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    assert pipeline.run(context(bundle, chat(), {"authorization": "Bearer sk-anything"})) is None


def test_a_required_key_in_shadow_mode_lets_the_request_through_and_records_it(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    ctx = context(bundle, chat(), {"x-sidegate-tenant": "initech"})
    assert pipeline.run(ctx) is None
    [decision] = ctx.decisions
    assert (decision.stage, decision.outcome, decision.mode) == ("auth", "would_deny", "shadow")


def test_a_key_scoped_to_an_alias_may_use_that_alias(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    ctx = context(bundle, chat("gpt-4o-mini"), {"authorization": "Bearer sk-alice"})
    assert pipeline.run(ctx) is None


def test_a_key_scope_denies_even_where_the_model_policy_is_only_shadowed(
    pipeline: Pipeline, bundle: CompiledBundle
) -> None:
    # Scopes are part of the credential, so no policy mode softens them.
    reject = pipeline.run(context(bundle, chat("gpt-4o"), {"authorization": "Bearer sk-alice"}))
    assert reject is not None
    assert (reject.status, reject.code) == (403, "model_not_allowed")


def test_a_tier_request_resolves_to_a_model_of_the_tier_within_the_key_scope(
    bundle: CompiledBundle,
) -> None:
    # gpt-4o-mini comes first in the cheap tier, but this key may only use small-2.
    ctx = context(bundle, chat("tier:cheap"), {"authorization": "Bearer sk-small"})
    ctx.view = ctx.route.decoder.decode(ctx.body)
    assert Pipeline([Identify(WORKLOAD), ModelAccess()]).run(ctx) is None
    assert ctx.model is not None and ctx.model.name == "small-2"
