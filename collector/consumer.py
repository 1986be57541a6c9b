"""The JetStream durable pull consumer that moves usage records from NATS into the store.

Per batch: decode, dead-letter what cannot be stored, insert the rest in one transaction,
commit, and only then ack. A crash before the ack redelivers the batch; the store's dedup
(store.py) turns the second insert into a no-op, so nothing is lost and nothing counts twice.

Acks are AckExplicit, one `+ACK` per message after the commit, written for the whole batch in
one go (jetstream.Client.ack), so they cost far less than the insert, and unlike AckAll
they stay correct when several collectors share the durable and their deliveries interleave.
While one batch is stored on the writer thread, the next is fetched: NATS parsing and DuckDB
work overlap, and batches still commit and ack strictly in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Final, TypeVar

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from collector.ingest import prepare
from collector.jetstream import Client, Layout, Puller, ensure_layout
from collector.record import DEAD_LETTER_SUBJECT, USAGE_STREAM
from collector.store import Store

REASON_HEADER: Final = "Sidegate-Dead-Letter-Reason"
SUBJECT_HEADER: Final = "Sidegate-Original-Subject"
SEQUENCE_HEADER: Final = "Sidegate-Original-Sequence"

_T = TypeVar("_T")
log = structlog.get_logger("sidegate.collector")


class ConsumerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    durable: str = "collector"
    # Messages per fetch and per transaction: DuckDB pays per statement and per commit, so a
    # batch of 5000 stores several times faster per record than one of 1000.
    batch_size: int = 5000
    # A fetch returns when its batch is full or after this long, so under light load a record
    # is queryable within about this delay; it also bounds how long a graceful stop waits.
    fetch_timeout_s: float = 0.25
    ack_wait_s: float = 30.0
    duplicate_window_s: float = 300.0
    stream_max_age_s: float = 7 * 86_400
    dead_letter_max_age_s: float = 30 * 86_400

    def layout(self) -> Layout:
        return Layout(
            durable=self.durable,
            ack_wait_s=self.ack_wait_s,
            max_ack_pending=self.batch_size * 4,
            duplicate_window_s=self.duplicate_window_s,
            stream_max_age_s=self.stream_max_age_s,
            dead_letter_max_age_s=self.dead_letter_max_age_s,
        )


class ConsumerStats(msgspec.Struct, kw_only=True):
    """Counters for /healthz and tests; plain ints, only touched from the event loop."""

    batches: int = 0
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batch_errors: int = 0
    fetch_errors: int = 0
    reconnects: int = 0


class BatchOutcome(msgspec.Struct, frozen=True):
    received: int
    inserted: int
    duplicates: int
    dead_letters: int
    commit_s: float = 0.0  # the insert transaction, commit included


class Consumer:
    """Pulls usage records in batches until `stop()`; survives NATS restarts and reconnects."""

    def __init__(self, settings: ConsumerSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.stats = ConsumerStats()
        # Called with each stored batch's outcome, on the event loop (metrics); must not block.
        self.batch_observers: list[Callable[[BatchOutcome], None]] = []
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._puller: Puller | None = None
        self._rebind = True  # set when the server may have lost our stream or consumer
        self._stopping = asyncio.Event()
        # One thread owns every write: DuckDB serialises writers anyway, and batches must
        # commit in order before their acks go out.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-db")

    @property
    def ready(self) -> bool:
        return not self._rebind and self._nc is not None and self._nc.is_connected

    async def connect(self) -> None:
        """Connect, create the streams and durable consumer if missing, and start pulling."""
        if self._nc is None:
            self._nc = Client()
            await self._nc.connect(
                self.settings.nats_url,
                name="sidegate-collector",
                max_reconnect_attempts=-1,  # a collector outlives any NATS restart
                reconnect_time_wait=1,
                reconnected_cb=self._on_reconnected,
                disconnected_cb=self._on_disconnected,
                error_cb=self._on_error,
            )
            self._js = self._nc.jetstream()
        assert self._js is not None
        if self._puller is not None:
            old, self._puller = self._puller, None
            with contextlib.suppress(nats.errors.Error):  # the connection may have dropped it
                await old.close()
        await ensure_layout(self._js, self.settings.layout())
        puller = Puller(self._nc, stream=USAGE_STREAM, consumer=self.settings.durable)
        await puller.start()
        self._puller = puller
        self._rebind = False

    async def fetch(self) -> list[Msg]:
        """One pull of up to batch_size messages; [] when none arrived within the timeout."""
        if self._rebind or self._puller is None:
            await self._connect_unless_stopped()
            if self._puller is None:
                return []  # stopped while NATS was unreachable
        return await self._puller.fetch(
            self.settings.batch_size, expires_s=self.settings.fetch_timeout_s
        )

    async def store_batch(self, msgs: list[Msg]) -> BatchOutcome:
        """Dead-letter what cannot be stored, insert the rest, commit. Does not ack."""
        prepared = await self._in_db(
            partial(prepare, min_ts_ms=self.store.raw_since_ms), [m.data for m in msgs]
        )
        for index, reason in prepared.dead:
            await self._dead_letter(msgs[index], reason)
        started = time.perf_counter()
        inserted = await self._in_db(self.store.insert_arrow, prepared.table)
        commit_s = time.perf_counter() - started
        if prepared.dead:
            log.warning(
                "collector.dead_letters",
                count=len(prepared.dead),
                first_reason=prepared.dead[0][1][:300],
                subject=DEAD_LETTER_SUBJECT,
            )
        outcome = BatchOutcome(
            received=len(msgs),
            inserted=inserted,
            duplicates=prepared.table.num_rows - inserted,
            dead_letters=len(prepared.dead),
            commit_s=commit_s,
        )
        self.stats.batches += 1
        self.stats.received += outcome.received
        self.stats.inserted += outcome.inserted
        self.stats.duplicates += outcome.duplicates
        self.stats.dead_letters += outcome.dead_letters
        for observe in self.batch_observers:
            observe(outcome)
        return outcome

    async def ack(self, msgs: list[Msg]) -> None:
        if isinstance(self._nc, Client):
            await self._nc.ack(msgs)  # one write for the batch
            return
        for msg in msgs:
            await msg.ack()

    async def run(self) -> None:
        """Fetch, store, ack until `stop()`; the batch in hand is always finished first."""
        backoff_s = 0.1
        storing: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await self.fetch()
                # Boundary: the NATS loop. Any failure here (server gone, consumer deleted,
                # connection closed mid-pull) is retried after a pause, never fatal.
                except Exception as exc:  # noqa: BLE001
                    self.stats.fetch_errors += 1
                    self._rebind = True
                    log.warning("collector.fetch_failed", error=repr(exc), retry_in_s=backoff_s)
                    await self._pause(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    continue
                backoff_s = 0.1
                if storing is not None:
                    await storing  # keeps commits, and so acks, in batch order
                    storing = None
                if msgs:
                    storing = asyncio.create_task(self._store_and_ack(msgs))
        finally:
            if storing is not None:
                await storing

    def stop(self) -> None:
        self._stopping.set()

    async def lag(self, *, timeout_s: float = 2.0) -> tuple[int, int] | None:
        """(not yet delivered, delivered but not acked) messages of the durable, as the server
        counts them; None while not bound to it. One request: for scrapes, not for batches."""
        if self._js is None or self._rebind:
            return None
        info = await self._js.consumer_info(USAGE_STREAM, self.settings.durable, timeout=timeout_s)
        return info.num_pending or 0, info.num_ack_pending or 0

    async def close(self) -> None:
        """Flush outstanding acks and disconnect; call after `run` returned."""
        self._rebind = True
        self._puller = None
        if self._nc is not None and not self._nc.is_closed:
            # Unflushed acks only cause redelivery, which the primary key absorbs.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.flush(timeout=2)
            await self._nc.close()
        self._db.shutdown(wait=True)

    # -- internals ---------------------------------------------------------------------------

    async def _store_and_ack(self, msgs: list[Msg]) -> None:
        try:
            await self.store_batch(msgs)
            await self.ack(msgs)
        # Boundary: the batch loop. Nothing of this batch was acked, so NATS redelivers it
        # after ack_wait; the primary key makes any part already stored harmless.
        except Exception:
            self.stats.batch_errors += 1
            log.exception("collector.batch_failed", messages=len(msgs))
            await self._pause(1.0)

    async def _in_db(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _connect_unless_stopped(self) -> None:
        # With unlimited reconnects, nats.connect waits for a server forever; a stop must not.
        connecting = asyncio.ensure_future(self.connect())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            return
        connecting.result()  # re-raise a failed connect into the NATS loop

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        assert self._js is not None
        seq = msg.metadata.sequence.stream
        headers = {
            REASON_HEADER: reason.replace("\r", " ").replace("\n", " ")[:1000],
            SUBJECT_HEADER: msg.subject,
            SEQUENCE_HEADER: str(seq),
            # A redelivered bad message is dead-lettered once, not once per delivery.
            "Nats-Msg-Id": f"{USAGE_STREAM}:{seq}",
        }
        # Awaits the stream's ack: the original is acked only once its copy is stored.
        await self._js.publish(DEAD_LETTER_SUBJECT, msg.data, headers=headers)

    async def _on_disconnected(self) -> None:
        if not self._stopping.is_set():  # closing on stop disconnects too; that is no news
            log.warning("collector.nats_disconnected")

    async def _on_reconnected(self) -> None:
        # The server may have come back without our stream or consumer: rebuild on next fetch.
        self.stats.reconnects += 1
        self._rebind = True
        log.info("collector.nats_reconnected")

    async def _on_error(self, exc: Exception) -> None:
        log.warning("collector.nats_error", error=repr(exc))
