"""Usage emission off the request path: JetStream with dedup ids, a bounded disk spool behind it.

`emit()` is synchronous and never blocks or fails a request: it encodes the record and queues
it. A background task publishes with `Nats-Msg-Id` = record id and waits for the stream's
acknowledgement; whatever is not acknowledged goes to the spool file and is replayed later with
the same ids, so JetStream's duplicate window (and the collector's primary key beyond it) keep
a replay from counting twice. A full spool counts and logs what it cannot keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from pathlib import Path

import structlog

from collector.record import USAGE_SUBJECT_PREFIX, UsageRecord, record_encoder
from sidecar.natslink import NatsLink

log = structlog.get_logger("sidegate.sidecar.usage")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
Item = tuple[str, str, bytes]  # subject, record id, encoded record


class Spool:
    """An append-only file of unacknowledged records, one `subject id json` line each."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.overflowed = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.size = path.stat().st_size if path.exists() else 0

    def __len__(self) -> int:
        return self.size

    def append(self, items: list[Item]) -> None:
        lines = []
        for subject, record_id, data in items:
            line = b"%s %s %s\n" % (subject.encode(), record_id.encode(), data)
            if self.size + len(line) > self.max_bytes:
                self.overflowed += 1
                log.error("usage_spool_full", record_id=record_id, overflowed=self.overflowed)
                continue
            lines.append(line)
            self.size += len(line)
        if lines:
            with self.path.open("ab") as f:
                f.write(b"".join(lines))

    def read(self) -> list[Item]:
        if not self.size:
            return []
        items = []
        for line in self.path.read_bytes().splitlines():
            subject, record_id, data = line.split(b" ", 2)
            items.append((subject.decode(), record_id.decode(), data))
        return items

    def replace(self, items: list[Item]) -> None:
        """Keep only `items` (those still unacknowledged), atomically."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(b"%s %s %s\n" % (s.encode(), i.encode(), d) for s, i, d in items))
        tmp.replace(self.path)
        self.size = self.path.stat().st_size


class UsageEmitter:
    def __init__(
        self,
        link: NatsLink,
        spool: Spool,
        *,
        max_in_flight: int = 128,
        publish_timeout_s: float = 2.0,
        replay_interval_s: float = 2.0,
    ) -> None:
        self.link = link
        self.spool = spool
        self.max_in_flight = max_in_flight
        self.publish_timeout_s = publish_timeout_s
        self.replay_interval_s = replay_interval_s
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._subjects: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.spooled = 0

    def emit(self, record: UsageRecord) -> None:
        subject = self._subjects.get(record.tenant)
        if subject is None:
            token = _UNSAFE.sub("_", record.tenant)[:64] or "_"
            subject = self._subjects.setdefault(record.tenant, f"{USAGE_SUBJECT_PREFIX}.{token}")
        self._queue.append((subject, record.id, record_encoder.encode(record)))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="usage-publish"),
            asyncio.create_task(self._replay_loop(), name="usage-replay"),
        ]

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_queue()

    async def _flush_queue(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 512))]
            failed = await self._publish(batch) if self.link.is_connected else batch
            if failed:
                self.spooled += len(failed)
                self.spool.append(failed)

    async def _publish(self, items: list[Item]) -> list[Item]:
        """Publish with bounded concurrency; returns the items JetStream did not acknowledge."""
        js = (await self.link.connected()).jetstream()
        failed: list[Item] = []
        for start in range(0, len(items), self.max_in_flight):
            chunk = items[start : start + self.max_in_flight]
            results = await asyncio.gather(
                *(
                    js.publish(
                        subject, data, timeout=self.publish_timeout_s,
                        headers={"Nats-Msg-Id": record_id},
                    )
                    for subject, record_id, data in chunk
                ),
                return_exceptions=True,
            )  # fmt: skip
            for item, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(item)
                else:
                    self.published += 1
        if failed:
            log.warning("usage_publish_failed", count=len(failed))
        return failed

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self.replay_interval_s)
            if len(self.spool) and self.link.is_connected:
                await self.replay()

    async def replay(self) -> int:
        """Publish spooled records again, keeping those still unacknowledged; returns sent."""
        items = await asyncio.to_thread(self.spool.read)
        if not items:
            return 0
        failed = await self._publish(items)
        await asyncio.to_thread(self.spool.replace, failed)
        sent = len(items) - len(failed)
        if sent:
            log.info("usage_spool_replayed", sent=sent, remaining=len(failed))
        return sent

    async def drain(self, timeout_s: float) -> bool:
        """On shutdown: publish the queue and the spool within the grace period."""

        async def _drain() -> None:
            await self._flush_queue()
            while len(self.spool):
                await self.link.connected()
                await self.replay()
                if len(self.spool):
                    await asyncio.sleep(0.2)

        try:
            await asyncio.wait_for(_drain(), timeout_s)
        except TimeoutError:
            # Whatever is left stays in the spool file and is replayed by the next start.
            self.spool.append(list(self._queue))
            self._queue.clear()
            log.warning("usage_drain_incomplete", spool_bytes=len(self.spool))
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
