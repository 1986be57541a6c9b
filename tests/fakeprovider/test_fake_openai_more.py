"""OpenAI embeddings, model list and Responses API against the fake provider, via the SDK."""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
import openai
import pytest
from fake_sse import sse_events

from fakeprovider.app import FakeProvider
from fakeprovider.content import ENCODING, completion_for
from fakeprovider.openai_embeddings import count_embedding_tokens, embedding_for
from fakeprovider.openai_responses import count_responses_input_tokens


async def test_embeddings_are_deterministic_unit_vectors_via_the_sdk_base64_default(
    oai: openai.AsyncOpenAI,
) -> None:
    result = await oai.embeddings.create(model="text-embedding-3-small", input=["cat", "dog"])
    first, second = (item.embedding for item in result.data)
    assert len(first) == 1536
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-5)
    expected = embedding_for("text-embedding-3-small", "cat")
    assert all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(first, expected, strict=True)
    )
    assert first != second
    assert result.usage.prompt_tokens == count_embedding_tokens(["cat", "dog"]) == 2


async def test_embeddings_honour_dimensions_and_float_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": "text-embedding-3-large", "input": "cat", "dimensions": 8}
    body["encoding_format"] = "float"
    async with http.post(f"{fake.url}/v1/embeddings", json=body) as response:
        vector = (await response.json())["data"][0]["embedding"]
    assert vector == list(embedding_for("text-embedding-3-large", "cat", 8))
    assert len(vector) == 8


async def test_token_array_input_embeds_like_its_text_and_counts_its_length(
    oai: openai.AsyncOpenAI,
) -> None:
    tokens = ENCODING.encode("a sleepy cat")
    by_tokens = await oai.embeddings.create(model="m", input=[tokens], encoding_format="float")
    by_text = await oai.embeddings.create(model="m", input="a sleepy cat", encoding_format="float")
    assert by_tokens.data[0].embedding == by_text.data[0].embedding
    assert by_tokens.usage.prompt_tokens == len(tokens)


async def test_an_empty_embeddings_input_is_a_400(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.embeddings.create(model="m", input=[])
    assert refused.value.param == "input"


async def test_model_list_parses_in_the_sdk(oai: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in oai.models.list()]
    assert "gpt-4o-mini" in models
    assert (await oai.models.retrieve("anything-goes")).id == "anything-goes"


async def test_responses_answer_and_usage_are_exactly_predictable(
    oai: openai.AsyncOpenAI,
) -> None:
    response = await oai.responses.create(
        model="gpt-4o", input="Hi there", instructions="Be terse."
    )
    assert response.status == "completed"
    assert response.output_text == completion_for("Hi there").text
    assert response.usage is not None
    assert response.usage.input_tokens == count_responses_input_tokens("Hi there", "Be terse.")
    assert response.usage.output_tokens == 20
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


async def test_responses_stream_helper_accumulates_the_final_response(
    oai: openai.AsyncOpenAI,
) -> None:
    items: list[Any] = [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]
    async with oai.responses.stream(model="o4-mini", input=items) as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == completion_for("Hi").text
    assert final.output[0].type == "reasoning"
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == 64
    assert final.usage.output_tokens == 64 + 20


async def test_responses_stream_events_come_in_the_documented_order(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-4o", "input": "Hi", "stream": True}
    async with http.post(f"{fake.url}/v1/responses", json=body) as response:
        events = sse_events(await response.text())
    kinds = [name for name, _ in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[4:24] == ["response.output_text.delta"] * 20
    assert kinds[24:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    usage = events[-1][1]["response"]["usage"]
    assert usage["output_tokens"] == 20 and usage["total_tokens"] == usage["input_tokens"] + 20


async def test_a_cut_response_ends_incomplete_like_the_real_api(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(
        model="gpt-4o", input="Hi", max_output_tokens=3, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == completion_for("Hi", max_tokens=3).text


async def test_responses_function_tools_stream_call_arguments(oai: openai.AsyncOpenAI) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]
    async with oai.responses.stream(
        model="gpt-4o", input="Hi", tools=tools, tool_choice="required"
    ) as stream:
        final = await stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call"
    assert call.name == "lookup"
    assert set(json.loads(call.arguments)) == {"q"}


async def test_responses_json_schema_format_answers_an_instance_of_the_schema(
    oai: openai.AsyncOpenAI,
) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "score": {"type": "number"}},
        "required": ["title", "score"],
        "additionalProperties": False,
    }
    response = await oai.responses.create(
        model="gpt-4o",
        input="Rate this",
        text={"format": {"type": "json_schema", "name": "rating", "schema": schema}},
    )
    value = json.loads(response.output_text)
    assert isinstance(value["title"], str) and isinstance(value["score"], float)
