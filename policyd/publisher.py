"""Publishing bundles to JetStream KV: compare-and-swap revisions, history, rollback, diff, status.

The KV entry under `KV_KEY` holds a signed `Envelope`. Revisions are assigned here, as the
latest revision + 1, and written with compare-and-swap on the KV sequence, so two policyd
replicas applying at once each get their own revision and neither update is lost.
"""

from __future__ import annotations

import asyncio
import difflib
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nacl.signing import SigningKey
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from policyd.bundle import (
    KV_BUCKET,
    KV_KEY,
    STATUS_BUCKET,
    Bundle,
    Envelope,
    decode_envelope,
    encode_bundle,
    encode_envelope,
)
from policyd.compiler import compile_dir
from policyd.errors import PublishConflictError, SigningKeyError
from policyd.problems import Invalid
from policyd.signing import sign, unsigned
from policyd.status import STALE_AFTER_S, STATUS_TTL_S, SidecarStatus, decode_status

HISTORY = 64  # the most JetStream KV keeps per key: 64 revisions to roll back to
_WATCH_TIMEOUT_S = 5.0

log = structlog.get_logger("policyd")


class Published(msgspec.Struct, frozen=True):
    revision: int
    content_hash: str
    kv_revision: int


class Unchanged(msgspec.Struct, frozen=True):
    """The latest bundle already has this content; nothing was written."""

    revision: int
    content_hash: str


class NotFound(msgspec.Struct, frozen=True):
    """No bundle with this revision in the KV history (never published, or aged out)."""

    revision: int


class StoredBundle(msgspec.Struct, frozen=True):
    """One KV entry: the signed envelope and the bundle header read from its payload."""

    kv_revision: int
    revision: int
    content_hash: str
    created_at: int
    envelope: Envelope

    @property
    def signed(self) -> bool:
        return self.envelope.signature is not None


class SidecarView(msgspec.Struct, frozen=True):
    status: SidecarStatus
    stale: bool  # not seen for longer than the threshold
    current: bool  # runs the latest published revision


class Convergence(msgspec.Struct, frozen=True):
    latest_revision: int | None
    latest_hash: str | None
    sidecars: tuple[SidecarView, ...]


class _Header(msgspec.Struct):
    """The bundle fields the publisher needs; lenient so a newer bundle still reads."""

    revision: int
    content_hash: str
    created_at: int = 0


_header_decoder = msgspec.json.Decoder(_Header)


async def connect(url: str, *, persistent: bool, name: str = "policyd") -> NATS:
    """A NATS connection: `persistent` retries forever (the service), else fails fast (the CLI)."""
    nc = NATS()

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        if not nc.is_closed:  # our own close() calls this too; that is no news
            log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    async def quiet(exc: Exception) -> None:
        """The CLI reports the raised error itself; nats-py's default would log a traceback."""

    if persistent:
        await nc.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,  # also retries the first connect: start before NATS is up
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    else:
        # max_reconnect_attempts also bounds the first connect: two tries, then the error,
        # instead of nats-py's default of 60 tries two seconds apart.
        await nc.connect(
            url,
            name=name,
            allow_reconnect=False,
            connect_timeout=3,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=quiet,
        )
    return nc


async def _bucket(js: JetStreamContext, bucket: str, **config: Any) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        # Creating with identical config is idempotent, so replicas racing here both succeed.
        return await js.create_key_value(bucket=bucket, **config)


class PolicyStore:
    """The policy bundle in JetStream KV, as policyd writes and reads it."""

    def __init__(
        self,
        kv: KeyValue,
        status_kv: KeyValue,
        *,
        signing_key: SigningKey | None = None,
        insecure_unsigned: bool = False,
        max_attempts: int = 32,
    ) -> None:
        self._kv = kv
        self._status_kv = status_kv
        self._signing_key = signing_key
        self._insecure_unsigned = insecure_unsigned
        self._max_attempts = max_attempts

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        signing_key: SigningKey | None = None,
        insecure_unsigned: bool = False,
        max_attempts: int = 32,
    ) -> PolicyStore:
        kv = await _bucket(js, KV_BUCKET, history=HISTORY, description="sidegate policy bundles")
        # Created here, not by the first sidecar, so the entry TTL is policyd's to set.
        status_kv = await _bucket(
            js, STATUS_BUCKET, history=1, ttl=STATUS_TTL_S, description="sidegate sidecar status"
        )
        return cls(
            kv,
            status_kv,
            signing_key=signing_key,
            insecure_unsigned=insecure_unsigned,
            max_attempts=max_attempts,
        )

    # -- reading ---------------------------------------------------------------------------

    async def latest(self) -> StoredBundle | None:
        try:
            entry = await self._kv.get(KV_KEY)
        except KeyNotFoundError:
            return None
        if entry.revision is None or not entry.value:
            return None
        return _stored(entry.revision, entry.value)

    async def history(self) -> list[StoredBundle]:
        """Every bundle the bucket still holds, oldest first."""
        entries = await _drain(await self._kv.watch(KV_KEY, include_history=True))
        return [
            _stored(e.revision, e.value)
            for e in entries
            if e.operation is None and e.value and e.revision is not None
        ]

    async def find(self, revision: int) -> StoredBundle | None:
        for stored in await self.history():
            if stored.revision == revision:
                return stored
        return None

    # -- writing ---------------------------------------------------------------------------

    async def publish(
        self, directory: Path, *, environ: Mapping[str, str] | None = None
    ) -> Published | Unchanged | Invalid:
        """Compile a policy folder and publish it unless the latest bundle already has it."""
        compiled = compile_dir(directory, environ=environ)
        if isinstance(compiled, Invalid):
            return compiled
        return await self.publish_bundle(compiled)

    async def publish_bundle(self, bundle: Bundle) -> Published | Unchanged:
        """Write `bundle`'s content as the next revision, retrying compare-and-swap conflicts."""
        for attempt in range(self._max_attempts):
            latest = await self.latest()
            if latest is not None and latest.content_hash == bundle.content_hash:
                return Unchanged(revision=latest.revision, content_hash=latest.content_hash)
            revision = await self._next_revision(latest)
            stamped = msgspec.structs.replace(
                bundle, revision=revision, created_at=int(time.time() * 1000)
            )
            data = encode_envelope(self._envelope(encode_bundle(stamped)))
            try:
                if latest is None:
                    kv_revision = await self._kv.create(KV_KEY, data)
                else:
                    kv_revision = await self._kv.update(KV_KEY, data, last=latest.kv_revision)
            except KeyWrongLastSequenceError:
                # Another writer got there first: re-read, renumber, try again. The jitter
                # keeps two replicas from colliding on every retry.
                await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
                continue
            return Published(revision, bundle.content_hash, kv_revision)
        raise PublishConflictError(self._max_attempts)

    async def rollback(self, to_revision: int) -> Published | Unchanged | NotFound:
        """Republish an old revision's content as a new revision, so sidecars move forward."""
        old = await self.find(to_revision)
        if old is None:
            return NotFound(to_revision)
        return await self.publish_bundle(msgspec.json.decode(old.envelope.payload, type=Bundle))

    async def _next_revision(self, latest: StoredBundle | None) -> int:
        if latest is not None:
            return latest.revision + 1
        # An empty key may have been deleted by hand; numbering must still move past every
        # revision a sidecar has seen, or it would reject the new bundle as older.
        return max((s.revision for s in await self.history()), default=0) + 1

    def _envelope(self, payload: bytes) -> Envelope:
        if self._signing_key is not None:
            return sign(payload, self._signing_key)
        if self._insecure_unsigned:
            return unsigned(payload)
        raise SigningKeyError(None, "no signing key (give --signing-key, or --insecure-unsigned)")

    # -- comparing and reporting -------------------------------------------------------------

    async def diff(self, rev_a: int, rev_b: int) -> str | NotFound:
        """A unified diff of two revisions' pretty, key-sorted JSON."""
        by_revision = {s.revision: s for s in await self.history()}
        for revision in (rev_a, rev_b):
            if revision not in by_revision:
                return NotFound(revision)
        a = pretty(by_revision[rev_a].envelope.payload).splitlines(keepends=True)
        b = pretty(by_revision[rev_b].envelope.payload).splitlines(keepends=True)
        return "".join(
            difflib.unified_diff(a, b, fromfile=f"revision {rev_a}", tofile=f"revision {rev_b}")
        )

    async def status(
        self, *, stale_after_s: float = STALE_AFTER_S, now_ms: int | None = None
    ) -> Convergence:
        """Who runs what: every sidecar's last report against the latest revision."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        latest = await self.latest()
        views: list[SidecarView] = []
        for entry in await _drain(await self._status_kv.watchall(ignore_deletes=True)):
            try:
                status = decode_status(entry.value or b"")
            except msgspec.DecodeError as exc:
                # One sidecar writing garbage must not hide every other sidecar's status.
                log.warning("sidecar_status_unreadable", key=entry.key, error=str(exc))
                continue
            current = latest is not None and status.revision == latest.revision
            if current and latest is not None and status.content_hash:
                current = status.content_hash == latest.content_hash
            stale = now - status.seen_at_ms > stale_after_s * 1000
            views.append(SidecarView(status=status, stale=stale, current=current))
        views.sort(key=lambda v: v.status.sidecar_id)
        return Convergence(
            latest_revision=None if latest is None else latest.revision,
            latest_hash=None if latest is None else latest.content_hash,
            sidecars=tuple(views),
        )


def pretty(payload: bytes) -> str:
    """Canonical, human-readable JSON: sorted keys, two-space indent, trailing newline."""
    sorted_json = msgspec.json.encode(msgspec.json.decode(payload), order="sorted")
    return msgspec.json.format(sorted_json, indent=2).decode() + "\n"


async def _drain(watcher: KeyValue.KeyWatcher) -> list[KeyValue.Entry]:
    """The entries a watcher delivers before its end-of-initial-values marker (None)."""
    entries: list[KeyValue.Entry] = []
    try:
        while True:
            # nats-py leaves KeyWatcher's methods unannotated.
            entry = await watcher.updates(timeout=_WATCH_TIMEOUT_S)  # type: ignore[no-untyped-call]
            if entry is None:
                return entries
            entries.append(entry)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


def _stored(kv_revision: int, data: bytes) -> StoredBundle:
    envelope = decode_envelope(data)
    header = _header_decoder.decode(envelope.payload)
    return StoredBundle(
        kv_revision=kv_revision,
        revision=header.revision,
        content_hash=header.content_hash,
        created_at=header.created_at,
        envelope=envelope,
    )
