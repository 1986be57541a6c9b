"""Stage `metadata`: fields a rule requires, per environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from sidecar_kit import WORKLOAD, chat, compile_policy, context, run

from sidecar.context import Identity
from sidecar.pipeline import Violation
from sidecar.policy import CompiledBundle
from sidecar.stages.identify import Identify
from sidecar.stages.metadata import RequiredMetadata
from sidecar.stages.parse import Parse

RULES = """
rules:
  - name: tag-prod-traffic
    required_metadata: {fields: [endpoint, user], environments: [prod]}
  - name: always-versioned
    match: {tenant: globex}
    required_metadata: {fields: [prompt_version]}
  - name: soft-tags
    match: {tenant: initech}
    required_metadata: {fields: [endpoint], mode: shadow}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path / "policy", RULES))


def check(
    bundle: CompiledBundle, headers: dict[str, str], workload: Identity = WORKLOAD
) -> Violation | None:
    ctx = context(bundle, chat(), headers)
    assert run(ctx, [Parse(), Identify(workload)]) is None
    return RequiredMetadata()(ctx)


def test_a_prod_request_without_the_required_fields_is_refused_naming_the_headers(
    bundle: CompiledBundle,
) -> None:
    result = check(bundle, {})
    assert isinstance(result, Violation)
    assert (result.reject.status, result.reject.code) == (400, "missing_metadata")
    assert result.reject.message == (
        "Policy `tag-prod-traffic` requires x-sidegate-endpoint, x-sidegate-user "
        "on every request in prod."
    )


def test_a_prod_request_with_the_required_fields_passes(bundle: CompiledBundle) -> None:
    assert check(bundle, {"x-sidegate-endpoint": "search", "x-sidegate-user": "u1"}) is None


def test_only_the_missing_fields_are_named(bundle: CompiledBundle) -> None:
    result = check(bundle, {"x-sidegate-endpoint": "search"})
    assert result is not None and "x-sidegate-user" in result.reject.message
    assert "x-sidegate-endpoint" not in result.reject.message


def test_the_requirement_does_not_apply_outside_its_environments(bundle: CompiledBundle) -> None:
    staging = Identity(tenant="acme", app="billing", environment="staging")
    assert check(bundle, {}, staging) is None


def test_a_requirement_without_environments_applies_everywhere(bundle: CompiledBundle) -> None:
    dev = Identity(tenant="globex", app="billing", environment="dev")
    result = check(bundle, {}, dev)
    assert result is not None and result.rule == "always-versioned"


def test_a_shadowed_requirement_is_reported_in_its_mode(bundle: CompiledBundle) -> None:
    result = check(bundle, {"x-sidegate-tenant": "initech"})
    assert result is not None and result.mode == "shadow"
