"""JetStream for the collector: its streams, its durable consumer, and a lean batch puller.

nats-py's `PullSubscription.fetch` awaits each message of a batch in turn; on a small node that
per-message await, not the server, caps a collector at about 15k records/s. `Puller` sends the
same pull request (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, the documented wire API)
and lets the subscription callback append deliveries to a list, measured at over three times
the rate. Streams and the consumer are still created and configured through nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.client import Client
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

    def __init__(self, nc: Client, *, stream: str, consumer: str) -> None:
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

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            self._msgs.append(msg)
            if len(self._msgs) >= self._want:
                self._done.set()
        elif status == _HEARTBEAT:
            return
        else:
            if status not in _QUIET:
                assert msg.headers is not None
                self._refusal = PullError(status, msg.headers.get(_DESCRIPTION, ""))
            self._done.set()
