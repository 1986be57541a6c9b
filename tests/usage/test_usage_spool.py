"""The sidecar's usage spool and emitter on a real nats-server: nothing lost, nothing silent."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import structlog
from nats.js import api

from collector.record import (
    USAGE_STREAM,
    USAGE_SUBJECT_PREFIX,
    UsageRecord,
    record_decoder,
    record_encoder,
)
from sidecar.emitter import Item, Spool, UsageEmitter
from sidecar.natslink import NatsLink
from sidegate.natsd import NatsServer


def item(n: int) -> Item:
    record = UsageRecord(id=f"r{n:04d}", ts_ms=n)
    return (f"{USAGE_SUBJECT_PREFIX}.acme", record.id, record_encoder.encode(record))


def test_a_rewrite_after_replay_keeps_records_spooled_meanwhile(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    spool.append([item(1), item(2)])
    read, upto = spool.snapshot()
    spool.append([item(3)])  # a publish failed while the replay was in flight
    spool.replace([read[1]], upto=upto)  # the replay sent r0001, r0002 is still unacked
    assert [i[1] for i in spool.read()] == ["r0002", "r0003"]
    assert len(spool) == (tmp_path / "spool.jsonl").stat().st_size


def test_a_line_cut_short_by_a_crash_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    Spool(path, max_bytes=1 << 20).append([item(1)])
    with path.open("ab") as f:
        f.write(b'sidegate.usage.acme r0002 {"id":')  # the process died mid-write
    spool = Spool(path, max_bytes=1 << 20)
    assert spool.overflowed == 1
    spool.append([item(3)])
    assert [i[1] for i in spool.read()] == ["r0001", "r0003"]


def test_a_full_spool_counts_every_lost_record_and_says_so_in_the_log(tmp_path: Path) -> None:
    one = len(b"%s %s %s\n" % (item(0)[0].encode(), b"r0000", item(0)[2]))
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=3 * one)
    with structlog.testing.capture_logs() as logs:
        spool.append([item(n) for n in range(5)])
        spool.append([item(n) for n in range(5, 8)])
    assert len(spool.read()) == 3
    assert spool.overflowed == 5
    full = [e for e in logs if e["event"] == "usage_spool_full"]
    assert full[0]["lost"] == 2 and full[0]["log_level"] == "error"
    assert len(full) == 1, "a burst is reported once a second, not once a record"


@pytest.fixture
async def emitter(
    nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[tuple[UsageEmitter, NatsServer]]:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(
        api.StreamConfig(name=USAGE_STREAM, subjects=[f"{USAGE_SUBJECT_PREFIX}.>"])
    )
    await nc.close()
    link = NatsLink(nats_server.url)
    link.start()
    await asyncio.wait_for(link.connected(), 10)
    running = UsageEmitter(
        link, Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20), publish_timeout_s=0.5,
        replay_interval_s=0.2,
    )  # fmt: skip
    running.start()
    yield running, nats_server
    await running.stop()
    await link.close()


async def stream_ids(server: NatsServer) -> list[str]:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(USAGE_STREAM)
        ids = []
        for seq in range(1, (info.state.last_seq or 0) + 1):
            msg = await js.get_msg(USAGE_STREAM, seq)
            ids.append(record_decoder.decode(msg.data or b"").id)
        return ids
    finally:
        await nc.close()


async def test_a_batch_cut_short_by_shutdown_is_kept_in_the_spool(
    emitter: tuple[UsageEmitter, NatsServer],
) -> None:
    running, server = emitter
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # publishes now wait for an ack that never comes
    try:
        for n in range(5):
            running.emit(record_decoder.decode(item(n)[2]))
        await asyncio.sleep(0.1)
        assert running.pending == 0, "the batch is in flight"
        await running.stop()  # shutdown cancels the publish task mid-batch
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert sorted(i[1] for i in running.spool.read()) == [f"r{n:04d}" for n in range(5)]


async def test_records_spooled_while_nats_is_down_are_replayed_once_with_their_ids(
    emitter: tuple[UsageEmitter, NatsServer],
) -> None:
    running, server = emitter
    running.emit(record_decoder.decode(item(0)[2]))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(server.stop)
    for n in range(1, 4):
        running.emit(record_decoder.decode(item(n)[2]))
    await asyncio.sleep(0.3)
    assert len(running.spool) > 0
    await asyncio.to_thread(server.start)
    for _ in range(100):
        if not len(running.spool):
            break
        await asyncio.sleep(0.1)
    assert len(running.spool) == 0
    assert sorted(await stream_ids(server)) == [f"r{n:04d}" for n in range(4)]


async def test_drain_waits_for_nats_within_the_grace_period(
    emitter: tuple[UsageEmitter, NatsServer],
) -> None:
    running, server = emitter
    await asyncio.to_thread(server.stop)
    for n in range(3):
        running.emit(record_decoder.decode(item(n)[2]))
    draining = asyncio.ensure_future(running.drain(10))
    await asyncio.sleep(0.5)
    assert not draining.done()
    await asyncio.to_thread(server.start)
    assert await asyncio.wait_for(draining, 10)
    assert sorted(await stream_ids(server)) == [f"r{n:04d}" for n in range(3)]
