"""Routing and resilience policy fields: written in YAML, compiled by policyd, read by sidecars."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from gateway_kit import compile_policy

from policyd.bundle import Bundle, encode_bundle
from policyd.compiler import compile_dir
from policyd.problems import Invalid
from sidecar.policy import CompiledBundle

FULL = """
providers:
  p:
    kind: openai
    base_url: https://api.example/v1
    region: us-east-1
    first_byte_timeout_ms: 5000
    retry: {max_attempts: 2, budget_ratio: 0.2}
    breaker: {consecutive_failures: 3, open_ms: 10000}
    max_connections: 10
    tls_verify: true
models:
  m:
    strategy: latency
    mirror: {model: candidate, percent: 5}
    fallbacks: [candidate]
    deployments:
      - {provider: p, model: a, first_byte_timeout_ms: 1500}
      - {provider: p, model: b, region: eu-west-1}
  candidate:
    deployments: [{provider: p, model: c}]
rules:
  - name: eu
    match: {tenant: bank}
    routing: {regions: [eu], mode: warn}
"""
PLAIN = """
providers:
  p: {kind: openai, base_url: "https://api.example/v1"}
models:
  m: {deployments: [{provider: p, model: a}]}
"""


def test_routing_fields_travel_from_policy_files_to_the_compiled_bundle(tmp_path: Path) -> None:
    compiled = CompiledBundle(compile_policy(tmp_path, FULL))
    model = compiled.models["m"]
    a, b = model.deployments
    assert model.strategy == "latency"
    assert compiled.mirrors["m"].name == "candidate"
    assert [m.name for m in compiled.fallbacks["m"]] == ["candidate"]
    assert (a.first_byte_timeout_s, b.first_byte_timeout_s) == (1.5, 5.0)
    assert (a.region, b.region) == ("us-east-1", "eu-west-1")
    assert a.provider.retry.max_attempts == 2 and a.provider.breaker.open_ms == 10_000
    policy = compiled.policy_for("bank", "", "")
    assert policy.routing is not None and policy.routing.config.regions == ("eu",)


def test_a_policy_without_routing_fields_compiles_to_the_same_bytes_as_before(
    tmp_path: Path,
) -> None:
    bundle = compile_policy(tmp_path, PLAIN)
    encoded = encode_bundle(bundle)
    for field in (b"retry", b"breaker", b"strategy", b"mirror", b"routing", b"tls_verify"):
        assert field not in encoded  # defaults are left out: content hashes do not move


def test_a_typo_in_a_routing_field_names_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    typo = PLAIN.replace("m: {deployments", "m: {strategy: fastest, deployments")
    (folder / "p.yaml").write_text(typo)
    result = compile_dir(folder)
    assert isinstance(result, Invalid)
    assert [p.path for p in result.problems] == ["models.m.strategy"]


def test_a_bundle_mirroring_an_unknown_model_is_inconsistent(tmp_path: Path) -> None:
    encoded = encode_bundle(compile_policy(tmp_path, PLAIN))
    mirrored = encoded.replace(b'"deployments"', b'"mirror":{"model":"nope"},"deployments"', 1)
    with pytest.raises(KeyError, match="nope"):
        CompiledBundle(msgspec.json.decode(mirrored, type=Bundle))
