"""Usage emission off the request path: JetStream with dedup ids, a bounded disk spool behind it.

`emit()` is synchronous and never blocks or fails a request: it encodes the record and queues
it. A background task publishes with `Nats-Msg-Id` = record id and waits for the stream's
acknowledgement; whatever is not acknowledged goes to the spool file and is replayed later with
the same ids, so JetStream's duplicate window (and the collector's dedup beyond it) keep a
replay from counting twice. A full spool counts and logs what it cannot keep. On shutdown,
`drain` publishes the queue and the spool within the grace period; a batch cut short by the
shutdown goes to the spool, which the next start replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import deque
from functools import partial
from pathlib import Path

import structlog

from collector.record import USAGE_SUBJECT_PREFIX, UsageRecord, record_encoder
from sidecar.natslink import NatsLink

log = structlog.get_logger("sidegate.sidecar.usage")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_COALESCE_S = 0.005
Item = tuple[str, str, bytes]  # subject, record id, encoded record


class Spool:
    """An append-only file of unacknowledged records, one `subject id json` line each.

    The event loop appends while a worker thread rewrites the file after a replay; one lock
    orders the two, and a rewrite keeps whatever was appended after the replay read the file.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.overflowed = 0  # records lost because the spool was full (or the disk failed)
        self._lock = threading.Lock()
        self._last_overflow_log = 0.0
        self._unlogged = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.size = self._recover()
        # Unix time the oldest spooled record has waited since (for the publish-lag gauge); a
        # spool left by an earlier process is dated by its last write, a lower bound.
        self.oldest_at: float | None = path.stat().st_mtime if self.size else None

    def _recover(self) -> int:
        """The file's size after cutting a line a crash left half-written (its record never
        reached the spool whole, so it is counted as lost)."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)
            self.overflowed += 1
            log.error("usage_spool_truncated", lost_bytes=len(data) - keep)
            return keep
        return len(data)

    def __len__(self) -> int:
        return self.size

    def append(self, items: list[Item]) -> None:
        lines = []
        lost = 0
        with self._lock:
            for subject, record_id, data in items:
                line = b"%s %s %s\n" % (subject.encode(), record_id.encode(), data)
                if self.size + len(line) > self.max_bytes:
                    lost += 1
                    continue
                lines.append(line)
                self.size += len(line)
            if lines:
                try:
                    with self.path.open("ab") as f:
                        f.write(b"".join(lines))
                except OSError as exc:
                    # A full or failing disk: these records are lost too, and said so.
                    log.error("usage_spool_write_failed", error=str(exc), records=len(lines))
                    lost += len(lines)
                    self.size = self.path.stat().st_size if self.path.exists() else 0
                    lines = []
            if lines and self.oldest_at is None:
                self.oldest_at = time.time()
        if lost:
            self._overflow(lost)

    def _overflow(self, lost: int) -> None:
        """Count lost records; log at most once a second, with the count since the last line."""
        self.overflowed += lost
        self._unlogged += lost
        now = time.monotonic()
        if now - self._last_overflow_log >= 1.0:
            log.error(
                "usage_spool_full",
                lost=self._unlogged,
                overflowed_total=self.overflowed,
                spool_bytes=self.size,
                max_bytes=self.max_bytes,
            )
            self._last_overflow_log = now
            self._unlogged = 0

    def read(self) -> list[Item]:
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[Item], int]:
        """Every spooled record, and the file offset they end at."""
        with self._lock:
            if not self.size:
                return [], 0
            data = self.path.read_bytes()
        items = []
        for line in data.splitlines():
            parts = line.split(b" ", 2)
            if len(parts) != 3:
                log.error("usage_spool_bad_line", size=len(line))
                continue
            subject, record_id, payload = parts
            items.append((subject.decode(), record_id.decode(), payload))
        return items, len(data)

    def replace(self, items: list[Item], *, upto: int | None = None) -> None:
        """Keep only `items` (those still unacknowledged) in place of the file's first `upto`
        bytes, and everything appended after them; atomically."""
        with self._lock:
            tail = b""
            if upto is not None and self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(upto)
                    tail = f.read()
            tmp = self.path.with_suffix(".tmp")
            head = b"".join(b"%s %s %s\n" % (s.encode(), i.encode(), d) for s, i, d in items)
            tmp.write_bytes(head + tail)
            tmp.replace(self.path)
            self.size = len(head) + len(tail)
            if not self.size:
                self.oldest_at = None


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
        self._queued_at: deque[float] = deque()  # unix time of each queued item, same order
        self._wake = asyncio.Event()
        self._subjects: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # One replay at a time: two would read the same lines and rewrite the file twice.
        self._replaying = asyncio.Lock()
        self.published = 0
        self.spooled = 0

    def emit(self, record: UsageRecord) -> None:
        subject = self._subjects.get(record.tenant)
        if subject is None:
            token = _UNSAFE.sub("_", record.tenant)[:64] or "_"
            subject = self._subjects.setdefault(record.tenant, f"{USAGE_SUBJECT_PREFIX}.{token}")
        self._queue.append((subject, record.id, record_encoder.encode(record)))
        self._queued_at.append(time.time())
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def publish_lag_s(self, now: float) -> float:
        """How long the oldest record not yet acknowledged by JetStream has waited (0 if none);
        a batch in flight is not counted, for at most its publish timeout."""
        queued = self._queued_at[0] if self._queued_at else None
        waiting = [t for t in (queued, self.spool.oldest_at) if t is not None]
        return max(0.0, now - min(waiting)) if waiting else 0.0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="usage-publish"),
            asyncio.create_task(self._replay_loop(), name="usage-replay"),
        ]

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Let records from concurrent requests gather: one wake-up and one round of
            # publishes per few milliseconds instead of one per request. Usage waits a
            # little; requests never do.
            await asyncio.sleep(_COALESCE_S)
            self._wake.clear()
            try:
                await self._flush_queue()
            # Boundary: the publish task must outlive any one failure, or usage would queue
            # in memory until the process ends.
            except Exception:
                log.exception("usage_publish_loop_failed")

    async def _flush_queue(self) -> None:
        while self._queue:
            size = min(len(self._queue), 512)
            batch = [self._queue.popleft() for _ in range(size)]
            for _ in range(size):
                self._queued_at.popleft()
            try:
                failed = await self._publish(batch) if self.link.is_connected else batch
            except BaseException:
                # Cancelled (shutdown) or failed with the batch in hand: spool all of it. Some
                # may have reached the stream; their replay carries the same ids.
                self.spooled += len(batch)
                self.spool.append(batch)
                raise
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
                try:
                    await self.replay()
                # Boundary: a failed replay leaves the spool as it was; the next turn retries.
                except Exception:
                    log.exception("usage_replay_failed")

    async def replay(self) -> int:
        """Publish spooled records again, keeping those still unacknowledged; returns sent."""
        async with self._replaying:
            items, upto = await asyncio.to_thread(self.spool.snapshot)
            if not items:
                return 0
            failed = await self._publish(items)
            await asyncio.to_thread(partial(self.spool.replace, failed, upto=upto))
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
            self._queued_at.clear()
            log.warning("usage_drain_incomplete", spool_bytes=len(self.spool))
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
