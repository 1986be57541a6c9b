"""The active policy: verify bundles, swap them atomically, persist the last good one, watch NATS.

Fail-static: the last verified bundle is saved on local disk and loaded before NATS is reached,
a rejected bundle leaves the active one in place, and only a sidecar that never had a verified
bundle is not ready.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import nats.js.errors
import structlog
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from policyd.bundle import (
    KV_BUCKET,
    KV_KEY,
    SCHEMA_VERSION,
    Bundle,
    content_hash,
    decode_bundle,
    decode_envelope,
)
from sidecar.natslink import NatsLink
from sidecar.policy import CompiledBundle

log = structlog.get_logger("sidegate.sidecar.policy")

_STOP_POLL_S = 0.05
_STOP_ATTEMPTS = 100


class BundleRejected(Exception):
    """A bundle this sidecar refuses; `revision` is what it claims, None when unreadable."""

    def __init__(self, reason: str, revision: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.revision = revision


class _Header(msgspec.Struct):
    """The revision of a payload that failed verification, read only to report it."""

    revision: int = 0


_header_decoder = msgspec.json.Decoder(_Header)


def claimed_revision(payload: bytes) -> int | None:
    """The revision an unverified payload claims, so `policy status` can name what was refused."""
    try:
        return _header_decoder.decode(payload).revision
    except msgspec.DecodeError:
        return None


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


class Verifier:
    """Checks an envelope's Ed25519 signature against any configured public key."""

    def __init__(self, public_keys: tuple[str, ...], *, allow_unsigned: bool = False) -> None:
        self.keys: dict[str, VerifyKey] = {}
        for index, text in enumerate(public_keys):
            try:
                raw = base64.b64decode(text, validate=True)
                verify_key = VerifyKey(raw)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(
                    f"public key #{index + 1} is not a base64 Ed25519 public key: {exc}"
                ) from exc
            self.keys[key_id(raw)] = verify_key
        self.allow_unsigned = allow_unsigned

    def open(self, data: bytes) -> Bundle:
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, binascii.Error) as exc:
            raise BundleRejected(f"not a bundle envelope: {exc}") from exc
        if envelope.signature is None:
            if not self.allow_unsigned:
                raise BundleRejected(
                    "bundle is unsigned and unsigned bundles are not allowed",
                    claimed_revision(envelope.payload),
                )
        else:
            self._check_signature(envelope.payload, envelope.signature, envelope.key_id)
        try:
            bundle = decode_bundle(envelope.payload)
        except msgspec.DecodeError as exc:
            raise BundleRejected(
                f"bundle payload does not match the schema: {exc}",
                claimed_revision(envelope.payload),
            ) from exc
        if bundle.schema_version > SCHEMA_VERSION:
            raise BundleRejected(
                f"bundle schema {bundle.schema_version} is newer than this sidecar's "
                f"{SCHEMA_VERSION}",
                bundle.revision,
            )
        # The signature proves who wrote it; the hash catches a writer that got it wrong, and
        # is the only integrity check an unsigned development bundle has.
        if content_hash(bundle) != bundle.content_hash:
            raise BundleRejected("content hash does not match the content", bundle.revision)
        return bundle

    def _check_signature(self, payload: bytes, signature: bytes, kid: str | None) -> None:
        if not self.keys:
            raise BundleRejected("bundle is signed but this sidecar has no public key configured")
        candidates = [self.keys[kid]] if kid in self.keys else list(self.keys.values())
        for verify_key in candidates:
            try:
                verify_key.verify(payload, signature)
            except BadSignatureError:
                continue
            except ValueError as exc:
                # PyNaCl refuses a signature that is not 64 bytes before checking anything.
                raise BundleRejected(
                    f"malformed signature: {exc}", claimed_revision(payload)
                ) from exc
            return
        raise BundleRejected(
            f"bad signature (key id {kid or 'none'}): bundle tampered or key unknown",
            claimed_revision(payload),
        )


class PolicyState:
    """Holds the active compiled bundle: one reference, replaced whole; in-flight requests keep
    the one they started with."""

    def __init__(self, verifier: Verifier, persist_path: Path | None) -> None:
        self.verifier = verifier
        self.persist_path = persist_path
        self.active: CompiledBundle | None = None
        self.rejection: BundleRejected | None = None
        self.listeners: list[asyncio.Queue[CompiledBundle | BundleRejected]] = []
        # One writer thread: files are written in activation order, never an older one last,
        # and the event loop never waits on the disk.
        self._writer: ThreadPoolExecutor | None = None

    def offer(self, data: bytes, *, origin: str) -> bool:
        """Verify and activate `data`; True if it became active. Rejections are kept and logged."""
        try:
            compiled = self._check(data)
        except BundleRejected as rejected:
            self.rejection = rejected
            log.error(
                "bundle_rejected", origin=origin, revision=rejected.revision,
                reason=rejected.reason,
            )  # fmt: skip
            self._notify(rejected)
            return False
        if compiled is None:
            return False  # the active bundle again, e.g. from disk and then from NATS
        self.active = compiled
        # A newer good bundle supersedes whatever was refused before it.
        self.rejection = None
        log.info(
            "bundle_active", origin=origin, revision=compiled.revision,
            content_hash=compiled.content_hash[:12],
        )  # fmt: skip
        self._notify(compiled)
        if self.persist_path is not None and origin != "disk":
            self._save(data)
        return True

    def _check(self, data: bytes) -> CompiledBundle | None:
        bundle = self.verifier.open(data)
        current = self.active
        if current is not None:
            if bundle.revision == current.revision and bundle.content_hash == current.content_hash:
                return None
            if bundle.revision <= current.revision:
                raise BundleRejected(
                    f"revision {bundle.revision} is not newer than active {current.revision}",
                    bundle.revision,
                )
        try:
            return CompiledBundle(bundle)
        except Exception as exc:
            # Boundary: a bundle that cannot be compiled (a dangling reference, a bad value)
            # is refused like a tampered one; it must never take the watcher down with it.
            raise BundleRejected(f"bundle is inconsistent: {exc!r}", bundle.revision) from exc

    def _save(self, data: bytes) -> None:
        """Persist off the event loop when there is one; in order, either way."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._persist(data)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle-writer")
        self._writer.submit(self._persist, data)

    def _persist(self, data: bytes) -> None:
        assert self.persist_path is not None
        try:
            self.persist_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.persist_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.persist_path)
        except OSError as exc:
            # Enforcement goes on with the new bundle; only a restart without NATS would
            # fall back to the older file, so this is loud but not fatal.
            log.error("bundle_persist_failed", path=str(self.persist_path), error=str(exc))

    async def close(self) -> None:
        """Wait for the last bundle to reach the disk (at shutdown)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.to_thread(writer.shutdown, wait=True)

    def load_persisted(self) -> bool:
        """Fail-static start: enforce the last verified bundle before NATS is reached."""
        if self.persist_path is None:
            return False
        try:
            data = self.persist_path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("bundle_unreadable", path=str(self.persist_path), error=str(exc))
            return False
        return self.offer(data, origin="disk")

    def _notify(self, event: CompiledBundle | BundleRejected) -> None:
        for queue in self.listeners:
            queue.put_nowait(event)


class PolicyWatcher:
    """Follows the bundle key: a KV watch, plus a re-read on reconnect and on a slow timer,
    because a watch can lag after a server restart."""

    def __init__(self, state: PolicyState, link: NatsLink, *, resync_interval_s: float) -> None:
        self.state = state
        self.link = link
        self.resync_interval_s = resync_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.link.on_reconnect.append(self._on_reconnect)
        self._watch = asyncio.create_task(self._watch_loop(), name="policy-watch")
        self._tasks = [asyncio.create_task(self._resync_loop(), name="policy-resync")]

    async def _on_reconnect(self) -> None:
        """A fresh watch, which delivers the latest bundle first: the re-read on reconnect."""
        if self._watch is not None:
            await stop_tasks([self._watch])
        self._watch = asyncio.create_task(self._watch_loop(), name="policy-watch")

    async def _bucket(self) -> nats.js.kv.KeyValue:
        while True:
            js = await self.link.jetstream()
            try:
                return await js.key_value(KV_BUCKET)
            except (nats.js.errors.BucketNotFoundError, nats.errors.Error, TimeoutError):
                await asyncio.sleep(1.0)

    async def _watch_loop(self) -> None:
        while True:
            kv = await self._bucket()
            watcher = None
            try:
                watcher = await kv.watch(KV_KEY)
                async for entry in watcher:
                    if entry is not None and entry.value and entry.operation is None:
                        self.state.offer(entry.value, origin=f"nats:{entry.revision}")
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("policy_watch_interrupted", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    # A watch replaced on reconnect would otherwise keep its subscription.
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        # nats-py leaves KeyWatcher's methods unannotated.
                        await watcher.stop()  # type: ignore[no-untyped-call]

    async def resync(self) -> None:
        kv = await self._bucket()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(KV_KEY)
            if entry.value:
                self.state.offer(entry.value, origin=f"nats:{entry.revision}")

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval_s)
            if self.link.is_connected:
                try:
                    await self.resync()
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning("policy_resync_failed", error=str(exc))

    async def stop(self) -> None:
        await stop_tasks([*self._tasks, *([self._watch] if self._watch else [])])


async def stop_tasks(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait until they have ended.

    One cancel is not always enough: on Python 3.11 `asyncio.wait_for`, which nats-py uses for
    every request, can swallow a cancellation that races with its result, and the task's loop
    then runs on. So the tasks are cancelled again until they end, for a bounded time.
    """
    tasks = list(tasks)
    pending = [task for task in tasks if not task.done()]
    for _ in range(_STOP_ATTEMPTS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=_STOP_POLL_S)
        pending = [task for task in pending if not task.done()]
    else:
        log.error("background_tasks_did_not_stop", tasks=[task.get_name() for task in pending])
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(task.exception()))
