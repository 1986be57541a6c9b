"""Policy problems: one located complaint about a policy file, and how paths and lines are found."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import yaml

Segment = str | int
"""One step of a field path: a mapping key or a list index."""

OPAQUE = "[...]"  # msgspec's marker for "some key of a dict"; it cannot be located further


class Problem(msgspec.Struct, frozen=True, order=True):
    """`policies/team-a.yaml:12: rules[1].caps.max_tokens: expected int, got str`."""

    file: str  # as the user named it: the folder they passed, then the file name
    line: int  # 1-based; 0 when the problem is about the file or folder as a whole
    path: str  # "rules[1].caps.max_tokens"; empty for file-level problems
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class Invalid(msgspec.Struct, frozen=True):
    """A policy folder that cannot become a bundle, with every reason why."""

    problems: tuple[Problem, ...]

    def render(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def render_path(path: Iterable[Segment]) -> str:
    """("rules", 1, "caps", "max_tokens") → "rules[1].caps.max_tokens"."""
    out: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            out.append(f"[{segment}]")
        elif segment == OPAQUE:
            out.append(segment)
        else:
            out.append(f".{segment}" if out else segment)
    return "".join(out)


def locate(node: yaml.Node | None, path: Iterable[Segment]) -> int:
    """The 1-based line of the deepest node on `path` that exists; a key's own line for a field.

    Missing fields (a required field left out) resolve to the enclosing mapping's line, which
    is where the author has to add it.
    """
    if node is None:
        return 1
    line = node.start_mark.line + 1
    current: yaml.Node = node
    for segment in path:
        if isinstance(current, yaml.MappingNode) and isinstance(segment, str):
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.value == segment:
                    line = key.start_mark.line + 1
                    current = value
                    break
            else:
                return line
        elif isinstance(current, yaml.SequenceNode) and isinstance(segment, int):
            if not 0 <= segment < len(current.value):
                return line
            current = current.value[segment]
            line = current.start_mark.line + 1
        else:
            return line
    return line
