"""`sidegate policy …` end to end: real argument parsing, real NATS, stdout and exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from policy_samples import BASE, WriteFiles

from policyd import cli
from sidegate.natsd import NatsServer, free_port


def sidegate(*argv: str | Path) -> int:
    """Parse and run like the console script, with only this plane registered."""
    parser = argparse.ArgumentParser(prog="sidegate")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return int(args.func(args))


@pytest.fixture
def publish_args(nats_server: NatsServer, key_dir: Path) -> list[str]:
    return ["--nats-url", nats_server.url, "--signing-key", str(key_dir / "signing.key")]


def test_validate_lists_every_problem_on_stderr_and_exits_one(
    write_files: WriteFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(**{"a.yaml": BASE, "b.yaml": "aliases: {x: nope, y: nada}\n"})
    assert sidegate("policy", "validate", folder) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{folder}/b.yaml:1: aliases.x: unknown model or alias 'nope'",
        f"{folder}/b.yaml:1: aliases.y: unknown model or alias 'nada'",
        "2 problem(s); nothing was published",
    ]


def test_validate_prints_the_content_hash_of_a_valid_folder(
    write_files: WriteFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sidegate("policy", "validate", write_files(**{"a.yaml": BASE})) == 0
    out = capsys.readouterr().out
    assert "1 providers, 1 models, 0 aliases, 1 rules, 0 virtual keys; content_hash " in out


def test_apply_prints_the_revision_then_unchanged(
    write_files: WriteFiles, publish_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    assert sidegate("policy", "apply", folder, *publish_args) == 0
    assert sidegate("policy", "apply", folder, *publish_args) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("published revision 1 content_hash ")
    assert second == first.replace("published", "unchanged")


def test_apply_without_a_signing_key_is_refused(
    write_files: WriteFiles, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    assert sidegate("policy", "apply", folder, "--nats-url", nats_server.url) == 2
    assert "a signing key is required" in capsys.readouterr().err


def test_show_prints_the_latest_bundle_as_sorted_json(
    write_files: WriteFiles, publish_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    sidegate("policy", "apply", write_files(**{"a.yaml": BASE}), *publish_args)
    capsys.readouterr()
    assert sidegate("policy", "show", "--nats-url", publish_args[1]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["revision"] == 1
    assert list(bundle) == sorted(bundle)
    assert bundle["rules"][0]["source"] == "a.yaml#rules[0]"


def test_history_rollback_and_diff_work_together(
    write_files: WriteFiles, publish_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--nats-url", publish_args[1]]
    folder = write_files(**{"a.yaml": BASE})
    sidegate("policy", "apply", folder, *publish_args)
    write_files(**{"a.yaml": BASE.replace("tier: cheap", "tier: budget")})
    sidegate("policy", "apply", folder, *publish_args)
    assert sidegate("policy", "rollback", "--to", "1", *publish_args) == 0
    assert sidegate("policy", "diff", "2", "3", *url) == 0
    assert sidegate("policy", "history", "--json", *url) == 0
    out = capsys.readouterr().out
    assert "published revision 3 with the content of revision 1" in out
    assert '-      "tier": "budget"\n+      "tier": "cheap"\n' in out
    history = json.loads(out.splitlines()[-1])
    assert [h["revision"] for h in history] == [1, 2, 3]
    assert history[0]["content_hash"] == history[2]["content_hash"]


def test_unknown_revision_exits_one_with_a_message(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sidegate("policy", "show", "--revision", "9", "--nats-url", nats_server.url) == 1
    assert capsys.readouterr().err == "revision 9 is not in the history\n"


def test_status_reports_that_no_sidecar_has_reported_yet(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sidegate("policy", "status", "--nats-url", nats_server.url) == 0
    assert capsys.readouterr().out.splitlines() == [
        "no bundle has been published",
        "0/0 sidecars run the latest revision",
    ]


def test_keygen_writes_a_pair_once_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sidegate("policy", "keygen", "--out", tmp_path / "k") == 0
    assert (tmp_path / "k" / "signing.pub").exists()
    assert sidegate("policy", "keygen", "--out", tmp_path / "k") == 1
    assert "already exists" in capsys.readouterr().err


def test_unreachable_nats_exits_one_and_names_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    assert sidegate("policy", "history", "--nats-url", url) == 1
    assert f"(NATS at {url})" in capsys.readouterr().err
