"""Policy source: a folder of YAML files loaded into typed, merged structs with located problems.

Each file may hold any of the sections in `SECTIONS`; files are read in name order and merged.
Every problem names the file, the line and the path of the field, and loading collects all
of them instead of stopping at the first, so one `sidegate policy validate` run lists
everything a reviewer has to fix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import yaml

from policyd.bundle import Model, Provider, Rule
from policyd.problems import Problem, Segment, locate, render_path

T = TypeVar("T")

SECTIONS = ("providers", "models", "aliases", "prices", "rules", "virtual_keys")
SUFFIXES = (".yaml", ".yml")


# ---------------------------------------------------------------------------------------------
# YAML: SafeLoader with YAML 1.2 scalars
# ---------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader where `off`, `no`, `on`, `yes` and dates stay strings.

    YAML 1.1 reads `mode: off` as False and `expires_at: 2026-01-01` as a date object; policy
    authors mean the string in both cases, so only true/false are booleans here (YAML 1.2).
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# ---------------------------------------------------------------------------------------------
# Authoring structs: where what authors write differs from what sidecars read
# ---------------------------------------------------------------------------------------------


class _Source(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base for source structs: a typo fails at load time with the path of the field.

    Subclasses repeat `frozen=True`: msgspec inherits it, mypy's dataclass_transform does not.
    """


class PriceSource(_Source, frozen=True):
    """A negotiated rate in USD per million tokens; quoted strings keep exact decimals."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None


class VirtualKeySource(_Source, frozen=True):
    """A virtual key: its hash in the file, or the name of a variable holding the plaintext."""

    id: str
    tenant: str
    user: str | None = None
    scopes: tuple[str, ...] = ()
    expires_at: str | int | None = None  # ISO date or datetime (UTC if no offset), unix seconds
    key_sha256: str | None = None
    key_env: str | None = None  # hashed by policyd at compile time, so no plaintext sits in git


# Providers, models and rules are written in the bundle's own structs, so a field the contract
# gains is writable at once. The two fields policyd computes, `Deployment.price` and
# `Rule.source`, are refused by the checks. Prices and virtual keys have authoring forms.
_MAPPING_TYPES: dict[str, Any] = {
    "providers": Provider,
    "models": Model,
    "aliases": str,
    "prices": PriceSource,
}
_LIST_TYPES: dict[str, Any] = {"rules": Rule, "virtual_keys": VirtualKeySource}


@dataclass(frozen=True, slots=True)
class Located(Generic[T]):
    """A definition and where it was written, so later checks can point at it."""

    value: T
    file: str  # the file's name inside the policy folder
    path: tuple[Segment, ...]  # ("models", "gpt-4o") or ("rules", 2)


@dataclass(frozen=True, slots=True)
class PolicyFile:
    name: str  # "team-a.yaml": used in rule sources ("team-a.yaml#rules[1]")
    display: str  # "policies/team-a.yaml": used in problems
    node: yaml.Node | None  # the composed document, for line numbers


@dataclass(slots=True)
class PolicySource:
    """Every definition of a folder, merged; entries that failed to load are left out."""

    files: dict[str, PolicyFile] = field(default_factory=dict)
    providers: dict[str, Located[Provider]] = field(default_factory=dict)
    models: dict[str, Located[Model]] = field(default_factory=dict)
    aliases: dict[str, Located[str]] = field(default_factory=dict)
    prices: dict[str, Located[PriceSource]] = field(default_factory=dict)
    rules: list[Located[Rule]] = field(default_factory=list)
    virtual_keys: list[Located[VirtualKeySource]] = field(default_factory=list)
    # Names whose definition failed to load: references to them are not reported again.
    broken: set[str] = field(default_factory=set)

    def where(self, located: Located[Any]) -> str:
        """Where a definition is ("policies/a.yaml:3"), for messages that point at two places."""
        source_file = self.files[located.file]
        return f"{source_file.display}:{locate(source_file.node, located.path)}"

    def problem(self, file: str, path: tuple[Segment, ...], message: str) -> Problem:
        source_file = self.files[file]
        return Problem(
            file=source_file.display,
            line=locate(source_file.node, path),
            path=render_path(path),
            message=message,
        )


@dataclass(frozen=True, slots=True)
class Loaded:
    source: PolicySource
    problems: list[Problem]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def policy_files(directory: Path) -> list[Path]:
    """Top-level YAML files in name order.

    Dot-names are skipped: a Kubernetes ConfigMap mount keeps its real files in `..data` and
    `..<timestamp>` folders and exposes them through top-level symlinks, which are followed.
    """
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def fingerprint(directory: Path) -> str:
    """A hash of every policy file's name and bytes: cheap enough to poll every second."""
    digest = hashlib.sha256()
    try:
        files = policy_files(directory)
        for path in files:
            data = path.read_bytes()
            digest.update(f"{path.name}\0{len(data)}\0".encode())
            digest.update(data)
    except OSError as exc:
        # A folder mid-swap or missing is a state too: its own hash, so recovery is noticed.
        digest.update(f"error\0{exc.errno}".encode())
    return digest.hexdigest()


def load_source(directory: Path) -> Loaded:
    """Read, validate and merge every policy file of `directory`; collect all problems."""
    source = PolicySource()
    problems: list[Problem] = []
    if not directory.is_dir():
        problems.append(Problem(str(directory), 0, "", "not a folder"))
        return Loaded(source, problems)
    files = policy_files(directory)
    if not files:
        problems.append(Problem(str(directory), 0, "", "no *.yaml or *.yml policy files"))
    for path in files:
        _load_file(source, problems, path, display=str(path))
    problems.sort()
    return Loaded(source, problems)


def _load_file(source: PolicySource, problems: list[Problem], path: Path, *, display: str) -> None:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(display, 0, "", f"cannot read: {exc}"))
        return
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        # Duplicate keys are checked before construction, which silently keeps the last one
        # and rewrites merge keys (`<<`) in place.
        problems.extend(_duplicate_keys(node, display))
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problems.append(Problem(display, line, "", f"invalid YAML: {_yaml_reason(exc)}"))
        return
    finally:
        loader.dispose()
    source.files[name] = PolicyFile(name=name, display=display, node=node)
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(source.problem(name, (), "expected a mapping of sections"))
        return
    for section, value in data.items():
        if section in _MAPPING_TYPES:
            _load_mapping(source, problems, name, section, value)
        elif section in _LIST_TYPES:
            _load_list(source, problems, name, section, value)
        else:
            expected = ", ".join(SECTIONS)
            problems.append(
                source.problem(name, (str(section),), f"unknown section; expected {expected}")
            )


def _load_mapping(
    source: PolicySource, problems: list[Problem], file: str, section: str, value: Any
) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problems.append(source.problem(file, (section,), "expected a mapping of names"))
        return
    defined: dict[str, Located[Any]] = getattr(source, section)
    for key, entry in value.items():
        path: tuple[Segment, ...] = (section, str(key))
        if not isinstance(key, str):
            problems.append(source.problem(file, path, "names must be strings; quote it"))
            continue
        if (first := defined.get(key)) is not None:
            where = source.where(first)
            problems.append(source.problem(file, path, f"also defined in {where}"))
            continue
        converted = _convert(source, problems, file, path, entry, _MAPPING_TYPES[section])
        if converted is None:
            source.broken.add(key)
            continue
        defined[key] = Located(converted, file, path)


def _load_list(
    source: PolicySource, problems: list[Problem], file: str, section: str, value: Any
) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        problems.append(source.problem(file, (section,), "expected a list"))
        return
    items: list[Located[Any]] = getattr(source, section)
    for index, entry in enumerate(value):
        path: tuple[Segment, ...] = (section, index)
        converted = _convert(source, problems, file, path, entry, _LIST_TYPES[section])
        if converted is not None:
            items.append(Located(converted, file, path))


# ---------------------------------------------------------------------------------------------
# msgspec errors → located problems
# ---------------------------------------------------------------------------------------------

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_SEGMENT = re.compile(r"\.(?P<key>[^.\[]+)|\[(?P<index>\d+)\]|(?P<opaque>\[\.\.\.\])")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$")


def _convert(
    source: PolicySource,
    problems: list[Problem],
    file: str,
    path: tuple[Segment, ...],
    entry: Any,
    typ: Any,
) -> Any:
    try:
        return msgspec.convert(entry, typ)
    except msgspec.ValidationError as exc:
        inner, message = _explain(exc)
        problems.append(source.problem(file, path + inner, message))
        return None


def _explain(exc: msgspec.ValidationError) -> tuple[tuple[Segment, ...], str]:
    """msgspec's "Expected `int | null`, got `str` - at `$.caps.max_tokens`" → path, message."""
    text = str(exc)
    inner: list[Segment] = []
    if (at := _AT.search(text)) is not None:
        text = text[: at.start()]
        for m in _SEGMENT.finditer(at.group("path")):
            if m.group("key") is not None:
                inner.append(m.group("key"))
            elif m.group("index") is not None:
                inner.append(int(m.group("index")))
            else:
                inner.append("[...]")
    if (unknown := _UNKNOWN_FIELD.match(text)) is not None:
        inner.append(unknown.group("name"))
        return tuple(inner), "unknown field"
    # "| null" only says the field is optional; the reader wants the type they got wrong.
    text = text.replace(" | null", "").replace("`", "").replace("Object missing", "missing")
    return tuple(inner), text[:1].lower() + text[1:]


def _yaml_reason(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]


def _duplicate_keys(node: yaml.Node | None, display: str) -> Iterator[Problem]:
    stack: list[tuple[yaml.Node, tuple[Segment, ...]]] = [] if node is None else [(node, ())]
    while stack:
        current, path = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                line = key.start_mark.line + 1
                if name in seen:
                    yield Problem(
                        display,
                        line,
                        render_path((*path, name)),
                        f"duplicate key; first defined on line {seen[name]}",
                    )
                seen.setdefault(name, line)
                stack.append((value, (*path, name)))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(current.value))
