"""Faults on command: errors in each wire format, dropped and hung connections, slowness."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest

from fakeprovider.app import FakeProvider
from fakeprovider.faults import Fault

HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
CLAUDE = "claude-haiku-4-5"


async def _post_fault(http: aiohttp.ClientSession, fake: FakeProvider, **fault: Any) -> None:
    async with http.post(f"{fake.url}/_fake/faults", json=fault) as response:
        assert response.status == 201, await response.text()


async def test_a_429_fault_raises_rate_limit_error_carrying_retry_after(
    fake: FakeProvider, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    await _post_fault(http, fake, kind="429", retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as limited:
        await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    headers = limited.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.code == "rate_limit_exceeded"


async def test_a_fault_hits_only_the_next_count_requests(
    fake: FakeProvider, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    await _post_fault(http, fake, kind="500", count=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    reply = await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    assert fake.state.stats.faults_served == {"500": 2}


async def test_model_and_route_filters_leave_other_requests_alone(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="503", model="gpt-4o", route="chat.completions", count=-1))
    await oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    await oai.embeddings.create(model="gpt-4o", input="x")
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as unavailable:
            await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert unavailable.value.status_code == 503


async def test_deleting_faults_clears_an_until_cleared_fault(
    fake: FakeProvider, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    await _post_fault(http, fake, kind="500", count=-1)
    async with http.get(f"{fake.url}/_fake/faults") as response:
        assert (await response.json())["faults"][0]["count"] == -1
    async with http.delete(f"{fake.url}/_fake/faults") as response:
        assert (await response.json()) == {"cleared": 1}
    reply = await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"


async def test_anthropic_routes_get_faults_in_anthropic_error_format(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic
) -> None:
    fake.state.add_fault(Fault(kind="429", retry_after_s=0.25))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await claude.messages.create(model=CLAUDE, max_tokens=5, messages=HELLO)
    body = limited.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == limited.value.response.headers["request-id"]
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["retry-after-ms"] == "250"
    fake.state.add_fault(Fault(kind="529"))
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await claude.messages.create(model=CLAUDE, max_tokens=5, messages=HELLO)
    assert overloaded.value.status_code == 529


async def test_gemini_routes_get_faults_in_gemini_error_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.url}/v1beta/models/gemini-2.0-flash:generateContent"
    headers = {"x-fake-fault": "429", "x-fake-retry-after": "3"}
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 429
        assert response.headers["retry-after"] == "3"
        error = (await response.json())["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"][0]["retryDelay"] == "3s"


async def test_a_header_fault_applies_to_that_request_only(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-fake-fault": "429"}
        )
    reply = await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content


async def test_an_invalid_header_fault_is_a_400(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-fake-fault": "teapot"}
        )
    assert "invalid fault headers" in refused.value.message


async def test_an_invalid_fault_order_is_refused_by_the_control_api(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fake.url}/_fake/faults", json={"kind": "429", "cuont": 2}) as response:
        assert response.status == 400
        assert "cuont" in (await response.json())["error"]
    async with http.post(f"{fake.url}/_fake/faults", json={"kind": "500", "count": 0}) as response:
        assert response.status == 400


async def _collect(events: AsyncIterator[Any], into: list[Any]) -> None:
    async for event in events:
        into.append(event)  # noqa: PERF401 - one by one, so what came before a break is kept


async def test_drop_aborts_the_stream_after_the_given_number_of_events(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="drop", after_chunks=3))
    stream = await oai.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        await _collect(stream, received)
    assert len(received) == 3
    assert all(chunk.choices[0].finish_reason is None for chunk in received)


async def test_drop_breaks_an_anthropic_stream_before_message_stop(
    fake: FakeProvider, claude: anthropic.AsyncAnthropic
) -> None:
    fake.state.add_fault(Fault(kind="drop", after_chunks=5))
    received: list[Any] = []

    async def consume() -> None:
        async with claude.messages.stream(model=CLAUDE, max_tokens=50, messages=HELLO) as stream:
            await _collect(stream, received)

    # The anthropic SDK lets the transport's error through mid-stream; openai wraps it.
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)):
        await consume()
    kinds = [event.type for event in received]
    assert kinds[0] == "message_start"
    assert "message_stop" not in kinds and "message_delta" not in kinds


async def test_drop_on_a_non_stream_request_closes_the_connection_before_any_answer(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="drop"))
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model="gpt-4o", messages=HELLO)


async def test_hang_never_answers_until_the_client_gives_up(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="hang"))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await oai.chat.completions.create(model="gpt-4o", messages=HELLO, timeout=0.4)
    assert time.monotonic() - started >= 0.4
    reply = await oai.chat.completions.create(model="gpt-4o", messages=HELLO, timeout=5)
    assert reply.choices[0].message.content
    assert fake.state.stats.faults_served == {"hang": 1}


async def test_slow_delays_the_first_byte_by_delay_ms(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="slow", delay_ms=300))
    started = time.monotonic()
    await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert time.monotonic() - started < 0.3


async def test_slow_with_chunk_delay_spreads_a_stream_out(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="slow", chunk_delay_ms=10))
    started = time.monotonic()
    stream = await oai.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    arrivals = [time.monotonic() - started async for _ in stream]
    assert arrivals[-1] - arrivals[0] >= 19 * 0.01


async def test_header_drop_cuts_a_gemini_stream_after_the_given_events(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.url}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    headers = {"x-fake-fault": "drop", "x-fake-after-chunks": "2"}
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    received = bytearray()

    async def read() -> None:
        async with http.post(url, json=body, headers=headers) as response:
            assert response.status == 200
            async for data in response.content.iter_any():
                received.extend(data)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read()
    assert received.count(b"data: ") == 2


async def test_a_route_filter_starting_with_a_slash_matches_the_request_path(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    fake.state.add_fault(Fault(kind="500", route="/v1/embeddings"))
    await oai.chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        await oai.embeddings.create(model="text-embedding-3-small", input="x")


async def test_latency_and_token_delay_shape_a_stream_in_time() -> None:
    async with FakeProvider(latency_ms=150, token_delay_ms=10) as fake:
        client = openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0)
        async with client:
            started = time.monotonic()
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True
            )
            arrivals = [time.monotonic() - started async for _ in stream]
    assert arrivals[0] >= 0.15
    assert arrivals[-1] - arrivals[0] >= 19 * 0.01


async def test_stats_show_what_arrived_per_route_and_model(
    fake: FakeProvider, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    async for _ in stream:
        pass
    await oai.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    async with http.get(f"{fake.url}/_fake/stats") as response:
        stats = await response.json()
    assert stats["requests"]["chat.completions"] == {"gpt-4o": 1, "gpt-4o-mini": 1}
    assert stats["requests_total"] == 2
    last = stats["last"]["chat.completions"]
    assert last["headers"]["authorization"] == "Bearer sk-test"
    assert last["body"]["model"] == "gpt-4o-mini"
    first_body = fake.state.stats.last["chat.completions"].body
    assert first_body["model"] == "gpt-4o-mini"


async def test_reset_forgets_faults_stats_and_cached_prefixes(
    fake: FakeProvider, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    long: list[Any] = [{"role": "user", "content": "Context line. " * 400}]
    await oai.chat.completions.create(model="gpt-4o", messages=long)
    fake.state.add_fault(Fault(kind="500", count=-1))
    async with http.post(f"{fake.url}/_fake/reset") as response:
        assert response.status == 200
    assert fake.state.stats.requests_total == 0
    again = await oai.chat.completions.create(model="gpt-4o", messages=long)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == 0


async def test_faults_and_the_api_key_never_touch_the_control_api() -> None:
    async with FakeProvider(api_key="secret") as fake, aiohttp.ClientSession() as http:
        fake.state.add_fault(Fault(kind="hang", count=-1))
        timeout = aiohttp.ClientTimeout(total=2)
        async with http.get(f"{fake.url}/_fake/health", timeout=timeout) as response:
            assert await response.json() == {"ok": True}
        async with http.get(f"{fake.url}/_fake/stats", timeout=timeout) as response:
            assert response.status == 200
