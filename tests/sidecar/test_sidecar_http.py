"""Policy seen from an app: the sidecar on a real port, the openai SDK, the fake provider.

The bundle is the persisted one a sidecar loads at start (NATS is down throughout), so these
tests are about what the caller sees, not about distribution.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anthropic
import openai
import pytest
from sidecar_kit import (
    Keys,
    RunningSidecar,
    compile_policy,
    running_sidecar,
    sidecar_settings,
    signed,
)

from fakeprovider.app import FakeProvider
from sidecar import tokens
from sidecar.pipeline import WARNING_HEADER

HELLO = [{"role": "user", "content": "Say hello to the team"}]


@asynccontextmanager
async def serving(
    tmp_path: Path, keys: Keys, fake: FakeProvider, rules: str
) -> AsyncIterator[tuple[RunningSidecar, openai.AsyncOpenAI]]:
    bundle = compile_policy(tmp_path / "policy", rules, base_url=f"{fake.url}/v1")
    settings = sidecar_settings(tmp_path / "state", keys)
    settings.bundle_path.parent.mkdir(parents=True, exist_ok=True)
    settings.bundle_path.write_bytes(signed(bundle, keys))
    async with running_sidecar(settings) as sidecar:
        client = openai.AsyncOpenAI(base_url=f"{sidecar.url}/v1", api_key="sk-app", max_retries=0)
        try:
            yield sidecar, client
        finally:
            await client.close()


RATE = """
rules:
  - name: per-user
    rate_limits: [{scope: user, rpm: 600, burst: 0.005}]
"""


async def test_a_rate_limit_answers_429_with_headers_after_the_burst_and_refills(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    async with serving(tmp_path, keys, fake, RATE) as (_, client):
        ask = client.with_options(default_headers={"x-sidegate-user": "ann"}).chat.completions
        for left in ("2", "1", "0"):
            ok = await ask.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
            assert ok.headers["x-ratelimit-limit-requests"] == "3"
            assert ok.headers["x-ratelimit-remaining-requests"] == left
        with pytest.raises(openai.RateLimitError) as caught:
            await ask.create(model="gpt-4o-mini", messages=HELLO)
        headers = caught.value.response.headers
        assert caught.value.code == "rate_limit_exceeded"
        assert headers["retry-after"] == "1"
        assert 0 < int(headers["retry-after-ms"]) <= 100  # one request refills in 100 ms
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("ms")
        await asyncio.sleep(int(headers["retry-after-ms"]) / 1000 + 0.02)
        await ask.create(model="gpt-4o-mini", messages=HELLO)


TOKENS = """
rules:
  - name: tenant-tokens
    rate_limits: [{scope: tenant, tpm: 60, burst: 1000}]
"""


async def test_tokens_per_minute_are_settled_with_the_usage_the_provider_reported(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    # 60,000 tokens of burst that refill at 1 token per second: the test sees no refill.
    estimate = tokens.count_prompt([HELLO[0]["content"]], messages=1) + 50
    async with serving(tmp_path, keys, fake, TOKENS) as (_, client):
        first = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=50
        )
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 60_000 - estimate
        usage = first.parse().usage
        assert usage is not None
        second = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=50
        )
        remaining = int(second.headers["x-ratelimit-remaining-tokens"])
        assert remaining == pytest.approx(60_000 - usage.total_tokens - estimate, abs=2)


CAPS = """
rules:
  - name: short-answers
    caps: {max_tokens: 5}
"""


async def test_a_clamped_max_tokens_reaches_the_provider(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    async with serving(tmp_path, keys, fake, CAPS) as (_, client):
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=500
        )
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert fake.state.stats.last["chat.completions"].body["max_tokens"] == 5


async def test_an_anthropic_client_gets_its_max_tokens_clamped_too(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    async with (
        serving(tmp_path, keys, fake, CAPS) as (sidecar, _),
        anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="sk-app", max_retries=0) as client,
    ):
        answer = await client.messages.create(model="claude-haiku", max_tokens=500, messages=HELLO)
    assert answer.usage.output_tokens == 5
    assert answer.stop_reason == "max_tokens"


WARN = """
rules:
  - name: mini-only
    models: {allow: [gpt-4o-mini], mode: warn}
"""


async def test_a_warn_rule_lets_the_request_through_with_a_warning_header(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    async with serving(tmp_path, keys, fake, WARN) as (_, client):
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.status_code == 200
    assert raw.headers[WARNING_HEADER] == "models/mini-only: model_not_allowed"


KEYS = f"""
virtual_keys:
  - id: team-key
    tenant: acme
    user: ann
    key_sha256: {hashlib.sha256(b"sk-team").hexdigest()}
    scopes: [gpt-4o-mini]
  - id: old-key
    tenant: acme
    key_sha256: {hashlib.sha256(b"sk-old").hexdigest()}
    expires_at: "2020-01-01"
rules:
  - name: keys-only
    auth: {{require_key: true}}
"""


async def test_virtual_keys_gate_the_sidecar_where_policy_requires_them(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    async with serving(tmp_path, keys, fake, KEYS) as (_, client):
        with pytest.raises(openai.AuthenticationError) as missing:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert missing.value.code == "invalid_api_key"
        expired = client.with_options(api_key="sk-old")
        with pytest.raises(openai.AuthenticationError) as old:
            await expired.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert old.value.code == "expired_api_key"
        team = client.with_options(api_key="sk-team")
        await team.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.PermissionDeniedError):
            await team.chat.completions.create(model="gpt-4o", messages=HELLO)
    # The app's key never reaches the provider: only the sidecar's own credential would.
    seen = fake.state.stats.last["chat.completions"].headers
    assert "sk-team" not in seen.get("authorization", "")


METADATA = """
rules:
  - name: tag-prod
    required_metadata: {fields: [endpoint], environments: [prod]}
"""


async def test_a_prod_request_without_an_endpoint_tag_is_refused_in_openai_format(
    tmp_path: Path, keys: Keys, fake: FakeProvider
) -> None:
    async with serving(tmp_path, keys, fake, METADATA) as (_, client):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert caught.value.code == "missing_metadata"
        tagged = client.with_options(default_headers={"x-sidegate-endpoint": "greeting"})
        await tagged.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
