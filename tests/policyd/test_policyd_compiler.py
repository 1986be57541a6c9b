"""Compiling source into the canonical bundle: prices, ordering, hashes, aliases, virtual keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import genai_prices
import pytest
from policy_samples import BASE, WriteFiles

import sidegate
from policyd.bundle import Bundle, Price, ProviderKind, encode_bundle
from policyd.compiler import compile_dir, public_price
from policyd.problems import Invalid

EXAMPLE = Path(sidegate.__file__).parent / "examples" / "policies"


def compiled(folder: Path, **environ: str) -> Bundle:
    result = compile_dir(folder, environ=environ, now_ms=1_700_000_000_000)
    assert not isinstance(result, Invalid), result.render()
    return result


def price_of(bundle: Bundle, model: str) -> Price | None:
    return bundle.models[model].deployments[0].price


def test_known_model_gets_its_genai_prices_list_price(write_files: WriteFiles) -> None:
    price = price_of(compiled(write_files(**{"a.yaml": BASE})), "gpt-4o-mini")
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == ("0.15", "0.6")
    assert price.cached_input_per_mtok == "0.075"
    assert price.source == f"genai-prices@{genai_prices.__version__}"


def test_policy_price_override_wins_over_the_list_price(write_files: WriteFiles) -> None:
    prices = 'prices:\n  gpt-4o-mini: {input_per_mtok: "0.10", output_per_mtok: "0.40"}\n'
    price = price_of(compiled(write_files(**{"a.yaml": BASE, "p.yaml": prices})), "gpt-4o-mini")
    assert price == Price(input_per_mtok="0.10", output_per_mtok="0.40", source="policy")


def test_override_keyed_by_the_deployment_model_name_applies(write_files: WriteFiles) -> None:
    models = (
        "models:\n  chat:\n    deployments: [{provider: openai, model: gpt-4o-2024-08-06}]\n"
        "prices:\n  gpt-4o-2024-08-06: {input_per_mtok: 2, output_per_mtok: 8.5}\n"
    )
    price = price_of(compiled(write_files(**{"a.yaml": BASE, "b.yaml": models})), "chat")
    assert price == Price(input_per_mtok="2", output_per_mtok="8.5", source="policy")


def test_model_unknown_to_genai_prices_has_no_price(write_files: WriteFiles) -> None:
    local = (
        "providers:\n  vllm: {kind: openai_compatible, base_url: http://vllm:8000/v1}\n"
        "models:\n  llama:\n    deployments: [{provider: vllm, model: my-finetune-7b}]\n"
    )
    assert price_of(compiled(write_files(**{"a.yaml": BASE, "b.yaml": local})), "llama") is None


@pytest.mark.parametrize(
    ("kind", "model", "input_per_mtok"),
    [
        ("anthropic", "claude-3-5-haiku-20241022", "0.8"),
        ("gemini", "gemini-2.0-flash", "0.1"),
        ("azure", "gpt-4o-mini", "0.15"),
        ("openai_compatible", "gpt-4o-mini", "0.15"),
    ],
)
def test_provider_kinds_map_to_their_genai_prices_provider(
    kind: ProviderKind, model: str, input_per_mtok: str
) -> None:
    price = public_price(kind, model)
    assert price is not None
    assert price.input_per_mtok == input_per_mtok


def test_content_hash_ignores_key_order_whitespace_and_comments(write_files: WriteFiles) -> None:
    first = compiled(write_files(**{"a.yaml": BASE}))
    reordered = """
        # the same policy, written differently
        rules:
          - {models: {allow: ["*"]}, name: default}
        models:
          gpt-4o-mini:
            deployments:   [ {model: gpt-4o-mini,   provider: openai} ]
            tier: cheap
        providers: {openai: {credential: "env:OPENAI_API_KEY", base_url: "https://api.openai.com/v1", kind: openai}}
    """  # noqa: E501 - one long flow mapping is the point of this sample
    second = compiled(write_files(**{"a.yaml": reordered}))
    assert first.content_hash == second.content_hash


def test_content_hash_changes_when_policy_changes(write_files: WriteFiles) -> None:
    before = compiled(write_files(**{"a.yaml": BASE}))
    after = compiled(write_files(**{"a.yaml": BASE.replace("tier: cheap", "tier: budget")}))
    assert before.content_hash != after.content_hash


def test_definitions_moved_between_files_keep_the_hash(write_files: WriteFiles) -> None:
    together = compiled(write_files(**{"a.yaml": BASE + "aliases: {fast: gpt-4o-mini}\n"}))
    split = write_files(**{"a.yaml": BASE, "b.yaml": "aliases: {fast: gpt-4o-mini}\n"})
    assert compiled(split).content_hash == together.content_hash


def test_rules_keep_file_name_then_file_order_and_name_their_source(
    write_files: WriteFiles,
) -> None:
    rules = "rules:\n  - {name: b0, match: {app: b0}}\n  - {name: b1, match: {app: b1}}\n"
    bundle = compiled(write_files(**{"b.yaml": rules, "a.yaml": BASE}))
    assert [(r.name, r.source) for r in bundle.rules] == [
        ("default", "a.yaml#rules[0]"),
        ("b0", "b.yaml#rules[0]"),
        ("b1", "b.yaml#rules[1]"),
    ]


def test_alias_chains_are_flattened_to_their_model(write_files: WriteFiles) -> None:
    aliases = "aliases: {cheapest: fast, fast: gpt-4o-mini}\n"
    bundle = compiled(write_files(**{"a.yaml": BASE, "b.yaml": aliases}))
    assert bundle.aliases == {"cheapest": "gpt-4o-mini", "fast": "gpt-4o-mini"}


def test_key_env_is_hashed_at_compile_time_and_never_published(write_files: WriteFiles) -> None:
    keys = (
        "virtual_keys:\n  - {id: ci, tenant: platform, key_env: CI_KEY, expires_at: 2030-01-01}\n"
    )
    bundle = compiled(write_files(**{"a.yaml": BASE, "k.yaml": keys}), CI_KEY="sg-secret-123")
    [key] = bundle.virtual_keys
    assert key.sha256 == hashlib.sha256(b"sg-secret-123").hexdigest()
    assert key.expires_at == 1_893_456_000
    assert b"sg-secret-123" not in encode_bundle(bundle)


def test_unset_key_env_variable_is_a_located_problem(write_files: WriteFiles) -> None:
    keys = "virtual_keys:\n  - {id: ci, tenant: platform, key_env: CI_KEY}\n"
    folder = write_files(**{"a.yaml": BASE, "k.yaml": keys})
    result = compile_dir(folder, environ={})
    assert isinstance(result, Invalid)
    assert result.render() == f"{folder}/k.yaml:2: virtual_keys[0].key_env: $CI_KEY is not set"


def test_the_shipped_example_policy_compiles() -> None:
    bundle = compiled(EXAMPLE)
    assert set(bundle.models) == {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"}
    assert price_of(bundle, "gpt-4o") == Price(
        input_per_mtok="2.50", output_per_mtok="10.00", cached_input_per_mtok="1.25"
    )


def test_contract_fields_written_in_source_reach_the_bundle(write_files: WriteFiles) -> None:
    tuned = BASE.replace("tier: cheap", "tier: cheap\n    strategy: latency").replace(
        '      allow: ["*"]', '      allow: ["*"]\n    routing: {regions: [eu]}'
    )
    bundle = compiled(write_files(**{"a.yaml": tuned}))
    assert bundle.models["gpt-4o-mini"].strategy == "latency"
    assert bundle.rules[0].routing is not None
    assert bundle.rules[0].routing.regions == ("eu",)
