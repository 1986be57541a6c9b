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
from pathlib import Path

import msgspec
import nats.js.errors
import structlog
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from policyd.bundle import KV_BUCKET, KV_KEY, Bundle, decode_bundle, decode_envelope
from sidecar.natslink import NatsLink
from sidecar.policy import CompiledBundle

log = structlog.get_logger("sidegate.sidecar.policy")


class BundleRejected(Exception):
    def __init__(self, reason: str, revision: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.revision = revision


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


class Verifier:
    """Checks an envelope's Ed25519 signature against any configured public key."""

    def __init__(self, public_keys: tuple[str, ...], *, allow_unsigned: bool = False) -> None:
        self.keys: dict[str, VerifyKey] = {}
        for text in public_keys:
            raw = base64.b64decode(text, validate=True)
            self.keys[key_id(raw)] = VerifyKey(raw)
        self.allow_unsigned = allow_unsigned

    def open(self, data: bytes) -> Bundle:
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, binascii.Error) as exc:
            raise BundleRejected(f"not a bundle envelope: {exc}") from exc
        if envelope.signature is None:
            if not self.allow_unsigned:
                raise BundleRejected("bundle is unsigned and unsigned bundles are not allowed")
        else:
            self._check_signature(envelope.payload, envelope.signature, envelope.key_id)
        try:
            return decode_bundle(envelope.payload)
        except msgspec.DecodeError as exc:
            raise BundleRejected(f"bundle payload does not match the schema: {exc}") from exc

    def _check_signature(self, payload: bytes, signature: bytes, kid: str | None) -> None:
        if not self.keys:
            raise BundleRejected("bundle is signed but this sidecar has no public key configured")
        candidates = [self.keys[kid]] if kid in self.keys else list(self.keys.values())
        for verify_key in candidates:
            try:
                verify_key.verify(payload, signature)
            except BadSignatureError:
                continue
            return
        raise BundleRejected(
            f"bad signature (key id {kid or 'none'}): bundle tampered or key unknown"
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
        log.info(
            "bundle_active", origin=origin, revision=compiled.revision,
            content_hash=compiled.content_hash[:12],
        )  # fmt: skip
        if self.persist_path is not None and origin != "disk":
            self._persist(data)
        self._notify(compiled)
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
        except (KeyError, ValueError) as exc:
            raise BundleRejected(f"bundle is inconsistent: {exc!r}", bundle.revision) from exc

    def _persist(self, data: bytes) -> None:
        assert self.persist_path is not None
        self.persist_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.persist_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.persist_path)

    def load_persisted(self) -> bool:
        if self.persist_path is None or not self.persist_path.exists():
            return False
        return self.offer(self.persist_path.read_bytes(), origin="disk")

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
        if self._watch is not None:
            self._watch.cancel()
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
            try:
                watcher = await kv.watch(KV_KEY)
                async for entry in watcher:
                    if entry is not None and entry.value and entry.operation is None:
                        self.state.offer(entry.value, origin=f"nats:{entry.revision}")
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("policy_watch_interrupted", error=str(exc))
                await asyncio.sleep(1.0)

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
        tasks = [*self._tasks, *([self._watch] if self._watch else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
