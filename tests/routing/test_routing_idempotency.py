"""The idempotency cache: scoped by tenant, bounded in size and time, waits for a running first."""

from __future__ import annotations

import asyncio

from sidecar.routing.idempotency import (
    IdempotencyCache,
    Mismatch,
    Owner,
    Replay,
    Stored,
    Wait,
)

ANSWER = Stored(200, "application/json", b'{"ok":true}')
FP = IdempotencyCache.fingerprint(b"body")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_completed_key_replays_the_stored_answer() -> None:
    cache = IdempotencyCache()
    owner = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner)
    cache.complete(owner, ANSWER)
    assert cache.begin(("t1", "chat", "k"), FP) == Replay(ANSWER)


async def test_the_same_key_of_another_tenant_is_a_different_key() -> None:
    cache = IdempotencyCache()
    owner = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner)
    cache.complete(owner, ANSWER)
    assert isinstance(cache.begin(("t2", "chat", "k"), FP), Owner)


async def test_a_key_reused_with_another_body_is_a_mismatch() -> None:
    cache = IdempotencyCache()
    owner = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner)
    cache.complete(owner, ANSWER)
    other = IdempotencyCache.fingerprint(b"other body")
    assert isinstance(cache.begin(("t1", "chat", "k"), other), Mismatch)


async def test_a_failed_first_request_releases_its_key() -> None:
    cache = IdempotencyCache()
    owner = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner)
    cache.complete(owner, None)
    assert isinstance(cache.begin(("t1", "chat", "k"), FP), Owner)


async def test_a_second_request_waits_for_the_first_and_then_replays_it() -> None:
    cache = IdempotencyCache()
    owner = cache.begin(("t1", "chat", "k"), FP)
    waiting = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner) and isinstance(waiting, Wait)
    asyncio.get_running_loop().call_later(0.01, cache.complete, owner, ANSWER)
    await asyncio.wait_for(waiting.done, 1.0)
    assert cache.begin(("t1", "chat", "k"), FP) == Replay(ANSWER)


async def test_keys_expire_after_the_window() -> None:
    clock = Clock()
    cache = IdempotencyCache(window_s=60, clock=clock)
    owner = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner)
    cache.complete(owner, ANSWER)
    clock.now = 61
    assert isinstance(cache.begin(("t1", "chat", "k"), FP), Owner)


async def test_the_oldest_keys_are_evicted_past_the_entry_and_byte_limits() -> None:
    cache = IdempotencyCache(max_entries=3, max_bytes=25)
    for key in "abcd":
        owner = cache.begin(("t1", "chat", key), FP)
        assert isinstance(owner, Owner)
        cache.complete(owner, ANSWER)  # 11 bytes each: only two fit in 25
    assert len(cache) == 2
    assert isinstance(cache.begin(("t1", "chat", "a"), FP), Owner)
    assert isinstance(cache.begin(("t1", "chat", "d"), FP), Replay)


async def test_an_answer_too_big_to_keep_releases_the_key() -> None:
    cache = IdempotencyCache(max_answer_bytes=5)
    owner = cache.begin(("t1", "chat", "k"), FP)
    assert isinstance(owner, Owner)
    cache.complete(owner, ANSWER)
    assert isinstance(cache.begin(("t1", "chat", "k"), FP), Owner)
