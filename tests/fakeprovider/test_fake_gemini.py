"""The Gemini API against the fake provider, driven by a raw aiohttp client."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from fake_sse import sse_data

from fakeprovider.app import FakeProvider
from fakeprovider.content import completion_for
from fakeprovider.gemini_api import count_gemini_prompt_tokens

CONTENTS: list[Any] = [{"role": "user", "parts": [{"text": "Hello there"}]}]


def _url(fake: FakeProvider, model: str, method: str, query: str = "") -> str:
    return f"{fake.url}/v1beta/models/{model}:{method}{query}"


async def _generate(
    http: aiohttp.ClientSession, fake: FakeProvider, body: dict[str, Any], model: str
) -> dict[str, Any]:
    async with http.post(_url(fake, model, "generateContent"), json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def test_generate_content_text_and_usage_are_exactly_predictable(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    system = {"parts": [{"text": "Be terse."}]}
    body = {"contents": CONTENTS, "systemInstruction": system}
    result = await _generate(http, fake, body, "gemini-2.0-flash")
    candidate = result["candidates"][0]
    assert candidate["content"]["role"] == "model"
    assert candidate["content"]["parts"][0]["text"] == completion_for("Hello there").text
    assert candidate["finishReason"] == "STOP"
    usage = result["usageMetadata"]
    prompt = count_gemini_prompt_tokens(CONTENTS, system)
    assert usage["promptTokenCount"] == prompt
    assert usage["candidatesTokenCount"] == 20
    assert usage["totalTokenCount"] == prompt + 20
    assert "cachedContentTokenCount" not in usage and "thoughtsTokenCount" not in usage
    assert result["modelVersion"] == "gemini-2.0-flash"


async def test_max_output_tokens_cuts_the_answer_with_finish_reason_max_tokens(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 4}}
    result = await _generate(http, fake, body, "gemini-2.0-flash")
    candidate = result["candidates"][0]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert (
        candidate["content"]["parts"][0]["text"] == completion_for("Hello there", max_tokens=4).text
    )


async def test_thinking_models_report_thoughts_apart_from_candidates(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = {"contents": CONTENTS, "generationConfig": {"thinkingConfig": {"thinkingBudget": 40}}}
    usage = (await _generate(http, fake, body, "gemini-2.5-flash"))["usageMetadata"]
    assert usage["thoughtsTokenCount"] == 40
    assert usage["candidatesTokenCount"] == 20
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + 20 + 40


async def test_sse_stream_sends_one_chunk_per_token_with_running_usage(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    url = _url(fake, "gemini-2.0-flash", "streamGenerateContent", "?alt=sse")
    async with http.post(url, json={"contents": CONTENTS}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.text()
    assert "\r\n\r\n" in raw
    chunks = [json.loads(data) for data in sse_data(raw)]
    assert len(chunks) == 20
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == completion_for("Hello there").text
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in chunks] == list(range(1, 21))
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])


async def test_stream_without_alt_sse_is_one_json_array(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    url = _url(fake, "gemini-2.0-flash", "streamGenerateContent")
    async with http.post(url, json={"contents": CONTENTS}) as response:
        chunks = json.loads(await response.text())
    assert len(chunks) == 20
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] > 20


async def test_function_declarations_produce_a_function_call_part(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    declaration = {
        "name": "get_weather",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
    }
    tools: list[Any] = [{"functionDeclarations": [declaration]}]
    body = {
        "contents": CONTENTS,
        "tools": tools,
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    result = await _generate(http, fake, body, "gemini-2.0-flash")
    call = result["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str)
    assert result["usageMetadata"]["promptTokenCount"] == count_gemini_prompt_tokens(
        CONTENTS, tools=tools
    )


async def test_a_repeated_long_prompt_reports_cached_content_tokens(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    long: list[Any] = [{"role": "user", "parts": [{"text": "Context line. " * 400}]}]
    first = (await _generate(http, fake, {"contents": long}, "gemini-2.0-flash"))["usageMetadata"]
    second = (await _generate(http, fake, {"contents": long}, "gemini-2.0-flash"))["usageMetadata"]
    assert "cachedContentTokenCount" not in first
    assert second["cachedContentTokenCount"] == second["promptTokenCount"] // 128 * 128


async def test_count_tokens_matches_the_prompt_token_count(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        _url(fake, "gemini-2.0-flash", "countTokens"), json={"contents": CONTENTS}
    ) as response:
        counted = await response.json()
    assert counted["totalTokens"] == count_gemini_prompt_tokens(CONTENTS)


async def test_the_api_key_is_accepted_in_the_header_or_the_query(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeProvider(api_key="g-key") as fake:
        url = _url(fake, "gemini-2.0-flash", "generateContent")
        async with http.post(url, json={"contents": CONTENTS}) as response:
            assert response.status == 401
            error = (await response.json())["error"]
        assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
        headers = {"x-goog-api-key": "g-key"}
        async with http.post(url, json={"contents": CONTENTS}, headers=headers) as response:
            assert response.status == 200
        async with http.post(url + "?key=g-key", json={"contents": CONTENTS}) as response:
            assert response.status == 200


async def test_an_unknown_method_is_a_404_in_gemini_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(_url(fake, "gemini-2.0-flash", "embedEverything"), json={}) as response:
        assert response.status == 404
        assert (await response.json())["error"]["status"] == "NOT_FOUND"
