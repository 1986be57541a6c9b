"""Semantic checks: references, alias loops, tiers, weights, duplicate rules, credentials, keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_samples import BASE, WriteFiles

from policyd.checks import check, expiry_seconds
from policyd.source import load_source


def semantic(folder: Path) -> list[str]:
    loaded = load_source(folder)
    assert loaded.problems == []
    return [f"{p.line}: {p.path}: {p.message}" for p in check(loaded.source)]


def test_deployment_on_an_unknown_provider_is_reported(write_files: WriteFiles) -> None:
    models = "models:\n  m:\n    deployments: [{provider: azure, model: m}]\n"
    folder = write_files(**{"a.yaml": BASE, "b.yaml": models})
    assert semantic(folder) == ["3: models.m.deployments[0].provider: unknown provider 'azure'"]


def semantic_or_load(folder: Path) -> list[str]:
    loaded = load_source(folder)
    return [p.message for p in [*loaded.problems, *check(loaded.source)]]


def test_unknown_model_in_an_allow_list_is_reported(write_files: WriteFiles) -> None:
    rules = "rules:\n  - name: x\n    match: {app: x}\n    models: {allow: [gpt-4o-mini, gpt-5]}\n"
    folder = write_files(**{"a.yaml": BASE, "b.yaml": rules})
    assert semantic(folder) == ["4: rules[0].models.allow[1]: unknown model or alias 'gpt-5'"]


def test_alias_loop_is_reported_once_with_its_whole_cycle(write_files: WriteFiles) -> None:
    folder = write_files(**{"a.yaml": BASE, "b.yaml": "aliases: {b: c, a: b, c: a, d: a}\n"})
    assert semantic(folder) == ["1: aliases.a: alias loop: a -> b -> c -> a"]


def test_alias_to_an_alias_of_a_model_is_accepted(write_files: WriteFiles) -> None:
    folder = write_files(
        **{"a.yaml": BASE, "b.yaml": "aliases: {cheap: fast, fast: gpt-4o-mini}\n"}
    )
    assert semantic(folder) == []


def test_tier_that_no_model_has_is_reported(write_files: WriteFiles) -> None:
    folder = write_files(**{"a.yaml": BASE + "      deny: ['tier:premium', 'tier:cheap']\n"})
    assert semantic(folder) == ["16: rules[0].models.deny[0]: no model has tier 'premium'"]


@pytest.mark.parametrize("weight", [0, -5])
def test_deployment_weight_must_be_positive(write_files: WriteFiles, weight: int) -> None:
    weighted = BASE.replace("model: gpt-4o-mini", f"model: gpt-4o-mini\n        weight: {weight}")
    folder = write_files(**{"a.yaml": weighted})
    assert semantic(folder) == [
        f"12: models.gpt-4o-mini.deployments[0].weight: must be greater than 0, got {weight}"
    ]


def test_two_rules_with_one_name_are_reported(write_files: WriteFiles) -> None:
    folder = write_files(
        **{"a.yaml": BASE, "b.yaml": "rules:\n  - name: default\n    match: {app: x}\n"}
    )
    [problem] = semantic(folder)
    assert problem.startswith("2: rules[0].name: duplicate rule name 'default' (also at ")


def test_two_rules_with_the_identical_match_are_reported(write_files: WriteFiles) -> None:
    folder = write_files(
        **{
            "a.yaml": BASE + "  - name: team-a\n    match: {tenant: a, app: web}\n",
            "b.yaml": "rules:\n  - name: team-a-web\n    match: {app: web, tenant: a}\n",
        }
    )
    [problem] = semantic(folder)
    assert problem.startswith("3: rules[0].match: same match as rule 'team-a' at ")


@pytest.mark.parametrize(
    ("credential", "ok"),
    [
        ("env:OPENAI_API_KEY", True),
        ("file:/var/run/secrets/openai", True),
        ("sk-proj-abc123", False),
        ("env:OPENAI API KEY", False),
        ("file:relative/path", False),
    ],
)
def test_credentials_must_be_env_or_file_references(
    write_files: WriteFiles, credential: str, ok: bool
) -> None:
    folder = write_files(**{"a.yaml": BASE.replace("env:OPENAI_API_KEY", credential)})
    expected = [] if ok else [
        "5: providers.openai.credential: must be env:NAME or file:/path, never the secret itself"
    ]  # fmt: skip
    assert semantic(folder) == expected


def test_virtual_key_needs_exactly_one_of_hash_and_env(write_files: WriteFiles) -> None:
    keys = (
        "virtual_keys:\n"
        "  - {id: none, tenant: t}\n"
        f"  - {{id: both, tenant: t, key_env: CI_KEY, key_sha256: '{'0' * 64}'}}\n"
        "  - {id: env, tenant: t, key_env: CI_KEY}\n"
    )
    folder = write_files(**{"a.yaml": BASE, "keys.yaml": keys})
    assert semantic(folder) == [
        "2: virtual_keys[0]: set exactly one of key_sha256 and key_env",
        "3: virtual_keys[1]: set exactly one of key_sha256 and key_env",
    ]


def test_virtual_key_with_unparseable_expiry_is_reported(write_files: WriteFiles) -> None:
    keys = "virtual_keys:\n  - {id: k, tenant: t, key_env: K, expires_at: next-year}\n"
    folder = write_files(**{"a.yaml": BASE, "keys.yaml": keys})
    assert semantic(folder) == [
        "2: virtual_keys[0].expires_at: expected an ISO date, an ISO datetime or unix seconds"
    ]


def test_expiry_reads_dates_datetimes_and_unix_seconds_as_utc() -> None:
    assert expiry_seconds("2030-01-01") == 1_893_456_000
    assert expiry_seconds("2030-01-01T01:00:00") == 1_893_459_600
    assert expiry_seconds("2030-01-01T01:00:00+01:00") == 1_893_456_000
    assert expiry_seconds(1_893_456_000) == expiry_seconds("1893456000") == 1_893_456_000


def test_references_to_a_definition_that_failed_to_load_are_not_reported_again(
    write_files: WriteFiles,
) -> None:
    folder = write_files(
        **{
            "a.yaml": BASE,
            "b.yaml": "models:\n  gpt-4o:\n    deployments: [{provider: openai, model: 4}]\n",
            "c.yaml": "aliases: {smart: gpt-4o}\n",
        }
    )
    assert semantic_or_load(folder) == ["expected str, got int"]


def test_fields_policyd_computes_are_refused_in_source(write_files: WriteFiles) -> None:
    priced = BASE.replace(
        "model: gpt-4o-mini",
        "model: gpt-4o-mini\n        price: {input_per_mtok: '1', output_per_mtok: '1'}",
    )
    folder = write_files(**{"a.yaml": priced + "    source: elsewhere.yaml#rules[9]\n"})
    assert semantic(folder) == [
        "12: models.gpt-4o-mini.deployments[0].price: set by policyd; put negotiated rates "
        "in prices:",
        "17: rules[0].source: set by policyd to the file and index of the rule",
    ]


def test_mirror_to_an_unknown_model_is_reported(write_files: WriteFiles) -> None:
    mirrored = BASE.replace("tier: cheap", "tier: cheap\n    mirror: {model: gpt-5, percent: 5}")
    assert semantic(write_files(**{"a.yaml": mirrored})) == [
        "9: models.gpt-4o-mini.mirror.model: unknown model or alias 'gpt-5'"
    ]
