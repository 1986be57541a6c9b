"""One NATS connection per sidecar, kept alive in the background and shared by its users.

The request path never waits for it: the policy watcher and the usage emitter await
`connected()` in their own tasks, and both cope with it being absent for as long as NATS is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

log = structlog.get_logger("sidegate.sidecar.nats")


class NatsLink:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Client | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="nats-connect")

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                self.client = await nats.connect(
                    self.url,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    reconnected_cb=self._reconnected,
                    disconnected_cb=self._disconnected,
                    error_cb=self._error,
                )
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                log.debug("nats_connect_failed", url=self.url, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("nats_connected", url=self.url)
            self._ready.set()
            return

    async def _reconnected(self) -> None:
        log.info("nats_reconnected", url=self.url)
        self._ready.set()
        for callback in self.on_reconnect:
            await callback()

    async def _disconnected(self) -> None:
        self._ready.clear()

    async def _error(self, exc: Exception) -> None:
        log.debug("nats_error", error=str(exc))

    @property
    def is_connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def connected(self) -> Client:
        await self._ready.wait()
        assert self.client is not None
        return self.client

    async def jetstream(self) -> JetStreamContext:
        return (await self.connected()).jetstream()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.client is not None and not self.client.is_closed:
            await self.client.close()
