"""Resilience end to end: the sidecar against the fake provider's injected faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import openai
import pytest
from gateway_kit import Gateway

from fakeprovider.app import FakeProvider
from fakeprovider.faults import Fault

HI: list[dict[str, str]] = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def policy(
    fake: FakeProvider,
    models: str,
    *,
    retry: str = "{base_backoff_ms: 1, max_backoff_ms: 5}",
    breaker: str = "{}",
    timeouts: str = "",
    rules: str = "",
) -> str:
    return f"""
providers:
  fake:
    kind: openai
    base_url: "{fake.url}/v1"
    retry: {retry}
    breaker: {breaker}
    {timeouts}
models:
{models}
rules:
  - name: default
    models: {{allow: ["*"]}}
{rules}
"""


def calls(fake: FakeProvider, model: str) -> int:
    return fake.state.stats.requests.get("chat.completions", {}).get(model, 0)


ONE = "  m: {deployments: [{provider: fake, model: gpt-a}]}"
WITH_FALLBACK = """  m:
    deployments: [{provider: fake, model: gpt-bad}]
    fallbacks: [backup]
  backup: {deployments: [{provider: fake, model: gpt-good}]}"""


async def test_a_503_is_retried_and_the_retry_is_recorded(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="503", count=1))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        completion = await gw.openai().chat.completions.create(model="m", messages=HI)
        record = await gw.record()
    assert completion.choices[0].message.content
    assert calls(fake, "gpt-a") == 2
    assert (record.attempts, record.retries, record.error_class) == (2, 1, None)


async def test_a_bad_request_is_never_retried(tmp_path: Path, fake: FakeProvider) -> None:
    reasoning = "  m: {deployments: [{provider: fake, model: o3}]}"
    async with Gateway(tmp_path, policy(fake, reasoning)) as gw:
        with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
            # Reasoning models refuse max_tokens: the provider's 400 is the answer.
            await gw.openai().chat.completions.create(model="m", messages=HI, max_tokens=10)
        record = await gw.record()
    assert calls(fake, "o3") == 1
    assert (record.attempts, record.error_class) == (1, "invalid_request")


async def test_retry_after_is_honoured_when_retrying_the_same_deployment(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="429", count=1, retry_after_s=0.3))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        started = time.monotonic()
        await gw.openai().chat.completions.create(model="m", messages=HI)
        elapsed = time.monotonic() - started
        record = await gw.record()
    assert elapsed >= 0.3
    assert (record.attempts, record.retries) == (2, 1)


async def test_a_retry_after_longer_than_policy_waits_falls_back_at_once(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="429", count=-1, model="gpt-bad", retry_after_s=30))
    retry = "{max_retry_after_ms: 100, base_backoff_ms: 1, max_backoff_ms: 5}"
    async with Gateway(tmp_path, policy(fake, WITH_FALLBACK, retry=retry)) as gw:
        started = time.monotonic()
        await gw.openai().chat.completions.create(model="m", messages=HI)
        elapsed = time.monotonic() - started
        record = await gw.record()
    assert elapsed < 1.0
    assert (record.model_resolved, record.fallback_from, record.attempts) == ("backup", "m", 2)


async def test_a_burst_answered_with_429_stays_within_the_retry_budget(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="429", count=-1, retry_after_s=0))
    retry = (
        "{max_attempts: 4, base_backoff_ms: 1, max_backoff_ms: 2,"
        " budget_ratio: 0.1, budget_min_per_s: 0}"
    )
    async with Gateway(tmp_path, policy(fake, ONE, retry=retry)) as gw:
        client = gw.openai()

        async def one() -> BaseException | None:
            try:
                await client.chat.completions.create(model="m", messages=HI)
            except openai.RateLimitError as exc:
                return exc
            return None

        outcomes = await asyncio.gather(*(one() for _ in range(40)))
    assert all(isinstance(o, openai.RateLimitError) for o in outcomes)
    # 40 requests, and retries of at most 10% of them: never 4 attempts each (160).
    assert 40 <= fake.state.stats.requests_total <= 44


async def test_an_open_breaker_sends_traffic_straight_to_the_fallback(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="500", count=-1, model="gpt-bad"))
    retry, breaker = "{max_attempts: 1}", "{consecutive_failures: 2, open_ms: 60000}"
    async with Gateway(tmp_path, policy(fake, WITH_FALLBACK, retry=retry, breaker=breaker)) as gw:
        client = gw.openai()
        for _ in range(6):
            await client.chat.completions.create(model="m", messages=HI)
        states = gw.proxy.health.states()
        records = list(gw.records)
    assert calls(fake, "gpt-bad") == 2  # then the circuit opened
    assert calls(fake, "gpt-good") == 6
    assert states["fake/gpt-bad"] == "open"
    assert {(r.fallback_from, r.model_resolved, r.deployment) for r in records} == {
        ("m", "backup", "fake/gpt-good")
    }
    assert [r.attempts for r in records] == [2, 2, 1, 1, 1, 1]


async def test_a_half_open_probe_closes_the_circuit_once_the_deployment_recovers(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="500", count=2, model="gpt-bad"))
    retry, breaker = "{max_attempts: 1}", "{consecutive_failures: 2, open_ms: 200}"
    async with Gateway(tmp_path, policy(fake, WITH_FALLBACK, retry=retry, breaker=breaker)) as gw:
        client = gw.openai()
        for _ in range(2):
            await client.chat.completions.create(model="m", messages=HI)
        assert gw.proxy.health.states()["fake/gpt-bad"] == "open"
        await asyncio.sleep(0.25)
        await client.chat.completions.create(model="m", messages=HI)
        record = await gw.record()
        assert gw.proxy.health.states()["fake/gpt-bad"] == "closed"
    assert (record.deployment, record.fallback_from) == ("fake/gpt-bad", "")


async def test_when_every_circuit_is_open_the_caller_is_told_when_to_retry(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="503", count=-1))
    retry, breaker = "{max_attempts: 1}", "{consecutive_failures: 1, open_ms: 5000}"
    async with Gateway(tmp_path, policy(fake, ONE, retry=retry, breaker=breaker)) as gw:
        client = gw.openai()
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="m", messages=HI)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="m", messages=HI)
    assert caught.value.code == "circuit_open"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 5
    assert fake.state.stats.requests_total == 1


async def test_a_hung_deployment_times_out_before_the_first_byte_and_another_serves(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="hang", count=1))
    models = """  m:
    deployments:
      - {provider: fake, model: gpt-a}
      - {provider: fake, model: gpt-b}"""
    timeouts = "first_byte_timeout_ms: 300"
    async with Gateway(tmp_path, policy(fake, models, timeouts=timeouts)) as gw:
        started = time.monotonic()
        await gw.openai().chat.completions.create(model="m", messages=HI)
        elapsed = time.monotonic() - started
        record = await gw.record()
    assert 0.3 <= elapsed < 2.0
    assert (record.attempts, record.retries) == (2, 1)
    assert calls(fake, "gpt-a") == calls(fake, "gpt-b") == 1  # the retry went elsewhere


async def test_the_request_deadline_bounds_every_attempt(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="hang", count=-1))
    rules = "  - {name: quick, match: {app: billing}, caps: {deadline_ms: 400}}"
    async with Gateway(tmp_path, policy(fake, ONE, rules=rules)) as gw:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=HI)
        elapsed = time.monotonic() - started
        record = await gw.record()
    assert 0.4 <= elapsed < 1.5
    assert caught.value.status_code == 504 and caught.value.code == "deadline_exceeded"
    assert record.error_class == "upstream_timeout"


async def test_a_mid_stream_drop_is_a_stream_error_for_the_client_and_is_accounted(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="drop", count=1, after_chunks=5))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        received: list[str] = []

        async def read_stream() -> None:
            stream = await gw.openai().chat.completions.create(model="m", messages=HI, stream=True)
            async for chunk in stream:
                received.extend(c.delta.content or "" for c in chunk.choices)

        with pytest.raises(openai.APIError, match="interrupted"):
            await read_stream()
        record = await gw.record()
    assert "".join(received)  # bytes reached the client before the drop ...
    assert calls(fake, "gpt-a") == 1  # ... so it was not retried
    assert (record.error_class, record.token_source, record.attempts) == (
        "upstream_error", "estimated", 1,
    )  # fmt: skip
    assert record.output_tokens > 0 and record.input_tokens > 0


async def test_a_mid_stream_drop_reaches_anthropic_callers_as_an_error_event(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="drop", count=1, after_chunks=5))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        with pytest.raises(anthropic.APIError):
            async with gw.anthropic().messages.stream(model="m", max_tokens=50, messages=HI) as s:
                await s.get_final_message()
        record = await gw.record()
    assert (record.error_class, record.token_source) == ("upstream_error", "estimated")
    assert record.output_tokens > 0


async def test_a_stream_cut_before_its_first_event_is_retried(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="drop", count=1, after_chunks=0))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        stream = await gw.openai().chat.completions.create(model="m", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        record = await gw.record()
    assert text.endswith(".")
    assert (record.attempts, record.retries, record.error_class) == (2, 1, None)


async def test_a_stream_outliving_its_total_timeout_is_cut_with_a_timeout_error(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="slow", count=1, chunk_delay_ms=60))
    timeouts = "total_timeout_ms: 400"
    async with Gateway(tmp_path, policy(fake, ONE, timeouts=timeouts)) as gw:

        async def read_stream() -> None:
            stream = await gw.openai().chat.completions.create(model="m", messages=HI, stream=True)
            async for _ in stream:
                pass

        started = time.monotonic()
        with pytest.raises(openai.APIError, match="timeout"):
            await read_stream()
        elapsed = time.monotonic() - started
        record = await gw.record()
    assert 0.4 <= elapsed < 1.0  # 20 chunks at 60 ms would take 1.2 s
    assert (record.error_class, record.attempts) == ("upstream_timeout", 1)
