"""The JetStream consumer against a real nats-server: dedup, crash redelivery, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import nats
import pytest
from nats.js.api import ConsumerInfo

from collector.consumer import (
    REASON_HEADER,
    SEQUENCE_HEADER,
    SUBJECT_HEADER,
    Consumer,
    ConsumerSettings,
)
from collector.jetstream import DEAD_LETTER_STREAM
from collector.record import DEAD_LETTER_SUBJECT, USAGE_STREAM, UsageRecord
from collector.store import Store
from sidegate.natsd import NatsServer

Until = Callable[..., Awaitable[None]]
Publish = Callable[..., Awaitable[None]]
MakeRecord = Callable[..., UsageRecord]


def settings(server: NatsServer, **overrides: object) -> ConsumerSettings:
    base: dict[str, object] = {"nats_url": server.url, "fetch_timeout_s": 0.3, "ack_wait_s": 1.0}
    return ConsumerSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def running(nats_server: NatsServer, store: Store) -> AsyncIterator[Consumer]:
    """A consumer running its loop, with the streams created before the test publishes."""
    consumer = Consumer(settings(nats_server), store)
    await consumer.connect()
    task = asyncio.create_task(consumer.run())
    yield consumer
    consumer.stop()
    await task
    await consumer.close()


async def consumer_info(server: NatsServer, durable: str = "collector") -> ConsumerInfo:
    nc = await nats.connect(server.url)
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(USAGE_STREAM, durable)
        return info
    finally:
        await nc.close()


async def test_a_record_published_twice_with_one_msg_id_lands_once(
    nats_server: NatsServer,
    running: Consumer,
    store: Store,
    publish: Publish,
    known: list[UsageRecord],
    until: Until,
) -> None:
    await publish(nats_server.url, known + known)
    await until(lambda: running.stats.received >= len(known))
    await asyncio.sleep(0.3)  # a second copy, had NATS let one through, would arrive by now
    assert running.stats.received == len(known)
    assert store.count() == len(known)


async def test_a_replay_with_a_new_msg_id_is_absorbed_by_the_primary_key(
    nats_server: NatsServer,
    running: Consumer,
    store: Store,
    publish: Publish,
    known: list[UsageRecord],
    until: Until,
) -> None:
    await publish(nats_server.url, known)
    await publish(nats_server.url, known, msg_ids=[f"replay-{r.id}" for r in known])
    await until(lambda: running.stats.received == 2 * len(known))
    assert running.stats.duplicates == len(known)
    assert store.count() == len(known)


async def test_a_batch_redelivered_after_a_crash_between_commit_and_ack_counts_once(
    nats_server: NatsServer,
    store: Store,
    publish: Publish,
    known: list[UsageRecord],
    until: Until,
) -> None:
    crashed = Consumer(settings(nats_server), store)
    await crashed.connect()
    await publish(nats_server.url, known)
    msgs = await crashed.fetch()
    outcome = await crashed.store_batch(msgs)  # committed, never acked
    assert (outcome.received, outcome.inserted) == (len(known), len(known))
    await crashed.close()

    restarted = Consumer(settings(nats_server), store)
    task = asyncio.create_task(restarted.run())
    await until(lambda: restarted.stats.received == len(known))
    restarted.stop()
    await task
    await restarted.close()

    assert (restarted.stats.inserted, restarted.stats.duplicates) == (0, len(known))
    assert store.count() == len(known)
    info = await consumer_info(nats_server)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_an_undecodable_message_goes_to_the_dead_letter_stream_with_its_reason(
    nats_server: NatsServer,
    running: Consumer,
    store: Store,
    publish: Publish,
    make_record: MakeRecord,
    until: Until,
) -> None:
    good = [make_record(1), make_record(2)]
    await publish(nats_server.url, [good[0], b'{"ts_ms": "not a number"}', good[1]])
    await until(lambda: running.stats.received == 3)
    assert running.stats.dead_letters == 1
    assert store.count() == 2

    nc = await nats.connect(nats_server.url)
    try:
        dead = await nc.jetstream().get_last_msg(DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT)
    finally:
        await nc.close()
    assert dead.data == b'{"ts_ms": "not a number"}'
    assert dead.headers is not None
    assert dead.headers[REASON_HEADER].startswith("undecodable:")
    assert "Expected `int`" in dead.headers[REASON_HEADER]
    assert dead.headers[SUBJECT_HEADER] == "sidegate.usage.acme"
    assert dead.headers[SEQUENCE_HEADER] == "2"
    info = await consumer_info(nats_server)
    assert info.num_ack_pending == 0


async def test_a_record_the_table_cannot_hold_is_dead_lettered_and_the_rest_stored(
    nats_server: NatsServer,
    running: Consumer,
    store: Store,
    publish: Publish,
    make_record: MakeRecord,
    until: Until,
) -> None:
    batch = [make_record(1), make_record(2, cost_usd=Decimal("NaN")), make_record(3)]
    await publish(nats_server.url, batch)
    await until(lambda: running.stats.received == 3)
    assert running.stats.dead_letters == 1
    assert store.count() == 2


async def test_consuming_resumes_after_the_nats_server_restarts(
    nats_server: NatsServer,
    running: Consumer,
    store: Store,
    publish: Publish,
    make_record: MakeRecord,
    until: Until,
) -> None:
    await publish(nats_server.url, [make_record(1)])
    await until(lambda: store.count() == 1)
    nats_server.stop()
    await asyncio.sleep(0.3)
    await asyncio.to_thread(nats_server.start)
    await until(lambda: running.stats.reconnects >= 1)
    await publish(nats_server.url, [make_record(2), make_record(3)])
    await until(lambda: store.count() == 3, timeout_s=15)
    await until(lambda: running.ready)


async def test_stop_returns_promptly_while_nats_is_unreachable(
    nats_server: NatsServer, store: Store
) -> None:
    nats_server.stop()
    consumer = Consumer(settings(nats_server), store)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.5)
    assert not consumer.ready
    consumer.stop()
    await asyncio.wait_for(task, timeout=3)
    await consumer.close()
