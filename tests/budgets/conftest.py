"""Fixtures for the budget tests: NATS clients and quota owners on a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from budget_kit import Connect, UsageTap
from nats.aio.client import Client as NATS

from collector.record import USAGE_STREAM, USAGE_SUBJECT_PREFIX
from fakeprovider.app import FakeProvider
from policyd.quota import QuotaOwner
from sidegate.natsd import NatsServer


@pytest.fixture
async def connect(nats_server: NatsServer) -> AsyncIterator[Connect]:
    """connect() → a new NATS connection, closed after the test (one per replica or sidecar)."""
    clients: list[NATS] = []

    async def open_one() -> NATS:
        client = await nats.connect(nats_server.url)
        clients.append(client)
        return client

    yield open_one
    for client in clients:
        await client.close()


@pytest.fixture
async def nc(connect: Connect) -> NATS:
    return await connect()


@pytest.fixture
async def owner(nc: NATS) -> AsyncIterator[QuotaOwner]:
    """A quota owner answering on the lease subject, as policyd runs it."""
    quota = await QuotaOwner.open(nc.jetstream())
    await quota.start(nc)
    yield quota
    await quota.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


@pytest.fixture
async def usage(nc: NATS) -> UsageTap:
    await nc.jetstream().add_stream(name=USAGE_STREAM, subjects=[f"{USAGE_SUBJECT_PREFIX}.>"])
    tap = UsageTap()
    await nc.subscribe(f"{USAGE_SUBJECT_PREFIX}.>", cb=tap.handle)
    return tap
