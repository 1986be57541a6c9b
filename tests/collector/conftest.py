"""Collector fixtures: a store in a temp folder, a known data set, a JetStream publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from collector.record import USAGE_SUBJECT_PREFIX, Decision, UsageRecord, record_encoder
from collector.store import Store

DAY1_MS = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp()) * 1000
DAY2_MS = DAY1_MS + 86_400_000
HOUR_MS = 3_600_000

Publish = Callable[..., Awaitable[None]]


def record(n: int, **fields: object) -> UsageRecord:
    values: dict[str, object] = {"id": f"req-{n:05d}", "ts_ms": DAY1_MS + n * 1000}
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


def known_records() -> list[UsageRecord]:
    """Eight requests over two days plus one a week earlier, with hand-checked sums:
    acme/chat/support/gpt-4o  day1: 3 req, spend 0.0375, in 3000, out 600, cached 300, 1 error
    acme/chat/support/gpt-4o-mini day1: 2 req, spend 0.00045, in 200, out 40
    globex/batch/etl/gpt-4o-mini day1: 1 unpriced req (in 500) + 1 denied (cost 0)
    acme/chat/support/gpt-4o  day2: 1 req, spend 0.5, in 10000, out 2000, reasoning 700
    """
    acme = {"tenant": "acme", "app": "chat", "endpoint": "support", "provider": "openai"}
    globex = {"tenant": "globex", "app": "batch", "endpoint": "etl", "provider": "openai"}
    big = {"model_resolved": "gpt-4o", "model_served": "gpt-4o-2024-08-06"}
    small = {"model_resolved": "gpt-4o-mini"}
    tokens = {"input_tokens": 1000, "output_tokens": 200, "cached_input_tokens": 100}
    denial = Decision(
        stage="models",
        rule="batch-cheap",
        mode="enforce",
        outcome="denied",
        reason="model gpt-4o not allowed",
    )
    warning = Decision(
        stage="caps",
        rule="default",
        mode="warn",
        outcome="would_deny",
        reason="max_tokens above 4096",
    )
    return [
        record(1, **acme, **big, **tokens, cost_usd=Decimal("0.0125"), user="ann"),
        record(
            2, **acme, **big, **tokens, cost_usd=Decimal("0.0125"), user="bob", decisions=[warning]
        ),
        record(
            3,
            **acme,
            **big,
            **tokens,
            cost_usd=Decimal("0.0125"),
            user="ann",
            outcome="error",
            error_class="upstream_error",
            status_code=502,
        ),
        record(4, **acme, **small, input_tokens=100, output_tokens=20, cost_usd=Decimal("0.00015")),
        record(5, **acme, **small, input_tokens=100, output_tokens=20, cost_usd=Decimal("0.0003")),
        record(6, **globex, **small, input_tokens=500, cost_usd=None),
        record(
            7,
            **globex,
            **small,
            outcome="denied",
            error_class="permission",
            status_code=403,
            cost_usd=Decimal(0),
            decisions=[denial],
        ),
        record(
            8,
            **acme,
            **big,
            ts_ms=DAY2_MS + 5 * HOUR_MS,
            input_tokens=10_000,
            output_tokens=2000,
            reasoning_tokens=700,
            cost_usd=Decimal("0.5"),
        ),
        record(9, **acme, **big, ts_ms=DAY1_MS - 7 * 86_400_000, cost_usd=Decimal("99")),
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "usage.duckdb"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store.open(db_path) as opened:
        yield opened


@pytest.fixture
def publish() -> Publish:
    """Publish records (or raw payloads) to JetStream with Nats-Msg-Id = record id."""

    async def send(
        url: str,
        items: Sequence[UsageRecord | bytes],
        *,
        msg_ids: Sequence[str] | None = None,
        subject: str = f"{USAGE_SUBJECT_PREFIX}.acme",
    ) -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for i, item in enumerate(items):
                data = item if isinstance(item, bytes) else record_encoder.encode(item)
                msg_id = msg_ids[i] if msg_ids else getattr(item, "id", f"raw-{i}")
                await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        finally:
            await nc.close()

    return send


async def wait_until(check: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def until() -> Callable[..., Awaitable[None]]:
    return wait_until


@pytest.fixture
def known() -> list[UsageRecord]:
    return known_records()


@pytest.fixture
def make_record() -> Callable[..., UsageRecord]:
    return record
