"""The container image recipe, checked for structure without a Docker engine."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec

REPO = Path(__file__).parents[2]
DOCKERFILE = REPO / "Dockerfile"
HEREDOC = re.compile(r"<<-?'?(\w+)'?")
URL_PIPED_TO_SHELL = re.compile(r"(curl|wget)\b[^|]*\|\s*(ba|z|da)?sh\b")


class Instruction(msgspec.Struct, frozen=True):
    keyword: str
    args: str
    heredoc: str = ""


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuations joined and heredoc bodies attached."""
    parsed: list[Instruction] = []
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, args = line.partition(" ")
        body = ""
        marker = HEREDOC.search(args)
        if marker:
            body = "\n".join(iter(lambda: next(lines), marker.group(1))) + "\n"
        parsed.append(Instruction(keyword.upper(), args.strip(), body))
    return parsed


def stages(parsed: list[Instruction]) -> dict[str, list[Instruction]]:
    named: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for instruction in parsed:
        if instruction.keyword == "FROM":
            current = []
            named[instruction.args.split()[-1]] = current
        current.append(instruction)
    return named


PARSED = instructions(DOCKERFILE.read_text())
STAGES = stages(PARSED)
RUNTIME = list(STAGES.values())[-1]


def args_of(keyword: str, stage: list[Instruction]) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in args_of("ENV", stage):
        found.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return found


def test_the_image_builds_in_stages_on_slim_python() -> None:
    assert list(STAGES) == ["build", "runtime"]
    (arg,) = args_of("ARG", PARSED)
    assert arg.startswith("PYTHON_IMAGE=python:3.11-slim")
    assert all(args_of("FROM", stage)[0].startswith("${PYTHON_IMAGE}") for stage in STAGES.values())
    assert "--from=build /opt/sidegate /opt/sidegate" in args_of("COPY", RUNTIME)


def test_the_runtime_runs_as_a_numeric_non_root_user() -> None:
    (user,) = args_of("USER", RUNTIME)
    uid, _, gid = user.partition(":")

    assert uid.isdigit() and int(uid) > 0
    assert gid.isdigit() and int(gid) > 0


def test_the_entrypoint_is_the_sidegate_cli_in_exec_form() -> None:
    (entrypoint,) = args_of("ENTRYPOINT", RUNTIME)

    assert json.loads(entrypoint) == ["sidegate"]


def test_home_and_temp_point_at_a_mountable_writable_path() -> None:
    env = env_of(RUNTIME)

    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_nothing_is_downloaded_and_piped_into_a_shell() -> None:
    for instruction in PARSED:
        assert not URL_PIPED_TO_SHELL.search(instruction.args + instruction.heredoc), instruction
        if instruction.keyword == "ADD":
            assert "://" not in instruction.args


def test_everything_the_build_copies_is_in_the_build_context() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = [
        path
        for args in args_of("COPY", STAGES["build"])
        for path in args.split()[:-1]
        if not path.startswith("--")
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(fnmatch.fnmatch(source.rstrip("/"), pattern) for pattern in allowed), source


def test_the_build_context_leaves_out_git_tests_and_local_state() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()

    allows = [n for n, line in enumerate(ignore) if line.startswith("!")]
    assert ignore.index("*") < min(allows)  # deny everything first, then allow
    for kept_out in (".git", "tests", "helm", ".sidegate", "sidegate.egg-info"):
        assert f"!{kept_out}/" not in ignore and f"!{kept_out}" not in ignore


def test_the_baked_tiktoken_cache_loads_encodings_without_a_network(tmp_path: Path) -> None:
    (step,) = [i for i in STAGES["build"] if i.keyword == "RUN" and "tiktoken" in i.heredoc]
    assert step.args.startswith("--network=none")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}

    subprocess.run([sys.executable, "-"], input=step.heredoc, text=True, env=env, check=True)

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    assert (tmp_path / hashlib.sha1(url.encode()).hexdigest()).is_file()


def test_build_and_runtime_agree_on_the_tiktoken_cache() -> None:
    cache = env_of(RUNTIME)["TIKTOKEN_CACHE_DIR"]

    assert env_of(STAGES["build"])["TIKTOKEN_CACHE_DIR"] == cache
    assert cache.startswith("/opt/sidegate/")  # inside the copied virtualenv
