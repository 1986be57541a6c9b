"""The budget lease client: asks policyd's quota owner for slices in the background, never inline.

It wakes when the ledger says an account runs low (or on a short tick), and sends one
request/reply per due account over the sidecar's shared NATS connection. While NATS or the
owner is unreachable every request fails at once or times out; the ledger then lets the
safe share apply and backs off. Requests of one account are never concurrent: the ledger
marks an account in flight until its answer (or its failure) is applied, which is what makes
the owner's sequence numbers and cumulative totals sufficient against lost replies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import msgspec
import nats.errors
import structlog

from policyd.quota_wire import LEASE_SUBJECT, LeaseReply, LeaseRequest, decode_reply, encode
from sidecar.budgets import Account, BudgetLedger
from sidecar.natslink import NatsLink

log = structlog.get_logger("sidegate.sidecar.budgets")

REQUEST_TIMEOUT_S = 2.0
TICK_S = 0.25
MAX_CONCURRENT = 32


class LeaseClient:
    def __init__(
        self,
        ledger: BudgetLedger,
        link: NatsLink,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        tick_s: float = TICK_S,
    ) -> None:
        self.ledger = ledger
        self.link = link
        self.timeout_s = timeout_s
        self.tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self._asking: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="budget-leases")
        self.link.on_reconnect.append(self._reconnected)

    async def _reconnected(self) -> None:
        self.ledger.retry_now()

    async def stop(self, *, timeout_s: float = 2.0) -> None:
        """Stop asking, then hand every unspent slice back (the requests have all finished,
        so everything is settled); what cannot be returned now, the owner reclaims later."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._asking:
            await asyncio.wait(self._asking, timeout=timeout_s)
        closing = self.ledger.close_all()
        if closing and self.link.is_connected:
            asks = [self._ask(account) for account in closing]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*asks), timeout_s)
        left = len(self.ledger.close_all())  # still unreported: the owner reclaims them
        log.info("budget_leases_stopped", returned=len(closing) - left, unreturned=left)

    async def _run(self) -> None:
        ledger = self.ledger
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ledger.wake.wait(), self.tick_s)
            ledger.wake.clear()
            for account in ledger.due(ledger.now()):
                task = asyncio.create_task(self._ask(account))
                self._asking.add(task)
                task.add_done_callback(self._asking.discard)

    def _ask(self, account: Account) -> Coroutine[Any, Any, None]:
        # The request is made (and the account marked in flight) before any wait for a slot,
        # so the next tick cannot ask for the same account twice; its lease clock starts
        # here, early, which only shortens the lease.
        sent_at = self.ledger.now()
        request = self.ledger.request(account, sent_at)
        return self._exchange(account, request, sent_at)

    async def _exchange(self, account: Account, request: LeaseRequest, sent_at: float) -> None:
        async with self._slots:
            reply = await self._send(request)
        self.ledger.answered(account, request, reply, sent_at)
        if reply is not None and reply.status not in ("ok", "unavailable"):
            log.warning("budget_lease_refused", status=reply.status, message=reply.message)

    async def _send(self, request: LeaseRequest) -> LeaseReply | None:
        """The owner's reply, or None when there is none to be had (the ledger backs off)."""
        client = self.link.client
        if client is None or not self.link.is_connected:
            return None
        try:
            msg = await client.request(LEASE_SUBJECT, encode(request), timeout=self.timeout_s)
            return decode_reply(msg.data)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
            # Boundary: no owner subscribed, a slow one, or a broken reply all mean "no
            # lease now"; the request path never waits for this.
            log.debug("budget_lease_failed", budget=request.budget, error=type(exc).__name__)
            return None
