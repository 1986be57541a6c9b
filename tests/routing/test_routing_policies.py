"""Routing policy end to end: idempotency keys, mirroring, residency and latency-aware picks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

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


def policy(fake: FakeProvider, models: str, rules: str = "") -> str:
    return f"""
providers:
  fake:
    kind: openai
    base_url: "{fake.url}/v1"
    retry: {{base_backoff_ms: 1, max_backoff_ms: 5}}
  fake-eu: {{kind: openai, base_url: "{fake.url}/v1", region: eu-west-1}}
models:
{models}
rules:
  - name: default
    models: {{allow: ["*"]}}
{rules}
"""


ONE = "  m: {deployments: [{provider: fake, model: gpt-a}]}"


def total(fake: FakeProvider) -> int:
    return fake.state.stats.requests_total


async def test_a_repeated_idempotency_key_gets_the_first_answer_without_a_second_call(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        client = gw.openai(**{"idempotency-key": "order-42"})
        first = await client.chat.completions.with_raw_response.create(model="m", messages=HI)
        second = await client.chat.completions.with_raw_response.create(model="m", messages=HI)
        replay = await gw.record(second.headers["x-request-id"])
    assert total(fake) == 1
    assert second.headers["idempotent-replayed"] == "true"
    assert second.http_response.content == first.http_response.content
    assert replay.idempotent_replay and replay.attempts == 0 and replay.input_tokens == 0


async def test_a_streamed_answer_is_replayed_for_a_repeated_key(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        client = gw.openai(**{"idempotency-key": "stream-7"})
        texts = []
        for _ in range(2):
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
            texts.append(
                "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            )
    assert total(fake) == 1
    assert texts[0] == texts[1] and texts[0].endswith(".")


async def test_idempotency_keys_are_scoped_to_the_tenant(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        for tenant in ("tenant-a", "tenant-b"):
            client = gw.openai(**{"idempotency-key": "same", "x-sidegate-tenant": tenant})
            await client.chat.completions.create(model="m", messages=HI)
    assert total(fake) == 2


async def test_an_idempotency_key_reused_with_another_body_is_refused(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        client = gw.openai(**{"idempotency-key": "k1"})
        await client.chat.completions.create(model="m", messages=HI)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Something else."}]
            )
    assert caught.value.code == "idempotency_key_reused"
    assert total(fake) == 1


async def test_a_concurrent_duplicate_waits_for_the_first_instead_of_paying_twice(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="slow", count=1, delay_ms=200))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        client = gw.openai(**{"idempotency-key": "dup"})
        answers = await asyncio.gather(
            client.chat.completions.create(model="m", messages=HI),
            client.chat.completions.create(model="m", messages=HI),
        )
    assert total(fake) == 1
    assert answers[0].id == answers[1].id


async def test_a_failed_first_request_leaves_its_key_free_for_a_retry(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="503", count=3))
    async with Gateway(tmp_path, policy(fake, ONE)) as gw:
        client = gw.openai(**{"idempotency-key": "retry-me"})
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="m", messages=HI)
        completion = await client.chat.completions.create(model="m", messages=HI)
    assert completion.choices[0].message.content
    assert total(fake) == 4


MIRRORED = """  m:
    deployments: [{provider: fake, model: gpt-a}]
    mirror: {model: candidate}
  candidate: {deployments: [{provider: fake, model: gpt-candidate}]}"""


async def test_a_mirrored_request_is_recorded_apart_and_never_changes_the_answer(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with Gateway(tmp_path, policy(fake, MIRRORED)) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="m", messages=HI, stream=False
        )
        primary_id = raw.headers["x-request-id"]
        for _ in range(100):
            mirrors = [r for r in gw.records if r.mirror_of == primary_id]
            if mirrors:
                break
            await asyncio.sleep(0.01)
        primary = await gw.record(primary_id)
    assert raw.parse().model == "gpt-a"
    assert fake.state.stats.requests["chat.completions"] == {"gpt-a": 1, "gpt-candidate": 1}
    mirror = mirrors[0]
    assert (mirror.model_resolved, mirror.deployment) == ("candidate", "fake/gpt-candidate")
    assert mirror.token_source == "provider" and mirror.output_tokens > 0
    assert primary.mirror_of == "" and primary.model_resolved == "m"
    assert mirror.id != primary.id


async def test_a_failing_mirror_never_reaches_the_caller(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="500", count=-1, model="gpt-candidate"))
    async with Gateway(tmp_path, policy(fake, MIRRORED)) as gw:
        stream = await gw.openai().chat.completions.create(model="m", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        for _ in range(100):
            if len(gw.records) == 2:
                break
            await asyncio.sleep(0.01)
    assert text.endswith(".")
    by_mirror = {bool(r.mirror_of): r for r in gw.records}
    assert by_mirror[False].error_class is None
    assert by_mirror[True].error_class == "upstream_error"
    assert calls_of(fake, "gpt-candidate") == 1  # a mirror is never retried


def calls_of(fake: FakeProvider, model: str) -> int:
    return fake.state.stats.requests.get("chat.completions", {}).get(model, 0)


RESIDENT = """  m:
    deployments:
      - {provider: fake, model: gpt-us, region: us-east-1, weight: 99}
      - {provider: fake-eu, model: gpt-eu, weight: 1}
  us-only: {deployments: [{provider: fake, model: gpt-us, region: us-east-1}]}"""
EU_RULE = "  - {name: eu-only, match: {tenant: eu-bank}, routing: {regions: [eu]}}"


async def test_an_eu_only_tenant_is_served_only_by_eu_deployments(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with Gateway(tmp_path, policy(fake, RESIDENT, EU_RULE)) as gw:
        client = gw.openai(**{"x-sidegate-tenant": "eu-bank"})
        for _ in range(10):
            await client.chat.completions.create(model="m", messages=HI)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model="us-only", messages=HI)
    assert fake.state.stats.requests["chat.completions"] == {"gpt-eu": 10}
    assert caught.value.code == "residency_unavailable"


async def test_latency_aware_routing_settles_on_the_fastest_deployment(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.state.add_fault(Fault(kind="slow", count=-1, model="gpt-slow", delay_ms=150))
    models = """  m:
    strategy: latency
    deployments:
      - {provider: fake, model: gpt-slow}
      - {provider: fake, model: gpt-fast}"""
    async with Gateway(tmp_path, policy(fake, models)) as gw:
        client = gw.openai()
        for _ in range(8):
            await client.chat.completions.create(model="m", messages=HI)
    assert calls_of(fake, "gpt-slow") == 1  # measured once, then avoided
    assert calls_of(fake, "gpt-fast") == 7
