"""Delivery without loss or double counting, proven on real processes under steady load.

Each test breaks one piece of the usage plane while a sidecar serves traffic, then requires
every served request (its x-request-id is the record id) to be in DuckDB exactly once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from usage_kit import Load, UsageStack, assert_exactly_once, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[UsageStack]:
    running = UsageStack(tmp_path).start()
    try:
        yield running
    finally:
        running.stop()


def _settle(stack: UsageStack, served: list[str], *, timeout_s: float = 30.0) -> None:
    """Wait for the collector to store what was served, then stop everything."""
    wait_until(
        lambda: stack.stored() >= len(served), timeout_s=timeout_s, what="rows for every request"
    )
    stack.stop()


def test_a_collector_killed_mid_batch_and_restarted_loses_and_doubles_nothing(
    stack: UsageStack,
) -> None:
    load = Load(stack.sidecar_url).start()
    wait_until(lambda: stack.stored() > 50, what="ingestion under load")
    # SIGKILL at three moments of the batch cycle: fetched, committed or acked; whatever was
    # not acked comes back after ack_wait and must be stored once.
    for pause_s in (0.0, 0.3, 0.7):
        stack.kill("collector")
        time.sleep(0.5)
        stack.start_collector()
        time.sleep(pause_s)
    time.sleep(1.0)
    served = load.stop()
    _settle(stack, served)
    assert not load.failures
    assert_exactly_once(stack, served)


def test_a_nats_server_restart_under_load_loses_and_doubles_nothing(stack: UsageStack) -> None:
    load = Load(stack.sidecar_url).start()
    wait_until(lambda: stack.stored() > 30, what="ingestion under load")
    stack.nats.stop()
    stack.nats.start()  # same store folder: the stream and the durable consumer survive
    time.sleep(2.0)
    served = load.stop()
    _settle(stack, served)
    assert not load.failures
    assert_exactly_once(stack, served)


def test_records_served_while_nats_is_down_arrive_once_it_is_back(stack: UsageStack) -> None:
    load = Load(stack.sidecar_url).start()
    wait_until(lambda: stack.stored() > 30, what="ingestion under load")
    stack.nats.stop()
    time.sleep(3.0)  # requests go on being served; their records go to the sidecar's spool
    assert stack.spool().stat().st_size > 0
    stack.nats.start()
    time.sleep(1.5)
    served = load.stop()
    _settle(stack, served)
    assert not load.failures
    assert_exactly_once(stack, served)
    assert stack.spool().stat().st_size == 0


def test_a_sidecar_stopped_with_records_pending_drains_them_within_its_grace_period(
    stack: UsageStack,
) -> None:
    stack.nats.stop()
    load = Load(stack.sidecar_url).start()
    time.sleep(2.0)
    served = load.stop()
    assert stack.spool().stat().st_size > 0, "the records should be waiting in the spool"
    sidecar = stack.kill("sidecar", signal.SIGTERM)
    time.sleep(1.0)
    assert sidecar.poll() is None, "the sidecar should wait for NATS within its grace period"
    stack.nats.start()
    assert sidecar.wait(25) == 0
    assert stack.spool().stat().st_size == 0
    _settle(stack, served)
    assert_exactly_once(stack, served)
