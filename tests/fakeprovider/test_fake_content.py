"""The deterministic rules behind the fake provider's answers, token counts and caching."""

from __future__ import annotations

import json

import pytest

from fakeprovider.caching import PromptCache, implicit_cached_tokens
from fakeprovider.content import (
    ENCODING,
    VOCABULARY,
    Turn,
    answer_pieces,
    completion_for,
    count_prompt,
    count_tokens,
    reasoning_tokens_for,
)
from fakeprovider.structured import instance_for, json_completion, tool_call_for


def test_every_vocabulary_word_is_one_token_bare_spaced_and_capitalised() -> None:
    assert len(VOCABULARY) == 64
    for word in VOCABULARY:
        for form in (word, " " + word, word.capitalize()):
            assert len(ENCODING.encode(form)) == 1, form


@pytest.mark.parametrize("seed", ["Hello", "", "a much longer question about ünïcode?", "x" * 500])
def test_an_answer_of_n_pieces_is_exactly_n_tokens(seed: str) -> None:
    pieces = answer_pieces(seed, 20)
    assert len(pieces) == 20
    assert len(ENCODING.encode("".join(pieces))) == 20
    assert "".join(pieces).endswith(".")


def test_the_same_seed_gives_the_same_answer_and_another_seed_another() -> None:
    assert completion_for("Hello").text == completion_for("Hello").text
    assert completion_for("Hello").text != completion_for("Hello!").text


def test_a_limit_keeps_the_first_pieces_and_marks_the_answer_truncated() -> None:
    whole = completion_for("Hello")
    cut = completion_for("Hello", max_tokens=5)
    assert cut.truncated and not whole.truncated
    assert cut.pieces == whole.pieces[:5]
    assert cut.output_tokens == 5


def test_reasoning_models_spend_reasoning_tokens_first_out_of_the_limit() -> None:
    assert reasoning_tokens_for("gpt-4o") == 0
    assert reasoning_tokens_for("o3-mini") == 64
    assert reasoning_tokens_for("o4-mini", "high") == 128
    assert reasoning_tokens_for("gemini-2.5-flash", "low") == 32
    small = completion_for("Hello", model="o3-mini", max_tokens=70)
    assert (small.reasoning_tokens, small.visible_tokens, small.truncated) == (64, 6, True)
    starved = completion_for("Hello", model="o3-mini", max_tokens=10)
    assert (starved.reasoning_tokens, starved.text) == (10, "")


def test_prompt_tokens_follow_the_documented_per_message_rule() -> None:
    turns = [Turn("system", "Be brief."), Turn("user", "What is the capital of France?")]
    expected = sum(3 + count_tokens(t.role) + len(ENCODING.encode(t.text)) for t in turns) + 3
    assert count_prompt(turns).total == expected
    named = count_prompt([Turn("user", "hi", media=2, name="ann")]).total
    assert named == 3 + 1 + 1 + 2 * 85 + count_tokens("ann") + 1 + 3


def test_tool_definitions_count_as_their_sorted_compact_json() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    compact = json.dumps(tools, separators=(",", ":"), sort_keys=True)
    plain = count_prompt([Turn("user", "hi")]).total
    assert count_prompt([Turn("user", "hi")], tools).total == plain + len(ENCODING.encode(compact))


def test_schema_instances_satisfy_types_enums_refs_and_nesting() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 10, "maximum": 12},
            "tags": {"type": "array", "items": {"type": "string"}},
            "where": {"$ref": "#/$defs/Place"},
            "ok": {"type": ["boolean", "null"]},
        },
        "$defs": {"Place": {"type": "OBJECT", "properties": {"lat": {"type": "NUMBER"}}}},
    }
    value = instance_for(schema, "seed")
    assert value["city"] in VOCABULARY
    assert value["unit"] == "celsius"
    assert 10 <= value["days"] <= 12
    assert isinstance(value["tags"], list) and value["tags"][0] in VOCABULARY
    assert isinstance(value["where"]["lat"], float)
    assert value["ok"] is True


def test_json_mode_without_a_schema_wraps_the_text_answer() -> None:
    answer = json_completion(None, "Hello")
    assert json.loads(answer.text) == {"answer": completion_for("Hello").text}
    assert answer.output_tokens == len(ENCODING.encode(answer.text))


def test_a_tool_call_costs_its_name_and_arguments_tokens() -> None:
    call = tool_call_for("get_weather", {"properties": {"city": {"type": "string"}}}, "Hi")
    assert set(json.loads(call.arguments)) == {"city"}
    assert "".join(call.arguments_pieces) == call.arguments
    assert call.output_tokens == count_tokens("get_weather") + count_tokens(call.arguments)


def test_implicit_caching_reports_the_seen_prefix_rounded_down_to_128() -> None:
    cache = PromptCache()
    turns = [Turn("system", "rule " * 1200), Turn("user", "first question")]
    count = count_prompt(turns)
    assert cache.implicit("openai\x00m", turns, count) == 0
    assert cache.implicit("openai\x00m", turns, count) == count.total // 128 * 128
    follow_up = [*turns[:1], Turn("user", "another question")]
    prefix = count_prompt(follow_up).head + count_prompt(follow_up).turns[0]
    assert cache.implicit("openai\x00m", follow_up, count_prompt(follow_up)) == (
        implicit_cached_tokens(prefix)
    )
    assert cache.implicit("openai\x00other", turns, count) == 0


def test_prompts_under_1024_tokens_are_never_cached() -> None:
    cache = PromptCache()
    turns = [Turn("user", "short")]
    cache.implicit("s", turns, count_prompt(turns))
    assert cache.implicit("s", turns, count_prompt(turns)) == 0
    assert len(cache) == 0


def test_explicit_caching_writes_then_reads_up_to_the_last_mark() -> None:
    cache = PromptCache()
    turns = [Turn("system", "rule " * 1200), Turn("user", "question")]
    count = count_prompt(turns)
    marked = count.head + count.turns[0]
    assert cache.explicit("a", turns, count, b"", [0]) == (0, marked)
    assert cache.explicit("a", turns, count, b"", [0]) == (marked, 0)
    assert cache.explicit("a", turns, count, b"", []) == (0, 0)
