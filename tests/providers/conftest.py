"""Fixtures for the provider tests: the fake provider, Bedrock and Azure fronts, one sidecar
routing a model to each provider kind, all shared by a module (a test that queues a fault
queues exactly as many as its own attempts consume)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

# The sidecar harness is shared with tests/routing (a folder of tests, not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "routing"))

from gateway_kit import Gateway
from provider_matrix import POLICY, PROVIDER_KEY
from upstreams_kit import AWS_KEY_ID, AzureFront, BedrockFake, Server

from fakeprovider.app import FakeProvider


@pytest.fixture(scope="module")
def environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SG_TEST_PROVIDER_KEY", PROVIDER_KEY)
        mp.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", "sidegate-test-secret")
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(api_key=PROVIDER_KEY) as provider:
        yield provider


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bedrock() -> AsyncIterator[tuple[BedrockFake, Server]]:
    fake = BedrockFake()
    async with Server(fake.app) as server:
        yield fake, server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def azure(fake: FakeProvider) -> AsyncIterator[tuple[AzureFront, Server]]:
    front = AzureFront(fake.url, api_key=PROVIDER_KEY)
    async with Server(front.app) as server:
        yield front, server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    environment: None,
    fake: FakeProvider,
    bedrock: tuple[BedrockFake, Server],
    azure: tuple[AzureFront, Server],
) -> AsyncIterator[Gateway]:
    policy = POLICY.format(fake=fake.url, azure=azure[1].url, bedrock=bedrock[1].url)
    async with Gateway(tmp_path_factory.mktemp("providers"), policy) as gw:
        yield gw
