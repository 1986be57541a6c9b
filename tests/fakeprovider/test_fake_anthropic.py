"""Anthropic Messages against the fake provider, driven by the official anthropic SDK."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import pytest
from fake_sse import sse_events

from fakeprovider.anthropic_api import count_anthropic_input_tokens
from fakeprovider.app import FakeProvider
from fakeprovider.content import MEDIA_TOKENS, completion_for

HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
MODEL = "claude-haiku-4-5"
WEATHER: list[Any] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}


async def test_message_text_and_usage_are_exactly_predictable(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await claude.messages.create(
        model=MODEL, max_tokens=100, system="Be terse.", messages=HELLO
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == completion_for("Hello there").text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_anthropic_input_tokens(HELLO, "Be terse.")
    assert message.usage.output_tokens == 20
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0


async def test_max_tokens_cuts_the_answer_with_stop_reason_max_tokens(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await claude.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text"
    assert message.content[0].text == completion_for("Hello there", max_tokens=3).text
    assert message.usage.output_tokens == 3


async def test_stream_helper_accumulates_text_and_the_cumulative_usage(
    claude: anthropic.AsyncAnthropic,
) -> None:
    async with claude.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) == 20
    assert "".join(texts) == completion_for("Hello there").text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens == count_anthropic_input_tokens(HELLO)


async def test_stream_events_follow_the_anthropic_sequence(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO, "stream": True}
    async with http.post(f"{fake.url}/v1/messages", json=body, headers=HEADERS) as response:
        assert response.headers["request-id"].startswith("req_")
        events = sse_events(await response.text())
    kinds = [name for name, _ in events]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[3:23] == ["content_block_delta"] * 20
    assert kinds[23:] == ["content_block_stop", "message_delta", "message_stop"]
    start_usage = events[0][1]["message"]["usage"]
    assert set(start_usage) >= {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    }
    assert start_usage["output_tokens"] == 1
    assert events[-2][1]["usage"] == {"output_tokens": 20}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


async def test_forced_tool_choice_answers_with_a_tool_use_block(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=HELLO,
        tools=WEATHER,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.id.startswith("toolu_")
    assert isinstance(block.input, dict) and isinstance(block.input["city"], str)


async def test_streamed_tool_use_input_arrives_as_json_deltas(
    claude: anthropic.AsyncAnthropic,
) -> None:
    ask: list[Any] = [{"role": "user", "content": "call get_weather for Rome"}]
    async with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=ask, tools=WEATHER
    ) as stream:
        partials = [
            event.delta.partial_json
            async for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        final = await stream.get_final_message()
    assert len(partials) > 3
    block = final.content[0]
    assert block.type == "tool_use"
    assert json.loads("".join(partials)) == block.input
    assert final.stop_reason == "tool_use"


async def test_a_tool_result_turn_is_answered_with_text_not_another_call(
    claude: anthropic.AsyncAnthropic,
) -> None:
    turns: list[Any] = [
        {"role": "user", "content": "call get_weather for Rome"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "get_weather: 21C"}
            ],
        },
    ]
    message = await claude.messages.create(
        model=MODEL, max_tokens=100, messages=turns, tools=WEATHER
    )
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_anthropic_input_tokens(turns, tools=WEATHER)


async def test_count_tokens_matches_the_input_tokens_of_a_message(
    claude: anthropic.AsyncAnthropic,
) -> None:
    system: list[Any] = [{"type": "text", "text": "You are a careful assistant."}]
    counted = await claude.messages.count_tokens(
        model=MODEL, messages=HELLO, system=system, tools=WEATHER
    )
    message = await claude.messages.create(
        model=MODEL, max_tokens=50, messages=HELLO, system=system, tools=WEATHER
    )
    assert counted.input_tokens == message.usage.input_tokens
    assert counted.input_tokens == count_anthropic_input_tokens(HELLO, system, WEATHER)


async def test_images_are_accepted_and_cost_a_fixed_media_charge(
    claude: anthropic.AsyncAnthropic,
) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    with_image: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": image},
                {"type": "text", "text": "Hello there"},
            ],
        }
    ]
    message = await claude.messages.create(model=MODEL, max_tokens=50, messages=with_image)
    plain = count_anthropic_input_tokens(HELLO)
    assert message.usage.input_tokens == plain + MEDIA_TOKENS
    assert message.content[0].type == "text"
    assert message.content[0].text == completion_for("Hello there").text


async def test_cache_control_writes_first_then_reads_and_input_tokens_exclude_both(
    claude: anthropic.AsyncAnthropic,
) -> None:
    system: list[Any] = [
        {"type": "text", "text": "House rules. " * 600, "cache_control": {"type": "ephemeral"}}
    ]
    total = count_anthropic_input_tokens(HELLO, system)
    first = await claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=HELLO)
    second = await claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=HELLO)
    written = first.usage.cache_creation_input_tokens
    assert written is not None and written >= 1024
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == total - written
    assert second.usage.cache_read_input_tokens == written
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == total - written


async def test_a_missing_anthropic_version_header_is_a_400_in_anthropic_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": HELLO}
    async with http.post(f"{fake.url}/v1/messages", json=body) as response:
        assert response.status == 400
        error = await response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in error["error"]["message"]


async def test_a_missing_max_tokens_is_a_400_naming_the_field(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": MODEL, "messages": HELLO}
    async with http.post(f"{fake.url}/v1/messages", json=body, headers=HEADERS) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


async def test_a_configured_api_key_rejects_a_wrong_x_api_key() -> None:
    async with FakeProvider(api_key="sk-ant-right") as fake:
        wrong = anthropic.AsyncAnthropic(base_url=fake.url, api_key="nope", max_retries=0)
        async with wrong:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                await wrong.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert refused.value.body is not None
    assert refused.value.status_code == 401


async def test_model_list_in_anthropic_format_when_the_version_header_is_sent(
    claude: anthropic.AsyncAnthropic,
) -> None:
    page = await claude.models.list()
    assert MODEL in [model.id for model in page.data]
