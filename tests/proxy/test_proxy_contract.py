"""The sidecar's HTTP contract: pass-through, streams, errors in OpenAI format, a record each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgspec
import openai
import pytest
from proxy_kit import bundle_for, running_sidecar

from fakeprovider.app import FakeProvider
from fakeprovider.faults import Fault
from sidegate.natsd import free_port

CHAT = [{"role": "user", "content": "Say something short."}]


async def _post(url: str, body: bytes, **headers: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_a_same_format_request_reaches_the_provider_byte_for_byte(tmp_path: Path) -> None:
    body = b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "hi"}]}'
    async with FakeProvider() as fake, running_sidecar(tmp_path, bundle_for(fake.url)) as sc:
        status, _ = await _post(sc.url, body, **{"content-type": "application/json"})
        seen = fake.state.stats.last["chat.completions"]
    assert status == 200
    # Re-encoding would drop the extra spaces: the same length means the same bytes went out.
    assert seen.headers["content-length"] == str(len(body))
    assert seen.body == msgspec.json.decode(body)


async def test_a_stream_arrives_as_it_is_produced_and_the_added_usage_chunk_is_removed(
    tmp_path: Path,
) -> None:
    async with (
        FakeProvider(token_delay_ms=30) as fake,
        running_sidecar(tmp_path, bundle_for(fake.url)) as sc,
    ):
        client = openai.AsyncOpenAI(base_url=f"{sc.url}/v1", api_key="x", max_retries=0)
        loop = asyncio.get_running_loop()
        arrivals, chunks = [], []
        stream = await client.chat.completions.create(
            model="fast",
            messages=CHAT,
            stream=True,  # type: ignore[arg-type]
        )
        async for chunk in stream:
            arrivals.append(loop.time())
            chunks.append(chunk)
        forwarded = fake.state.stats.last["chat.completions"].body
        (record,) = await sc.records()
    assert forwarded["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)
    # One chunk per token, 30 ms apart upstream: a buffered relay would deliver them at once.
    assert arrivals[-1] - arrivals[0] > 0.2
    assert record.token_source == "provider" and record.output_tokens > 0
    assert record.stream and record.ttft_ms is not None


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"messages": []}', 400, "invalid_request_body"),
        (b'{"model": "", "messages": []}', 400, "missing_model"),
        (b'{"model": 7, "messages": []}', 400, "invalid_request_body"),
        (b'{"model": "gpt-9", "messages": []}', 404, "model_not_found"),
        (b'{"model": "gpt-4o", "messages": []}', 403, "model_not_allowed"),
        (b'{"model": "text-embedding-3-small", "messages": []}', 400, "model_kind_mismatch"),
    ],
)
async def test_bad_requests_get_a_precise_openai_error_and_still_a_record(
    tmp_path: Path, body: bytes, status: int, code: str
) -> None:
    async with FakeProvider() as fake, running_sidecar(tmp_path, bundle_for(fake.url)) as sc:
        got, error = await _post(sc.url, body)
        (record,) = await sc.records()
        upstream_calls = fake.state.stats.requests_total
    assert got == status
    assert error["error"]["code"] == code  # type: ignore[index]
    assert error["error"]["message"]  # type: ignore[index]
    assert record.status_code == status and record.outcome in ("error", "denied")
    assert upstream_calls == 0


async def test_a_body_over_the_limit_gets_413_without_being_read_whole(tmp_path: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_sidecar(tmp_path, bundle_for(fake.url), max_body_bytes=1024) as sc,
    ):
        status, error = await _post(sc.url, b'{"model": "fast", "x": "' + b"a" * 4096 + b'"}')
    assert status == 413
    assert error["error"]["code"] == "request_too_large"  # type: ignore[index]


async def test_an_unknown_route_gets_a_404_in_openai_format(tmp_path: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_sidecar(tmp_path, bundle_for(fake.url)) as sc,
        aiohttp.ClientSession() as session,
        session.get(f"{sc.url}/v1/engines") as response,
    ):
        status, error = response.status, await response.json()
    assert status == 404
    assert error["error"]["code"] == "unknown_url"


async def test_an_unreachable_upstream_is_a_502_with_a_record(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, bundle_for(f"http://127.0.0.1:{free_port()}")) as sc:
        client = openai.AsyncOpenAI(base_url=f"{sc.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="fast", messages=CHAT)  # type: ignore[arg-type]
        (record,) = await sc.records()
    assert caught.value.status_code == 502
    assert record.error_class == "upstream_unavailable"
    assert record.token_source == "none"  # nothing reached a provider, nothing was billed


async def test_an_upstream_that_does_not_answer_in_time_is_a_504(tmp_path: Path) -> None:
    async with FakeProvider() as fake:
        fake.state.add_fault(Fault(kind="hang", count=-1))  # every retry hangs too
        bundle = bundle_for(fake.url, first_byte_timeout_ms=300)
        async with running_sidecar(tmp_path, bundle) as sc:
            status, error = await _post(sc.url, b'{"model": "fast", "messages": []}')
            (record,) = await sc.records()
    assert status == 504
    assert error["error"]["type"] == "timeout"  # type: ignore[index]
    assert record.error_class == "upstream_timeout"


async def test_a_client_that_goes_away_cancels_the_upstream_call(tmp_path: Path) -> None:
    async with FakeProvider() as fake:
        fake.state.add_fault(Fault(kind="hang"))
        async with running_sidecar(tmp_path, bundle_for(fake.url)) as sc:
            client = openai.AsyncOpenAI(
                base_url=f"{sc.url}/v1", api_key="x", max_retries=0, timeout=0.3
            )
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="fast", messages=CHAT)  # type: ignore[arg-type]
            for _ in range(100):
                records = await sc.records()
                if records:
                    break
                await asyncio.sleep(0.02)
    (record,) = records
    assert record.error_class == "client_closed"
    assert record.token_source == "estimated"  # the provider had the prompt: estimate it
    assert record.input_tokens > 0
