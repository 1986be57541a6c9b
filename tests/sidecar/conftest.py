"""Fixtures for the sidecar tests: signing keys, the fake provider, policyd's store on real NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from sidecar_kit import Keys, UsageTap, new_keys

from collector.record import USAGE_STREAM, USAGE_SUBJECT_PREFIX
from fakeprovider.app import FakeProvider
from policyd.publisher import PolicyStore
from sidegate.natsd import NatsServer


@pytest.fixture
def keys() -> Keys:
    return new_keys()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def store(nc: NATS, keys: Keys) -> PolicyStore:
    """policyd's own store, signing with the test key: also creates both KV buckets."""
    return await PolicyStore.open(nc.jetstream(), signing_key=keys.signing)


@pytest.fixture
async def usage(nc: NATS) -> UsageTap:
    await nc.jetstream().add_stream(name=USAGE_STREAM, subjects=[f"{USAGE_SUBJECT_PREFIX}.>"])
    tap = UsageTap()
    await nc.subscribe(f"{USAGE_SUBJECT_PREFIX}.>", cb=tap.handle)
    return tap
