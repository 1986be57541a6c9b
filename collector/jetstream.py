"""JetStream for the collector: its streams, its durable consumer, and a lean batch puller.

nats-py's `PullSubscription.fetch` awaits each message of a batch in turn, and its client parses
every delivery's headers into a dict and passes it through a queue and a task; at ~600-byte
records that per-message Python, not the server, capped a collector at 15-20k records/s. `Puller`
sends the pull request itself (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, the documented
wire API), and `Client` hands deliveries to its inbox straight from the protocol parser to a
list, reading only the status line of their headers. Streams and the consumer are still
created and configured through nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from collector.record import DEAD_LETTER_SUBJECT, USAGE_STREAM, USAGE_SUBJECT_PREFIX

DEAD_LETTER_STREAM: Final = "SIDEGATE_DEADLETTER"


class Layout(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the streams and the durable consumer are made when they do not exist yet."""

    durable: str = "collector"
    ack_wait_s: float = 30.0  # an unacked batch comes back after this long
    max_ack_pending: int = 4_000  # room for the batch being stored and the one being fetched
    duplicate_window_s: float = 300.0  # sidecar spool replays inside it are dropped by NATS
    stream_max_age_s: float = 7 * 86_400  # the stream keeps a week, so a new store can replay
    dead_letter_max_age_s: float = 30 * 86_400


async def ensure_layout(js: JetStreamContext, layout: Layout) -> None:
    """Create whichever of the two streams and the durable consumer is missing; keep the rest.

    Existing ones are left as they are: a sidecar or another collector may have made them, and
    changing a live stream's settings is an operator's decision.
    """
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=USAGE_STREAM,
            subjects=[f"{USAGE_SUBJECT_PREFIX}.>"],
            duplicate_window=layout.duplicate_window_s,
            max_age=layout.stream_max_age_s,
            storage=api.StorageType.FILE,
        ),
    )
    await _ensure_stream(
        js,
        api.StreamConfig(
            name=DEAD_LETTER_STREAM,
            subjects=[DEAD_LETTER_SUBJECT],
            duplicate_window=layout.duplicate_window_s,
            max_age=layout.dead_letter_max_age_s,
            storage=api.StorageType.FILE,
        ),
    )
    try:
        await js.consumer_info(USAGE_STREAM, layout.durable)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(
            USAGE_STREAM,
            api.ConsumerConfig(
                durable_name=layout.durable,
                name=layout.durable,
                filter_subject=f"{USAGE_SUBJECT_PREFIX}.>",
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=layout.ack_wait_s,
                max_deliver=-1,  # never given up on; what cannot be stored is dead-lettered
                max_ack_pending=layout.max_ack_pending,
            ),
        )


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Another collector or a sidecar created it first with its own settings; use theirs.
            await js.stream_info(config.name)


_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_HEARTBEAT: Final = "100"
# The request ran out (408) or found nothing (404): an empty batch, not an error.
_QUIET: Final = frozenset({"404", "408"})
# After `expires`, the server answers 408 at once; the margin only covers a lost answer.
_MARGIN_S: Final = 1.0


Sink = Callable[[bytes, bytes, bytes, bytes | None], None]  # subject, reply, data, headers


class Client(NatsClient):
    """nats-py's client, with deliveries to registered subscriptions taken straight from the
    protocol parser: no header dict, no queue, no task switch per message."""

    def __init__(self) -> None:
        super().__init__()
        self._sinks: dict[int, Sink] = {}

    def direct(self, sub: Subscription, sink: Sink) -> None:
        """Deliver `sub`'s messages to `sink` (on the event loop, it must not block)."""
        self._sinks[sub._id] = sink

    async def ack(self, msgs: list[Msg]) -> None:
        """Ack every message with one write: the same `PUB <reply> 0` each `Msg.ack` sends."""
        command = b"".join(b"PUB %s 0\r\n\r\n" % m.reply.encode() for m in msgs if m.reply)
        if command:
            await self._send_command(command)
            await self._flush_pending()
        for m in msgs:
            m._ackd = True

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        sink = self._sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        else:
            sink(subject, reply, data, headers)


_HEADER_LINE_END: Final = b"\r\n"
_NATS_VERSION_LEN: Final = len(b"NATS/1.0")


class PullError(Exception):
    """The server refused the pull: consumer deleted (409), no JetStream responder (503), ..."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"pull refused: {status} {description}".strip())
        self.status = status
        self.description = description


class _PullRequest(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int  # nanoseconds


_encode_request = msgspec.json.Encoder().encode


class Puller:
    """Pulls batches from one durable consumer; `start` before `fetch`, `close` when done."""

    def __init__(self, nc: NatsClient, *, stream: str, consumer: str) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._sub: Subscription | None = None
        # Deliveries that arrive after a fetch gave up waiting are kept for the next fetch,
        # never dropped: dropping one would only delay it until ack_wait, but why wait.
        self._msgs: list[Msg] = []
        self._want = 0
        self._done = asyncio.Event()
        self._refusal: PullError | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        if isinstance(self._nc, Client):
            self._nc.direct(self._sub, self._on_delivery)

    async def fetch(self, batch: int, *, expires_s: float) -> list[Msg]:
        """Up to `batch` messages: returns when the batch is full or the request expires."""
        assert self._sub is not None, "start() first"
        self._refusal = None
        self._want = batch
        self._done.clear()
        if len(self._msgs) < batch:
            request = _PullRequest(batch=batch - len(self._msgs), expires=int(expires_s * 1e9))
            await self._nc.publish(self._subject, _encode_request(request), reply=self._inbox)
            # A timeout means the answer was lost (e.g. a reconnect): return what arrived.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout=expires_s + _MARGIN_S)
        msgs, self._msgs = self._msgs[:batch], self._msgs[batch:]
        if not msgs and self._refusal is not None:
            raise self._refusal
        return msgs

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    def _on_delivery(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # Only a status message has more than the version on its first header line.
        if headers is not None:
            first = headers[: headers.find(_HEADER_LINE_END)]
            if len(first) > _NATS_VERSION_LEN:
                code, _, description = first[_NATS_VERSION_LEN:].strip().partition(b" ")
                self._on_status(code.decode(), description.decode(errors="replace"))
                return
        msg = Msg(self._nc, subject.decode(), reply.decode(), data)
        self._msgs.append(msg)
        if len(self._msgs) >= self._want:
            self._done.set()

    async def _on_msg(self, msg: Msg) -> None:
        # The path for a plain nats-py client; `Client` delivers through `_on_delivery`.
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            self._msgs.append(msg)
            if len(self._msgs) >= self._want:
                self._done.set()
        else:
            assert msg.headers is not None
            self._on_status(status, msg.headers.get(_DESCRIPTION, ""))

    def _on_status(self, status: str, description: str) -> None:
        if status == _HEARTBEAT:
            return
        if status not in _QUIET:
            self._refusal = PullError(status, description)
        self._done.set()
