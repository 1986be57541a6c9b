"""Where requests may go: weighted splits, residency, fallback chains, health and latency."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from gateway_kit import compile_policy

from sidecar.context import Identity, RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Pipeline
from sidecar.policy import CompiledBundle
from sidecar.routes import CHAT, EMBEDDINGS, Route
from sidecar.routing.health import HealthBook
from sidecar.routing.plan import Step, chain, choose
from sidecar.stages.access import ModelAccess
from sidecar.stages.identify import Identify
from sidecar.stages.parse import Parse
from sidecar.stages.route import ChooseDeployment
from sidecar.views import ChatView, EmbeddingsView

POLICY = """
providers:
  us: {kind: openai, base_url: "https://us.example", region: us-east-1}
  eu: {kind: anthropic, base_url: "https://eu.example", region: eu-west-1}
  gem: {kind: gemini, base_url: "https://gem.example", region: eu-central-1}
models:
  chat:
    deployments:
      - {provider: us, model: stable, weight: 99}
      - {provider: us, model: canary, weight: 1}
    fallbacks: [eu-only, secret]
  eu-only:
    deployments: [{provider: eu, model: claude}]
  secret:
    deployments: [{provider: gem, model: gemini}]
  us-only:
    deployments: [{provider: us, model: gpt}]
  fast-pick:
    strategy: latency
    deployments:
      - {provider: us, model: a}
      - {provider: us, model: b}
  vectors:
    kind: embedding
    deployments:
      - {provider: gem, model: text-embedding-004}
      - {provider: us, model: text-embedding-3-small}
rules:
  - name: default
    models: {deny: [secret]}
  - name: eu-residency
    match: {tenant: eu-bank}
    routing: {regions: [eu]}
  - name: eu-watch
    match: {tenant: eu-watch}
    routing: {regions: [eu], mode: warn}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    return CompiledBundle(compile_policy(tmp_path, POLICY))


def run(
    bundle: CompiledBundle, model: str, tenant: str = "acme", route: Route = CHAT
) -> tuple[RequestContext, Reject | None]:
    """A request run through the stages up to and including `route`."""
    headers = {"x-sidegate-tenant": tenant}
    ctx = RequestContext(make_mocked_request("POST", "/v1/x", headers=headers), route, "id-1")
    ctx.bundle = bundle
    if route is EMBEDDINGS:
        ctx.body = b'{"model": "%s", "input": "hi"}' % model.encode()
    else:
        ctx.body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % (
            model.encode()
        )
    stages = [Parse(), Identify(Identity()), ModelAccess(), ChooseDeployment(random.Random(1))]
    return ctx, Pipeline(stages).run(ctx)


def routed(
    bundle: CompiledBundle, model: str, tenant: str = "acme", route: Route = CHAT
) -> RequestContext:
    ctx, reject = run(bundle, model, tenant, route)
    assert reject is None, reject
    return ctx


def test_a_one_percent_canary_gets_about_one_percent_of_requests(bundle: CompiledBundle) -> None:
    stage = ChooseDeployment(random.Random(42))
    ctx = routed(bundle, "chat")
    picks = Counter()
    for _ in range(20_000):
        stage(ctx)
        assert ctx.deployment is not None
        picks[ctx.deployment.model] += 1
    assert 0.007 < picks["canary"] / 20_000 < 0.013


def test_the_fallback_chain_follows_the_policy_order_and_skips_denied_models(
    bundle: CompiledBundle,
) -> None:
    steps = chain(routed(bundle, "chat"))
    assert [s.model.name for s in steps] == ["chat", "eu-only"]


def test_eu_residency_keeps_only_eu_deployments_across_the_chain(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, "eu-only", tenant="eu-bank")
    assert [d.label for s in chain(ctx) for d in s.deployments] == ["eu/claude"]


def test_eu_residency_refuses_a_model_with_no_eu_deployment(bundle: CompiledBundle) -> None:
    _, reject = run(bundle, "us-only", tenant="eu-bank")
    assert reject is not None and reject.code == "residency_unavailable"
    assert reject.error_class == "permission"


def test_residency_in_warn_mode_records_a_would_deny_and_routes_anyway(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, "us-only", tenant="eu-watch")
    assert ctx.decisions[0].outcome == "would_deny" and ctx.decisions[0].rule == "eu-watch"
    assert [d.label for s in chain(ctx) for d in s.deployments] == ["us/gpt"]


def test_providers_that_cannot_serve_a_route_are_left_out(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, "vectors", route=EMBEDDINGS)
    assert isinstance(ctx.view, EmbeddingsView)
    assert [d.label for s in chain(ctx) for d in s.deployments] == ["us/text-embedding-3-small"]


def test_open_circuits_are_skipped(bundle: CompiledBundle) -> None:
    ctx = routed(bundle, "fast-pick")
    health = HealthBook()
    step = chain(ctx)[0]
    a, b = step.deployments
    for _ in range(5):
        health.of(a).breaker.record(a.provider.breaker, False, health.clock())
    assert all(choose(step, health, random.Random(i)) is b for i in range(20))
    for _ in range(5):
        health.of(b).breaker.record(b.provider.breaker, False, health.clock())
    assert choose(step, health, random.Random(0)) is None


def test_latency_strategy_measures_every_deployment_then_prefers_the_fastest(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, "fast-pick")
    assert isinstance(ctx.view, ChatView)
    health = HealthBook()
    step: Step = chain(ctx)[0]
    a, b = step.deployments
    health.of(a).latency.observe(0.5, health.clock())
    assert choose(step, health, random.Random(0)) is b  # unmeasured: tried first
    health.of(b).latency.observe(0.05, health.clock())
    assert all(choose(step, health, random.Random(i)) is b for i in range(20))
    assert choose(step, health, random.Random(0), tried=["us/b"]) is a
