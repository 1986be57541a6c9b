"""What crosses formats: tool results, images, JSON output, stop reasons, system prompts,
errors and usage arrive in the receiving side's own shape."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from gateway_kit import Gateway, last_body
from provider_matrix import PROVIDER_KEY
from upstreams_kit import AzureFront, BedrockFake, Server

from fakeprovider.app import FakeProvider
from fakeprovider.faults import Fault

pytestmark = pytest.mark.asyncio(loop_scope="module")

# A 1x1 transparent PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
WEATHER: Any = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
TOOL_TURNS: Any = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
]


async def test_openai_tool_results_reach_anthropic_as_tool_result_blocks(
    gateway: Gateway, fake: FakeProvider
) -> None:
    await gateway.openai().chat.completions.create(
        model="via-anthropic", messages=TOOL_TURNS, tools=CHAT_TOOLS
    )
    turns = last_body(fake, "messages")["messages"]
    assert turns[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
        ],
    }
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": '{"sky": "clear"}'}
    ]


async def test_openai_tool_results_reach_gemini_as_named_function_responses(
    gateway: Gateway, fake: FakeProvider
) -> None:
    await gateway.openai().chat.completions.create(
        model="via-gemini", messages=TOOL_TURNS, tools=CHAT_TOOLS
    )
    contents = last_body(fake, "generateContent")["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
    }
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}
    ]


async def test_openai_tool_results_reach_bedrock_as_tool_result_blocks(
    gateway: Gateway, bedrock: tuple[BedrockFake, Server]
) -> None:
    await gateway.openai().chat.completions.create(
        model="via-bedrock", messages=TOOL_TURNS, tools=CHAT_TOOLS
    )
    turns = bedrock[0].last["messages"]
    assert turns[1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    assert turns[2]["content"] == [
        {"toolResult": {"toolUseId": "call_1", "content": [{"text": '{"sky": "clear"}'}]}}
    ]


async def test_anthropic_tool_results_reach_openai_as_tool_messages(
    gateway: Gateway, fake: FakeProvider
) -> None:
    await gateway.anthropic().messages.create(
        model="via-openai",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "clear"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[{"name": "get_weather", "input_schema": WEATHER}],
    )
    messages = last_body(fake, "chat.completions")["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert messages[2] == {"role": "tool", "content": "clear", "tool_call_id": "toolu_1"}
    assert messages[3] == {"role": "user", "content": "And tomorrow?"}


@pytest.mark.parametrize(
    ("egress", "expected"),
    [
        (
            "anthropic",
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ),
        ("gemini", {"inlineData": {"mimeType": "image/png", "data": PNG}}),
        ("bedrock", {"image": {"format": "png", "source": {"bytes": PNG}}}),
    ],
)
async def test_images_in_openai_messages_reach_each_provider_in_its_shape(
    gateway: Gateway,
    fake: FakeProvider,
    bedrock: tuple[BedrockFake, Server],
    egress: str,
    expected: dict[str, Any],
) -> None:
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    await gateway.openai().chat.completions.create(
        model=f"via-{egress}", messages=[{"role": "user", "content": content}]
    )
    if egress == "anthropic":
        parts = last_body(fake, "messages")["messages"][0]["content"]
    elif egress == "gemini":
        parts = last_body(fake, "generateContent")["contents"][0]["parts"]
    else:
        parts = bedrock[0].last["messages"][0]["content"]
    assert parts[1] == expected


async def test_images_in_anthropic_messages_reach_openai_as_data_urls(
    gateway: Gateway, fake: FakeProvider
) -> None:
    await gateway.anthropic().messages.create(
        model="via-openai",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    part = last_body(fake, "chat.completions")["messages"][0]["content"][0]
    assert part == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


async def test_json_schema_output_reaches_gemini_as_its_response_schema(
    gateway: Gateway, fake: FakeProvider
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    completion = await gateway.openai().chat.completions.create(
        model="via-gemini",
        messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
    )
    config = last_body(fake, "generateContent")["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema
    assert isinstance(json.loads(completion.choices[0].message.content or "")["answer"], str)


async def test_json_mode_reaches_anthropic_as_a_system_instruction(
    gateway: Gateway, fake: FakeProvider
) -> None:
    await gateway.openai().chat.completions.create(
        model="via-anthropic",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        response_format={"type": "json_object"},
    )
    assert last_body(fake, "messages")["system"] == (
        "Be terse.\n\nRespond only with a valid JSON object."
    )


async def test_anthropic_system_prompt_reaches_openai_as_a_system_message(
    gateway: Gateway, fake: FakeProvider
) -> None:
    await gateway.anthropic().messages.create(
        model="via-openai",
        max_tokens=50,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": "Hi"}],
    )
    first = last_body(fake, "chat.completions")["messages"][0]
    assert first == {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize("egress", ["anthropic", "gemini", "bedrock"])
async def test_a_cut_answer_finishes_with_length_for_openai_callers(
    gateway: Gateway, egress: str
) -> None:
    completion = await gateway.openai().chat.completions.create(
        model=f"via-{egress}", messages=[{"role": "user", "content": "Tell a story."}], max_tokens=2
    )
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize("egress", ["openai", "gemini"])
async def test_a_cut_answer_stops_with_max_tokens_for_anthropic_callers(
    gateway: Gateway, egress: str
) -> None:
    message = await gateway.anthropic().messages.create(
        model=f"via-{egress}", max_tokens=2, messages=[{"role": "user", "content": "Tell a story."}]
    )
    assert message.stop_reason == "max_tokens"


async def test_a_cut_responses_answer_is_incomplete(gateway: Gateway) -> None:
    response = await gateway.openai().responses.create(
        model="via-anthropic", input="Tell a story.", max_output_tokens=2
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


async def test_openai_rate_limit_reaches_anthropic_callers_in_anthropic_format(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="429", count=3, model="gpt-4o-mini", retry_after_s=0.01))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await gateway.anthropic().messages.create(
            model="via-openai", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        )
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "Rate limit reached" in body["error"]["message"]
    assert caught.value.response.headers["retry-after"] == "1"  # whole seconds, at least 1


async def test_bedrock_throttling_reaches_openai_callers_in_openai_format(
    gateway: Gateway, bedrock: tuple[BedrockFake, Server]
) -> None:
    bedrock[0].throttle = 3
    with pytest.raises(openai.RateLimitError) as caught:
        await gateway.openai().chat.completions.create(
            model="via-bedrock", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.code == "upstream_429"
    assert "Too many requests" in caught.value.message
    record = await gateway.record()
    assert record.error_class == "rate_limited" and record.attempts == 3


async def test_a_gemini_refusal_reaches_openai_callers_as_a_bad_request(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.openai().chat.completions.create(
            model="via-gemini", messages=[{"role": "system", "content": "Only a system prompt."}]
        )
    assert "contents is not specified" in caught.value.message


async def test_features_only_openai_has_are_refused_by_name(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.openai().responses.create(
            model="via-gemini", input="Hi", previous_response_id="resp_123"
        )
    assert "previous_response_id" in caught.value.message
    assert (await gateway.record()).attempts == 1


async def test_anthropic_usage_counts_cache_reads_and_writes_into_input(
    gateway: Gateway,
) -> None:
    system: Any = [{"type": "text", "text": "rule " * 1100, "cache_control": {"type": "ephemeral"}}]
    client = gateway.anthropic()
    request: Any = {
        "model": "via-anthropic",
        "max_tokens": 20,
        "system": system,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    first = await client.messages.create(**request)
    written = await gateway.record()
    async with client.messages.stream(**request) as events:
        second = await events.get_final_message()
    read = await gateway.record()
    assert first.usage.cache_creation_input_tokens and second.usage.cache_read_input_tokens
    assert written.cache_write_tokens == first.usage.cache_creation_input_tokens
    assert written.input_tokens == first.usage.input_tokens + written.cache_write_tokens
    assert read.cached_input_tokens == second.usage.cache_read_input_tokens
    assert read.input_tokens == second.usage.input_tokens + read.cached_input_tokens


async def test_gemini_usage_counts_thinking_as_reasoning_output(gateway: Gateway) -> None:
    completion = await gateway.openai().chat.completions.create(
        model="via-gemini-thinking", messages=[{"role": "user", "content": "Think, then say hi."}]
    )
    record = await gateway.record()
    assert completion.usage is not None
    assert record.reasoning_tokens == 64  # the fake's default thinking for gemini-2.5
    assert record.output_tokens == completion.usage.completion_tokens > record.reasoning_tokens


async def test_bedrock_usage_counts_cache_reads_into_input(gateway: Gateway) -> None:
    await gateway.openai().chat.completions.create(
        model="via-bedrock", messages=[{"role": "user", "content": "Hi"}]
    )
    record = await gateway.record()
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (15, 4, 3)


async def test_count_tokens_passes_through_to_anthropic(
    gateway: Gateway, fake: FakeProvider
) -> None:
    counted = await gateway.anthropic().messages.count_tokens(
        model="via-anthropic", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert counted.input_tokens > 0
    assert last_body(fake, "messages.count_tokens")["model"] == "claude-haiku-4-5"


async def test_count_tokens_is_estimated_for_other_providers(gateway: Gateway) -> None:
    counted = await gateway.anthropic().messages.count_tokens(
        model="via-gemini", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert counted.input_tokens == 2  # cl100k: "Hello", " there"


async def test_anthropic_sdk_lists_models_in_its_own_format(gateway: Gateway) -> None:
    page = await gateway.anthropic().models.list()
    assert "via-anthropic" in [m.id for m in page.data]
    assert all(m.type == "model" for m in page.data)


async def test_embeddings_reach_azure_deployments_unchanged(
    gateway: Gateway, azure: tuple[AzureFront, Server]
) -> None:
    result = await gateway.openai().embeddings.create(model="embed-azure", input="hello")
    assert len(result.data[0].embedding) == 1536
    assert azure[0].seen[-1] == ("my-embedding", "2024-10-21")


async def test_provider_credentials_never_reach_the_caller(gateway: Gateway) -> None:
    raw = await gateway.openai().chat.completions.with_raw_response.create(
        model="via-openai", messages=[{"role": "user", "content": "Hi"}]
    )
    assert PROVIDER_KEY not in raw.http_response.text
    assert all(PROVIDER_KEY not in v for v in raw.headers.values())
