"""Token buckets for rate limits: burst and refill, reservations before a call, settlement after.

A bucket holds up to `capacity` units (requests or tokens) and refills at `rate` units per
second. Buckets are keyed by (rule, scope, kind, scope value), never by the numbers, so a
bundle that changes a limit keeps everyone's spent share: the next request refills at the old
rate up to now, then the new rate and capacity apply.

Memory stays bounded. A bucket left alone until it is full again is indistinguishable from a
new one, so a periodic sweep drops full buckets without changing any decision; beyond
`max_buckets` the least recently used are dropped too (a caller idle for that long restarts
with a full bucket, the only way eviction can loosen a limit).

Limits are per sidecar: N pods running the same app each allow the full rate.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from collector.record import UsageRecord
from sidecar.context import RequestContext

SWEEP_INTERVAL_S = 10.0
# A reservation whose request never reported back (it cannot happen through the proxy, which
# observes every request, but a bug must not leak memory) is dropped after this long.
RESERVATION_TTL_S = 900.0


class Bucket:
    """One token bucket; `level` may go below zero when real usage exceeded the reservation."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate  # units per second
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def retune(self, capacity: float, rate: float) -> None:
        """A changed limit: keep what was spent, never hold more than the new capacity."""
        self.capacity = capacity
        self.rate = rate
        self.level = min(self.level, capacity)

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` units are available (0 when they are now)."""
        return max(0.0, (amount - self.level) / self.rate)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    def full_at(self) -> float:
        return self.stamp + self.reset_s()


class _Reservation:
    __slots__ = ("amount", "key", "stamp")

    def __init__(self, key: Hashable, amount: float, stamp: float) -> None:
        self.key = key
        self.amount = amount
        self.stamp = stamp


class Limiter:
    """Every bucket of one sidecar; outlives bundles so a policy swap resets nobody."""

    def __init__(
        self,
        *,
        max_buckets: int = 100_000,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_buckets = max_buckets
        self.sweep_interval_s = sweep_interval_s
        self.now = clock
        self._buckets: OrderedDict[Hashable, Bucket] = OrderedDict()
        self._reservations: dict[str, list[_Reservation]] = {}
        self._next_sweep = clock() + sweep_interval_s

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: Hashable, *, capacity: float, rate: float, now: float) -> Bucket:
        """The bucket for `key`, refilled to `now`, with the limit the active bundle sets."""
        if now >= self._next_sweep:
            self.sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = Bucket(capacity, rate, now)
            return bucket
        self._buckets.move_to_end(key)
        bucket.refill(now)
        if bucket.capacity != capacity or bucket.rate != rate:
            bucket.retune(capacity, rate)
        return bucket

    def reserve(self, record_id: str, key: Hashable, amount: float, now: float) -> None:
        """Remember tokens taken before the call, to settle against the real count after."""
        self._reservations.setdefault(record_id, []).append(_Reservation(key, amount, now))

    def settle(self, record_id: str, used: float) -> None:
        """Give back what was reserved beyond `used` (or take the shortfall) in each bucket."""
        reservations = self._reservations.pop(record_id, None)
        if not reservations:
            return
        now = self.now()
        for reservation in reservations:
            bucket = self._buckets.get(reservation.key)
            if bucket is None:
                continue  # evicted as idle and full: a refund would change nothing
            bucket.refill(now)
            bucket.level = min(bucket.capacity, bucket.level + reservation.amount - used)

    def settle_record(self, ctx: RequestContext, record: UsageRecord) -> None:
        """The proxy observer: settle with the usage on the request's record."""
        if record.id in self._reservations:
            used = (
                0 if record.token_source == "none" else record.input_tokens + record.output_tokens
            )
            self.settle(record.id, used)

    def sweep(self, now: float) -> None:
        """Drop buckets that have refilled completely, and reservations nobody settled."""
        self._next_sweep = now + self.sweep_interval_s
        full = [key for key, bucket in self._buckets.items() if bucket.full_at() <= now]
        for key in full:
            del self._buckets[key]
        cutoff = now - RESERVATION_TTL_S
        stale = [rid for rid, rs in self._reservations.items() if rs[0].stamp < cutoff]
        for rid in stale:
            del self._reservations[rid]


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: `250ms`, `12s`, `1m30s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
