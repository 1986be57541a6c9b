"""Structured output: JSON answers for JSON modes and arguments for tool calls, from a schema.

Rules. A schema is instantiated deterministically: every object property is present, arrays
hold one item, `const` and the first `enum` value win, `anyOf`/`oneOf`/`allOf` take their
first branch, `$ref` follows `#/$defs/…` or `#/definitions/…`, strings are vocabulary words
drawn from the request's seed (the last message text), integers are the drawn word's length
clamped to minimum/maximum, numbers add .5, booleans are true. Types are matched
case-insensitively, so Gemini's OpenAPI-style "OBJECT"/"STRING" work too.

A JSON mode without a schema (json_object, Gemini's responseMimeType without a schema)
answers `{"answer": "<the text answer>"}`. JSON answers stream and count one token per
piece like text, and a limit cuts them (the result is then invalid JSON, as with the real
APIs). A tool call's arguments are never cut; it costs tokens(name) + tokens(arguments).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import msgspec

from fakeprovider.content import (
    DEFAULT_OUTPUT_TOKENS,
    Completion,
    answer_pieces,
    count_tokens,
    plan,
    seed_words,
    token_pieces,
)

_MAX_DEPTH = 8
_compact = msgspec.json.Encoder()
_any_json = msgspec.json.Decoder()


class ToolCall(msgspec.Struct, frozen=True):
    """A call the fake model makes: the tool's name and its arguments as JSON text."""

    name: str
    arguments: str

    @property
    def arguments_pieces(self) -> tuple[str, ...]:
        return token_pieces(self.arguments)

    @property
    def output_tokens(self) -> int:
        return count_tokens(self.name) + count_tokens(self.arguments)


def instance_for(schema: object, seed_text: str) -> Any:
    """A JSON value that satisfies `schema`, the same for the same schema and seed."""
    root = schema if isinstance(schema, dict) else {}
    return _instance(root, root, seed_words(seed_text), 0)


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            defs = root.get(prefix[2:-1])
            if isinstance(defs, dict):
                return defs.get(ref[len(prefix) :], {})
    return {}


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if isinstance(k, str) and k.lower() != "null"), "null")
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _instance(schema: Any, root: dict[str, Any], words: Iterator[str], depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if isinstance(schema.get("$ref"), str):
        return _instance(_resolve(schema["$ref"], root), root, words, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _instance(branches[0], root, words, depth + 1)
    kind = _type_of(schema)
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: _instance(sub, root, words, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [_instance(schema.get("items", {}), root, words, depth + 1)]
    if kind in ("integer", "number"):
        value: float = len(next(words))
        if isinstance(schema.get("minimum"), int | float):
            value = max(value, schema["minimum"])
        if isinstance(schema.get("maximum"), int | float):
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else value + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return next(words)


@lru_cache(maxsize=256)
def _json_answer(schema_json: bytes, seed_text: str, length: int) -> tuple[str, ...]:
    if schema_json:
        value = instance_for(_any_json.decode(schema_json), seed_text)
    else:
        value = {"answer": "".join(answer_pieces(seed_text, length))}
    return token_pieces(_compact.encode(value).decode())


def json_completion(
    schema: object | None,
    seed_text: str,
    *,
    limit: int | None = None,
    reasoning: int = 0,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> Completion:
    """The answer in a JSON mode: an instance of `schema`, or {"answer": text} without one."""
    schema_json = _compact.encode(schema) if schema is not None else b""
    return plan(
        _json_answer(schema_json, seed_text, output_tokens), limit=limit, reasoning=reasoning
    )


def answer_for(
    seed_text: str,
    *,
    call: ToolCall | None = None,
    json_mode: bool = False,
    schema: object | None = None,
    limit: int | None = None,
    reasoning: int = 0,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> Completion:
    """The visible answer beside a tool call (none), in a JSON mode, or as plain text."""
    if call is not None:
        return Completion((), min(reasoning, limit) if limit is not None else reasoning)
    if json_mode:
        return json_completion(
            schema, seed_text, limit=limit, reasoning=reasoning, output_tokens=output_tokens
        )
    return plan(answer_pieces(seed_text, output_tokens), limit=limit, reasoning=reasoning)


def tool_call_for(name: str, parameters: object, seed_text: str) -> ToolCall:
    """The call the fake model makes to tool `name` with a parameters JSON schema."""
    arguments = instance_for(parameters, seed_text) if parameters else {}
    if not isinstance(arguments, dict):
        arguments = {}
    return ToolCall(name, _compact.encode(arguments).decode())


def mentioned_tool(names: list[str], text: str) -> str | None:
    """Under "auto" tool choice, the model calls the first tool the last message names."""
    for name in names:
        if name and name in text:
            return name
    return None
