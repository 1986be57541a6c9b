"""OpenAI Chat Completions against the fake provider, driven by the official openai SDK."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from fake_sse import sse_data

from fakeprovider.app import FakeProvider
from fakeprovider.content import completion_for
from fakeprovider.openai_api import count_chat_prompt_tokens

HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
WEATHER_TOOL: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]


async def test_chat_answer_text_and_usage_are_exactly_predictable(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    expected = completion_for("Hello there")
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "gpt-4o-mini"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == count_chat_prompt_tokens(HELLO)
    assert reply.usage.completion_tokens == expected.output_tokens == 20
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 20


async def test_chat_stream_sends_one_chunk_per_token_and_the_same_text(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await oai.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    deltas = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert deltas[0] == ""  # the role chunk
    assert "".join(d or "" for d in deltas) == completion_for("Hello there").text
    assert len([d for d in deltas if d]) == 20


async def test_stream_usage_chunk_comes_only_with_include_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_stream_without_include_usage_has_no_usage_field_at_all(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    async with http.post(f"{fake.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = sse_data(await response.text())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    oai: openai.AsyncOpenAI,
) -> None:
    reply = await oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == completion_for("Hello there", max_tokens=4).text
    assert reply.usage is not None and reply.usage.completion_tokens == 4


async def test_forced_tool_choice_answers_with_a_valid_json_tool_call(
    oai: openai.AsyncOpenAI,
) -> None:
    reply = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        tools=WEATHER_TOOL,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)


async def test_a_user_message_naming_a_tool_makes_the_model_call_it(
    oai: openai.AsyncOpenAI,
) -> None:
    ask: list[Any] = [{"role": "user", "content": "Please call get_weather for Paris"}]
    reply = await oai.chat.completions.create(model="gpt-4o", messages=ask, tools=WEATHER_TOOL)
    assert reply.choices[0].finish_reason == "tool_calls"
    plain = await oai.chat.completions.create(model="gpt-4o", messages=HELLO, tools=WEATHER_TOOL)
    assert plain.choices[0].finish_reason == "stop"


async def test_streamed_tool_call_arguments_arrive_as_deltas_that_join_into_json(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=HELLO, tools=WEATHER_TOOL, tool_choice="required", stream=True
    )
    fragments: list[str] = []
    names: list[str | None] = []
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or ():
            assert call.function is not None
            names.append(call.function.name)
            fragments.append(call.function.arguments or "")
    assert names[0] == "get_weather"
    assert len([f for f in fragments if f]) > 3
    assert set(json.loads("".join(fragments))) == {"city", "days"}
    assert finish == "tool_calls"


async def test_json_object_mode_answers_valid_json(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="gpt-4o", messages=HELLO, response_format={"type": "json_object"}
    )
    content = reply.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"answer": completion_for("Hello there").text}


async def test_json_schema_mode_answers_an_instance_of_the_schema(
    oai: openai.AsyncOpenAI,
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = await oai.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


async def test_reasoning_models_report_reasoning_tokens_inside_completion_tokens(
    oai: openai.AsyncOpenAI,
) -> None:
    reply = await oai.chat.completions.create(
        model="o3-mini", messages=HELLO, reasoning_effort="low"
    )
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 32
    assert reply.usage.completion_tokens == 32 + 20


async def test_reasoning_models_refuse_max_tokens_like_the_real_api(
    oai: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(model="o3-mini", messages=HELLO, max_tokens=50)
    assert refused.value.param == "max_tokens"


async def test_a_repeated_long_prompt_reports_cached_tokens_in_multiples_of_128(
    oai: openai.AsyncOpenAI,
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Follow the house style. " * 300},
        {"role": "user", "content": "Summarise."},
    ]
    first = await oai.chat.completions.create(model="gpt-4o", messages=messages)
    second = await oai.chat.completions.create(model="gpt-4o", messages=messages)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    prompt = count_chat_prompt_tokens(messages)
    assert prompt >= 1024
    assert second.usage.prompt_tokens == prompt
    assert second.usage.prompt_tokens_details.cached_tokens == prompt // 128 * 128


async def test_a_request_without_a_model_is_a_400_in_openai_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fake.url}/v1/chat/completions", json={"messages": HELLO}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "model" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_malformed_json_is_a_400_bad_request_for_the_sdk(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{fake.url}/v1/chat/completions",
        data=b"{not json",
        headers={"content-type": "application/json"},
    ) as response:
        assert response.status == 400
        assert "parse the JSON body" in (await response.json())["error"]["message"]


async def test_a_configured_api_key_rejects_a_wrong_bearer_token() -> None:
    async with FakeProvider(api_key="sk-right") as fake:
        wrong = openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="sk-wrong", max_retries=0)
        right = openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="sk-right", max_retries=0)
        async with wrong, right:
            with pytest.raises(openai.AuthenticationError):
                await wrong.chat.completions.create(model="gpt-4o", messages=HELLO)
            reply = await right.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content


async def test_unknown_openai_paths_are_a_404_in_openai_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fake.url}/v1/nothing/here", json={}) as response:
        assert response.status == 404
        assert "Invalid URL" in (await response.json())["error"]["message"]
