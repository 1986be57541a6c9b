"""`idempotency-key`: a repeated key within the window gets the first answer, not a second call.

Keys are scoped by tenant (and route), so one tenant can never read another's answer by
guessing its key. Only successful answers are kept: after a failure the key is released and a
retry with it makes a fresh call. A key reused with a different body is refused, as payment
APIs do, because answering it with the other request's result would be wrong either way. A
second request arriving while the first is still running waits for it instead of paying twice.

Memory is bounded three ways: entries expire after the window, the oldest are evicted past
`max_entries`, and past `max_bytes` of stored answers in total.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

Scope = tuple[str, str, str]  # tenant, route operation, key


class Stored(msgspec.Struct, frozen=True):
    """A finished answer as the client received it."""

    status: int
    content_type: str
    body: bytes


class Replay(msgspec.Struct, frozen=True):
    stored: Stored


class Mismatch(msgspec.Struct, frozen=True):
    """The key was used before with a different request body."""


class Wait(msgspec.Struct, frozen=True):
    """The first request with this key is still running: await it, then look again."""

    done: asyncio.Future[None]


class Owner(msgspec.Struct, frozen=True):
    """This request makes the call; `complete` or `abandon` must follow."""

    scope: Scope
    fingerprint: bytes


Lookup = Replay | Mismatch | Wait | Owner


class _Entry:
    __slots__ = ("done", "expires_at", "fingerprint", "stored")

    def __init__(self, fingerprint: bytes, expires_at: float) -> None:
        self.fingerprint = fingerprint
        self.expires_at = expires_at
        self.stored: Stored | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class IdempotencyCache:
    def __init__(
        self,
        *,
        window_s: float = 600.0,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_answer_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_answer_bytes = max_answer_bytes  # a bigger answer is not kept
        self.clock = clock
        self._entries: OrderedDict[Scope, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def fingerprint(body: bytes) -> bytes:
        return hashlib.sha256(body).digest()

    def begin(self, scope: Scope, fingerprint: bytes) -> Lookup:
        now = self.clock()
        self._expire(now)
        entry = self._entries.get(scope)
        if entry is None:
            self._entries[scope] = _Entry(fingerprint, now + self.window_s)
            self._evict()
            return Owner(scope, fingerprint)
        if entry.fingerprint != fingerprint:
            return Mismatch()
        if entry.stored is not None:
            return Replay(entry.stored)
        return Wait(entry.done)

    def complete(self, owner: Owner, stored: Stored | None) -> None:
        """Keep the owner's answer (None, a failure or too big: release the key)."""
        entry = self._entries.get(owner.scope)
        if entry is None or entry.fingerprint != owner.fingerprint or entry.stored is not None:
            return
        if stored is None or len(stored.body) > self.max_answer_bytes:
            del self._entries[owner.scope]
        else:
            entry.stored = stored
            self._bytes += len(stored.body)
            self._evict()
        if not entry.done.done():
            entry.done.set_result(None)

    def _drop(self, scope: Scope, entry: _Entry) -> None:
        del self._entries[scope]
        if entry.stored is not None:
            self._bytes -= len(entry.stored.body)
        if not entry.done.done():
            entry.done.set_result(None)

    def _expire(self, now: float) -> None:
        # Entries are kept in creation order and share one window: expired ones lead.
        while self._entries:
            scope, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            self._drop(scope, entry)

    def _evict(self) -> None:
        while self._entries and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            scope, entry = next(iter(self._entries.items()))
            self._drop(scope, entry)
