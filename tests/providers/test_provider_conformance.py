"""The official SDKs against the sidecar: every ingress format x every provider kind, streamed
and whole, with and without tools. Each answer must parse in the SDK and be accounted."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from gateway_kit import Gateway
from provider_matrix import EGRESS

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA},
    }
]
MESSAGES_TOOLS: Any = [
    {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
]
RESPONSES_TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather",
        "parameters": WEATHER_SCHEMA,
    }
]
KIND = {"compat": "openai_compatible"}


def tag() -> dict[str, str]:
    return {"x-request-id": uuid.uuid4().hex}


async def accounted(gw: Gateway, headers: dict[str, str], egress: str) -> None:
    """The request's usage record names the provider and carries the provider's counts."""
    client_id = headers["x-request-id"]
    for _ in range(200):
        found = [r for r in gw.records if r.client_request_id == client_id]
        if found:
            break
        await __import__("asyncio").sleep(0.01)
    record = found[-1]
    assert record.error_class is None, record.error_message
    assert record.provider_kind == KIND.get(egress, egress)
    assert record.token_source == "provider"
    assert record.input_tokens > 0 and record.output_tokens > 0
    assert record.attempts == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("egress", EGRESS)
async def test_openai_sdk_chat_gets_text_from_every_provider(
    gateway: Gateway, egress: str, stream: bool
) -> None:
    client, headers = gateway.openai(), tag()
    messages: Any = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Say hello."},
    ]
    if stream:
        chunks = await client.chat.completions.create(
            model=f"via-{egress}", messages=messages, stream=True,
            stream_options={"include_usage": True}, extra_headers=headers,
        )  # fmt: skip
        text, finish, usage = "", None, None
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        assert usage is not None and usage.completion_tokens > 0
    else:
        completion = await client.chat.completions.create(
            model=f"via-{egress}", messages=messages, extra_headers=headers
        )
        text, finish = (
            completion.choices[0].message.content or "",
            completion.choices[0].finish_reason,
        )
        assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert text.strip() and finish == "stop"
    await accounted(gateway, headers, egress)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("egress", EGRESS)
async def test_openai_sdk_chat_gets_a_tool_call_from_every_provider(
    gateway: Gateway, egress: str, stream: bool
) -> None:
    client, headers = gateway.openai(), tag()
    request: Any = {
        "model": f"via-{egress}",
        "messages": [{"role": "user", "content": "What is the weather?"}],
        "tools": CHAT_TOOLS,
        "tool_choice": "required",
        "extra_headers": headers,
    }
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in await client.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    if call.function and call.function.name:
                        entry["name"] = call.function.name
                    entry["arguments"] += (call.function.arguments or "") if call.function else ""
        name, arguments = calls[0]["name"], calls[0]["arguments"]
    else:
        completion = await client.chat.completions.create(**request)
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.type == "function" and call.id
        name, arguments, finish = (
            call.function.name,
            call.function.arguments,
            completion.choices[0].finish_reason,
        )
    assert finish == "tool_calls"
    assert name == "get_weather"
    assert isinstance(json.loads(arguments)["city"], str)
    await accounted(gateway, headers, egress)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("egress", EGRESS)
async def test_anthropic_sdk_messages_get_text_from_every_provider(
    gateway: Gateway, egress: str, stream: bool
) -> None:
    client, headers = gateway.anthropic(), tag()
    request: Any = {
        "model": f"via-{egress}",
        "max_tokens": 200,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": "Say hello."}],
        "extra_headers": headers,
    }
    if stream:
        async with client.messages.stream(**request) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**request)
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    await accounted(gateway, headers, egress)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("egress", EGRESS)
async def test_anthropic_sdk_messages_get_a_tool_use_from_every_provider(
    gateway: Gateway, egress: str, stream: bool
) -> None:
    client, headers = gateway.anthropic(), tag()
    request: Any = {
        "model": f"via-{egress}",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "What is the weather?"}],
        "tools": MESSAGES_TOOLS,
        "tool_choice": {"type": "any"},
        "extra_headers": headers,
    }
    if stream:
        async with client.messages.stream(**request) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**request)
    uses = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use"
    assert uses[0].name == "get_weather" and uses[0].id
    assert isinstance(uses[0].input, dict) and isinstance(uses[0].input["city"], str)
    await accounted(gateway, headers, egress)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("egress", EGRESS)
async def test_openai_sdk_responses_get_text_from_every_provider(
    gateway: Gateway, egress: str, stream: bool
) -> None:
    client, headers = gateway.openai(), tag()
    request: Any = {
        "model": f"via-{egress}",
        "instructions": "Answer briefly.",
        "input": "Say hello.",
        "extra_headers": headers,
    }
    if stream:
        async with client.responses.stream(**request) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(**request)
    assert response.status == "completed"
    assert response.output_text.strip()
    assert response.usage is not None and response.usage.output_tokens > 0
    await accounted(gateway, headers, egress)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("egress", EGRESS)
async def test_openai_sdk_responses_get_a_function_call_from_every_provider(
    gateway: Gateway, egress: str, stream: bool
) -> None:
    client, headers = gateway.openai(), tag()
    request: Any = {
        "model": f"via-{egress}",
        "input": [{"role": "user", "content": "What is the weather?"}],
        "tools": RESPONSES_TOOLS,
        "tool_choice": "required",
        "extra_headers": headers,
    }
    if stream:
        async with client.responses.stream(**request) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(**request)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    await accounted(gateway, headers, egress)
