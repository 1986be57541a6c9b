"""Convergence reporting: this sidecar's active revision and last rejection, into NATS KV.

One `SidecarStatus` per sidecar in the `STATUS_BUCKET` bucket (policyd/status.py is the
contract), written at start, on every activation or rejection, after a reconnect, and on a
heartbeat so `sidegate policy status` can tell a quiet sidecar from a gone one. Writing never
touches the request path: it runs in its own task, and while NATS is away the next write simply
waits for the connection (the latest state is written, not every event since).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from policyd.bundle import STATUS_BUCKET
from policyd.status import SidecarStatus, encode_status, status_key
from sidecar.bundles import BundleRejected, PolicyState, stop_tasks
from sidecar.context import Identity
from sidecar.natslink import NatsLink
from sidecar.policy import CompiledBundle

log = structlog.get_logger("sidegate.sidecar.status")

_RETRY_S = 1.0
_GOODBYE_TIMEOUT_S = 1.0


class StatusReporter:
    def __init__(
        self,
        state: PolicyState,
        link: NatsLink,
        *,
        sidecar_id: str,
        workload: Identity,
        interval_s: float,
    ) -> None:
        self.state = state
        self.link = link
        self.sidecar_id = sidecar_id
        self.key = status_key(sidecar_id)
        self.workload = workload
        self.interval_s = interval_s
        # Events only say "write now": the status is read from the state at write time.
        self._events: asyncio.Queue[CompiledBundle | BundleRejected] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None

    def snapshot(self) -> SidecarStatus:
        """What this sidecar enforces right now, and the last bundle it refused."""
        active = self.state.active
        rejected = self.state.rejection
        return SidecarStatus(
            sidecar_id=self.sidecar_id,
            app=self.workload.app,
            namespace=self.workload.namespace,
            pod=self.workload.pod,
            revision=active.revision if active is not None else 0,
            content_hash=active.content_hash if active is not None else "",
            # A refused bundle whose revision could not be read is still shown, as 0.
            rejected_revision=(rejected.revision or 0) if rejected is not None else None,
            rejected_reason=rejected.reason if rejected is not None else "",
            seen_at_ms=time.time_ns() // 1_000_000,
        )

    def start(self) -> None:
        self.state.listeners.append(self._events)
        self.link.on_reconnect.append(self._on_reconnect)
        self._task = asyncio.create_task(self._run(), name="sidecar-status")

    async def _on_reconnect(self) -> None:
        # NATS may have lost the entry (a restarted server without storage): write it again.
        self._wake.set()

    async def _bucket(self) -> KeyValue:
        """The status bucket; policyd creates it (it owns the TTL), so wait until it exists."""
        while True:
            js = await self.link.jetstream()
            try:
                return await js.key_value(STATUS_BUCKET)
            except (nats.js.errors.BucketNotFoundError, nats.errors.Error, TimeoutError):
                await asyncio.sleep(_RETRY_S)

    async def _run(self) -> None:
        self._kv = await self._bucket()
        while True:
            await self.write()
            await self._next_reason()

    async def _next_reason(self) -> None:
        """Wait for an activation, a rejection, a reconnect or the heartbeat."""
        waiters = [
            asyncio.ensure_future(self._events.get()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()
        # Several events since the last write collapse into one: the latest state.
        while not self._events.empty():
            self._events.get_nowait()

    async def write(self) -> bool:
        """Put the current status; False (and logged) when NATS did not take it."""
        if self._kv is None:
            return False
        await self.link.connected()
        try:
            await self._kv.put(self.key, encode_status(self.snapshot()))
        except (nats.errors.Error, TimeoutError) as exc:
            # Boundary: NATS went away between the check and the write; the next event or
            # heartbeat retries with the state as it is then.
            log.warning("sidecar_status_write_failed", error=str(exc) or type(exc).__name__)
            return False
        return True

    async def stop(self) -> None:
        """Stop reporting and remove this sidecar's entry, so a clean exit is not shown stale."""
        if self._events in self.state.listeners:
            self.state.listeners.remove(self._events)
        if self._task is not None:
            await stop_tasks([self._task])
        if self._kv is not None and self.link.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(self._kv.delete(self.key), _GOODBYE_TIMEOUT_S)
