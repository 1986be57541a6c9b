"""Fail-static: enforcement survives NATS outages and restarts; without any bundle, not ready."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anthropic
import msgspec
import openai
import pytest
from nats.aio.client import Client as NATS
from sidecar_kit import (
    Keys,
    RunningSidecar,
    running_sidecar,
    sidecar_settings,
    wait_until,
    write_policy,
)

from fakeprovider.app import FakeProvider
from policyd.bundle import (
    KV_BUCKET,
    KV_KEY,
    decode_bundle,
    decode_envelope,
    encode_bundle,
    encode_envelope,
)
from policyd.publisher import PolicyStore, Published
from policyd.signing import sign
from sidegate.natsd import NatsServer

HELLO = [{"role": "user", "content": "Say hello"}]
MINI_ONLY = """
rules:
  - name: mini-only
    models: {allow: [gpt-4o-mini]}
"""


async def publish(store: PolicyStore, tmp_path: Path, fake: FakeProvider) -> None:
    folder = write_policy(tmp_path / "policy", MINI_ONLY, base_url=f"{fake.url}/v1")
    assert isinstance(await store.publish(folder), Published)


async def assert_enforced(sidecar: RunningSidecar) -> None:
    """The mini-only policy holds: the allowed model answers, the other one is refused."""
    async with openai.AsyncOpenAI(
        base_url=f"{sidecar.url}/v1", api_key="sk-app", max_retries=0
    ) as client:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)


async def readiness(sidecar: RunningSidecar) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(f"{sidecar.url}/readyz") as r:
        return r.status, await r.json()


async def test_enforcement_continues_while_nats_is_down(
    tmp_path: Path, keys: Keys, fake: FakeProvider, nats_server: NatsServer, store: PolicyStore
) -> None:
    await publish(store, tmp_path, fake)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        nats_server.stop()
        await assert_enforced(sidecar)
        assert (await readiness(sidecar))[0] == 200


async def test_a_sidecar_restarted_while_nats_is_down_enforces_the_persisted_bundle(
    tmp_path: Path, keys: Keys, fake: FakeProvider, nats_server: NatsServer, store: PolicyStore
) -> None:
    await publish(store, tmp_path, fake)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as first:
        await first.wait_for_revision(1)
    nats_server.stop()
    async with running_sidecar(settings) as second:
        assert second.state.active is not None and second.state.active.revision == 1
        assert await readiness(second) == (200, {"ready": True, "revision": 1})
        await assert_enforced(second)


async def test_an_older_revision_is_refused_and_the_newer_one_stays(
    tmp_path: Path,
    keys: Keys,
    fake: FakeProvider,
    nats_server: NatsServer,
    store: PolicyStore,
    nc: NATS,
) -> None:
    await publish(store, tmp_path, fake)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        kv = await nc.jetstream().key_value(KV_BUCKET)
        current = decode_bundle(decode_envelope((await kv.get(KV_KEY)).value or b"").payload)
        # A validly signed bundle replayed from the past (revision 0 < 1), e.g. a stale backup.
        replay = msgspec.structs.replace(current, revision=0)
        await kv.put(KV_KEY, encode_envelope(sign(encode_bundle(replay), keys.signing)))
        await wait_until(lambda: sidecar.state.rejection is not None, what="the rejection")
        assert sidecar.state.rejection is not None
        assert sidecar.state.rejection.reason == "revision 0 is not newer than active 1"
        await assert_enforced(sidecar)


async def test_a_sidecar_that_never_had_a_bundle_is_not_ready(tmp_path: Path, keys: Keys) -> None:
    async with running_sidecar(sidecar_settings(tmp_path / "state", keys)) as sidecar:
        status, body = await readiness(sidecar)
    assert status == 503
    assert body == {"ready": False, "reason": "no verified bundle yet"}


async def test_without_a_bundle_requests_get_503_policy_unavailable_in_openai_format(
    tmp_path: Path, keys: Keys
) -> None:
    async with (
        running_sidecar(sidecar_settings(tmp_path / "state", keys)) as sidecar,
        openai.AsyncOpenAI(base_url=f"{sidecar.url}/v1", api_key="sk", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError) as chat:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.InternalServerError) as embed:
            await client.embeddings.create(model="text-embedding-3-small", input="hi")
    for caught in (chat.value, embed.value):
        assert caught.status_code == 503
        assert caught.code == "policy_unavailable"
        assert caught.type == "policy_unavailable"
        assert caught.response.headers["retry-after"] == "1"


async def test_without_a_bundle_requests_get_503_policy_unavailable_in_anthropic_format(
    tmp_path: Path, keys: Keys
) -> None:
    async with (
        running_sidecar(sidecar_settings(tmp_path / "state", keys)) as sidecar,
        anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="sk", max_retries=0) as client,
    ):
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="claude-haiku", max_tokens=10, messages=HELLO)
    assert caught.value.status_code == 503
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "No verified policy bundle is active in this sidecar yet; retry shortly.",
        },
    }


async def test_a_corrupt_persisted_bundle_leaves_the_sidecar_not_ready_with_the_reason(
    tmp_path: Path, keys: Keys
) -> None:
    settings = sidecar_settings(tmp_path / "state", keys)
    settings.bundle_path.parent.mkdir(parents=True)
    settings.bundle_path.write_bytes(b'{"payload": "bm90IGEgYnVuZGxl"}')
    async with running_sidecar(settings) as sidecar:
        status, body = await readiness(sidecar)
    assert status == 503
    assert body["reason"] == "bundle is unsigned and unsigned bundles are not allowed"
