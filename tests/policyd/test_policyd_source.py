"""Loading policy folders: typed validation with file, line and field path; merging files."""

from __future__ import annotations

import os
from pathlib import Path

from policy_samples import BASE, WriteFiles

from policyd.checks import check
from policyd.source import fingerprint, load_source, policy_files


def problems_of(folder: Path) -> list[str]:
    loaded = load_source(folder)
    return [str(p) for p in sorted([*loaded.problems, *check(loaded.source)])]


def test_type_error_names_the_file_the_line_and_the_field_path(write_files: WriteFiles) -> None:
    folder = write_files(
        **{
            "base.yaml": BASE,
            "team-a.yaml": """
                rules:
                  - name: team-a
                    match: {tenant: a}
                  - name: team-a-batch
                    match: {tenant: a, endpoint: batch}
                    caps:
                      max_tokens: "12"
            """,
        }
    )
    assert problems_of(folder) == [
        f"{folder}/team-a.yaml:7: rules[1].caps.max_tokens: expected int, got str"
    ]


def test_misspelt_field_is_reported_at_its_own_line(write_files: WriteFiles) -> None:
    folder = write_files(
        **{
            "a.yaml": """
                providers:
                  openai:
                    kind: openai
                    base_url: https://api.openai.com/v1
                    credentials: env:OPENAI_API_KEY
            """
        }
    )
    assert problems_of(folder) == [
        f"{folder}/a.yaml:5: providers.openai.credentials: unknown field"
    ]


def test_missing_required_field_is_reported_at_the_entry(write_files: WriteFiles) -> None:
    folder = write_files(**{"a.yaml": "providers:\n  openai:\n    kind: openai\n"})
    assert problems_of(folder) == [
        f"{folder}/a.yaml:2: providers.openai: missing required field base_url"
    ]


def test_files_are_merged_into_one_source(write_files: WriteFiles) -> None:
    folder = write_files(
        **{
            "1-providers.yaml": """
                providers:
                  openai: {kind: openai, base_url: https://api.openai.com/v1}
            """,
            "2-models.yaml": """
                models:
                  gpt-4o: {deployments: [{provider: openai, model: gpt-4o}]}
                aliases: {smart: gpt-4o}
            """,
            "3-rules.yml": "rules: [{name: default, models: {allow: [smart]}}]\n",
        }
    )
    loaded = load_source(folder)
    assert (loaded.problems, check(loaded.source)) == ([], [])
    assert (set(loaded.source.providers), set(loaded.source.models)) == ({"openai"}, {"gpt-4o"})
    assert [r.value.name for r in loaded.source.rules] == ["default"]


def test_a_name_defined_in_two_files_names_both_files(write_files: WriteFiles) -> None:
    folder = write_files(
        **{
            "a.yaml": BASE,
            "b.yaml": """
                models:
                  gpt-4o-mini:
                    deployments: [{provider: openai, model: gpt-4o-mini}]
            """,
        }
    )
    assert problems_of(folder) == [
        f"{folder}/b.yaml:2: models.gpt-4o-mini: also defined in {folder}/a.yaml:7"
    ]


def test_a_key_repeated_inside_one_file_is_reported(write_files: WriteFiles) -> None:
    folder = write_files(
        **{"a.yaml": BASE + "aliases:\n  fast: gpt-4o-mini\n  fast: gpt-4o-mini\n"}
    )
    assert problems_of(folder) == [
        f"{folder}/a.yaml:18: aliases.fast: duplicate key; first defined on line 17"
    ]


def test_off_and_dates_are_read_as_the_strings_authors_wrote(write_files: WriteFiles) -> None:
    extra = f"""
  - name: shadow-caps
    match:
      app: batch
    caps:
      max_tokens: 100
      mode: off
virtual_keys:
  - id: ci
    tenant: t
    key_sha256: {"a" * 64}
    expires_at: 2030-01-01
"""
    loaded = load_source(write_files(**{"a.yaml": BASE + extra}))
    assert loaded.problems == []
    assert loaded.source.virtual_keys[0].value.expires_at == "2030-01-01"
    caps = loaded.source.rules[1].value.caps
    assert caps is not None
    assert caps.mode == "off"


def test_invalid_yaml_is_reported_with_its_line(write_files: WriteFiles) -> None:
    folder = write_files(**{"a.yaml": BASE, "b.yaml": "rules:\n  - name: x\n    match: {app: [\n"})
    [problem] = problems_of(folder)
    assert problem.startswith(f"{folder}/b.yaml:4: invalid YAML:")


def test_unknown_section_is_reported(write_files: WriteFiles) -> None:
    folder = write_files(**{"a.yaml": BASE + "rule:\n  - name: typo\n"})
    assert problems_of(folder) == [
        f"{folder}/a.yaml:16: rule: unknown section; expected providers, models, aliases, "
        "prices, rules, virtual_keys"
    ]


def test_every_problem_in_every_file_is_collected(write_files: WriteFiles) -> None:
    folder = write_files(
        **{
            "a.yaml": BASE + "  - name: b\n    match: {app: b}\n    caps: {max_tokens: x}\n",
            "b.yaml": "models:\n  m: {deployments: [{provider: openai, model: m, weight: -1}]}\n",
            "c.yaml": "providers:\n  p: {kind: vertex, base_url: https://x}\n",
        }
    )
    problems = problems_of(folder)
    assert [p.split(":")[0].rsplit("/", 1)[1] for p in problems] == ["a.yaml", "b.yaml", "c.yaml"]


def test_empty_folder_is_a_problem(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"{tmp_path}: no *.yaml or *.yml policy files"]


def test_configmap_mount_is_read_through_its_symlinks(tmp_path: Path) -> None:
    folder = tmp_path / "mount"
    data = folder / "..2024_01_01_00_00_00.000000001"
    data.mkdir(parents=True)
    (data / "policy.yaml").write_text(BASE)
    os.symlink(data.name, folder / "..data")
    os.symlink("..data/policy.yaml", folder / "policy.yaml")
    assert [p.name for p in policy_files(folder)] == ["policy.yaml"]
    assert load_source(folder).problems == []


def test_fingerprint_changes_only_when_file_bytes_change(write_files: WriteFiles) -> None:
    folder = write_files(**{"a.yaml": BASE})
    before = fingerprint(folder)
    (folder / "a.yaml").touch()
    assert fingerprint(folder) == before
    write_files(**{"a.yaml": BASE + "aliases: {fast: gpt-4o-mini}\n"})
    assert fingerprint(folder) != before
