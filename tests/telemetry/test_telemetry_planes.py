"""The collector's and policyd's /metrics on real NATS, moving as records and bundles flow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from telemetry_kit import policy_folder, value, wait_until

from collector.consumer import ConsumerSettings
from collector.record import USAGE_SUBJECT_PREFIX, UsageRecord, record_encoder
from collector.service import Collector, CollectorSettings
from policyd.bundle import STATUS_BUCKET
from policyd.publisher import PolicyStore
from policyd.service import ServiceOptions, serve
from policyd.status import SidecarStatus, encode_status, status_key
from sidegate.natsd import NatsServer, free_port


async def scrape(url: str) -> dict[str, list[Sample]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.fixture
async def collector(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Collector]:
    settings = CollectorSettings(
        db_path=str(tmp_path / "usage.duckdb"),
        state_dir=str(tmp_path),
        http_port=0,
        consumer=ConsumerSettings(nats_url=nats_server.url, fetch_timeout_s=0.2),
    )
    running = Collector(settings)
    await running.start()
    try:
        await wait_until(lambda: running.consumer is not None and running.consumer.ready)
        yield running
    finally:
        await running.stop()


async def publish(url: str, payloads: list[bytes]) -> None:
    """Without Nats-Msg-Id, so a repeated record reaches the collector as a duplicate."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for data in payloads:
            await js.publish(f"{USAGE_SUBJECT_PREFIX}.acme", data)
    finally:
        await nc.close()


async def test_collector_metrics_count_inserts_duplicates_and_dead_letters(
    collector: Collector, nats_server: NatsServer
) -> None:
    records = [
        record_encoder.encode(UsageRecord(id=f"r-{i}", ts_ms=1_700_000_000_000)) for i in "abc"
    ]
    await publish(nats_server.url, [*records, records[0], b"not a record"])
    consumer = collector.consumer
    assert consumer is not None
    await wait_until(lambda: consumer.stats.received == 5, what="five deliveries")
    metrics = await scrape(collector.url)

    def total(name: str) -> float:
        return value(metrics[name], f"{name}_total")

    assert total("sidegate_collector_records_inserted") == 3
    assert total("sidegate_collector_records_duplicate") == 1
    assert total("sidegate_collector_dead_letters") == 1
    commits = metrics["sidegate_collector_batch_commit_seconds"]
    assert value(commits, "sidegate_collector_batch_commit_seconds_count") == total(
        "sidegate_collector_batches"
    )
    ready = metrics["sidegate_collector_consumer_ready"]
    assert value(ready, "sidegate_collector_consumer_ready") == 1


async def test_collector_reports_the_consumer_backlog_from_the_server(
    collector: Collector, nats_server: NatsServer
) -> None:
    metrics = await scrape(collector.url)

    pending = metrics["sidegate_collector_consumer_pending_messages"]
    assert value(pending, "sidegate_collector_consumer_pending_messages") == 0


async def test_policyd_metrics_show_the_published_revision_and_converged_sidecars(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    port = free_port()
    options = ServiceOptions(
        policy_dir=policy_folder(tmp_path / "policy", "http://fake.invalid"),
        nats_url=nats_server.url,
        insecure_unsigned=True,
        poll_interval_s=0.05,
        metrics_host="127.0.0.1",
        metrics_port=port,
        status_refresh_s=0.05,
    )
    stop = asyncio.Event()
    service = asyncio.create_task(serve(options, stop))
    nc = await nats.connect(nats_server.url)
    try:
        store = await PolicyStore.open(nc.jetstream(), insecure_unsigned=True)
        for _ in range(200):
            latest = await store.latest()
            if latest is not None:
                break
            await asyncio.sleep(0.05)
        assert latest is not None
        status = await nc.jetstream().key_value(STATUS_BUCKET)
        for sidecar, revision in (("a", latest.revision), ("b", 0)):
            report = SidecarStatus(
                sidecar_id=sidecar,
                revision=revision,
                content_hash=latest.content_hash if revision else "",
                seen_at_ms=time.time_ns() // 1_000_000,
            )
            await status.put(status_key(sidecar), encode_status(report))

        async def converged() -> dict[str, list[Sample]]:
            for _ in range(200):
                metrics = await scrape(f"http://127.0.0.1:{port}")
                sidecars = metrics.get("sidegate_policyd_sidecars", [])
                if any(s.labels["state"] == "converged" and s.value == 1 for s in sidecars):
                    return metrics
                await asyncio.sleep(0.05)
            raise AssertionError("policyd never counted the converged sidecar")

        metrics = await converged()
    finally:
        stop.set()
        await nc.close()
        assert await asyncio.wait_for(service, 10) == 0

    revisions = metrics["sidegate_policyd_bundle_revision"]
    assert value(revisions, "sidegate_policyd_bundle_revision") == latest.revision
    applies = metrics["sidegate_policyd_applies"]
    assert value(applies, "sidegate_policyd_applies_total", result="published") == 1
    sidecars = {s.labels["state"]: s.value for s in metrics["sidegate_policyd_sidecars"]}
    assert sidecars == {"converged": 1, "behind": 1, "rejecting": 0, "stale": 0}
    published = metrics["sidegate_policyd_bundle_published_timestamp_seconds"]
    assert value(published, "sidegate_policyd_bundle_published_timestamp_seconds") > 0
