"""The quota owner: budget leases granted against spend kept in JetStream KV with compare-and-swap.

One KV entry per account, a (budget, scope value, UTC period), holds the limit and, per
holder (one sidecar process), what it was granted, what it gave back and what it spent. The
account's committed money is everything spent plus every holder's outstanding slice:

    committed = sum of spent + sum of max(granted - released - spent, 0)

A request is granted min(want, limit - committed), so grants never commit more than the
limit. Writes are compare-and-swap on the entry's revision: replicas (one NATS queue group)
serve the same accounts, a lost race re-reads and re-decides, and a restart loses nothing.

A holder's own totals replace the owner's copy on every request (they are cumulative and
sequence-numbered, see policyd/quota_wire.py), so a reply lost in transit costs nothing. A
holder that stops talking keeps its slice until the lease expiry plus a grace has passed;
then its unspent slice is reclaimed. The sidecar stops reserving against a lease at its own
expiry, measured from when it sent the request, so it is always earlier than the owner's:
what a vanished holder may still have spent after its last report is at most the slice it
held. That is the whole overshoot a reclaim can cause, and a late report still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Iterable
from decimal import Decimal

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from policyd.quota_wire import (
    BUDGET_BUCKET,
    LEASE_SUBJECT,
    QUEUE_GROUP,
    ZERO,
    LeaseReply,
    LeaseRequest,
    decode_request,
    encode,
)

log = structlog.get_logger("sidegate.policyd.quota")

LEASE_TTL_S = 60.0
RECLAIM_GRACE_S = 60.0  # past a lease's expiry, for requests reserved just before it
# A reclaimed holder's totals are folded into the account this long after its expiry, so an
# entry does not grow with every pod that ever lived. A report after that counts twice: safe.
FORGET_AFTER_S = 3_600.0
ENTRY_TTL_S = 35 * 86_400.0  # longer than any period: a month's entry outlives its month
MAX_CONCURRENT = 64


class Holder(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One sidecar process's share of an account, as it last reported it."""

    seq: int = 0
    granted_usd: Decimal = ZERO
    released_usd: Decimal = ZERO
    spent_usd: Decimal = ZERO
    expires_at_ms: int = 0

    @property
    def outstanding(self) -> Decimal:
        """Granted and neither spent nor given back: money this holder may still spend."""
        return max(self.granted_usd - self.released_usd - self.spent_usd, ZERO)


class Account(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One KV entry: a budget's spend for one scope value in one period."""

    budget: str
    scope: str
    value: str
    period_key: str
    limit_usd: Decimal
    closed_spent_usd: Decimal = ZERO  # spent by holders that closed or were forgotten
    reclaimed_usd: Decimal = ZERO  # slices taken back from silent holders, for the record
    holders: dict[str, Holder] = {}

    def committed(self) -> Decimal:
        held = sum((h.spent_usd + h.outstanding for h in self.holders.values()), ZERO)
        return self.closed_spent_usd + held

    def reclaim(self, now_ms: int, grace_ms: int) -> Decimal:
        """Take back the unspent slices of holders silent past expiry + grace."""
        taken = ZERO
        for holder_id, holder in list(self.holders.items()):
            if holder.expires_at_ms + grace_ms > now_ms:
                continue
            if holder.outstanding > 0:
                taken += holder.outstanding
                holder.released_usd = holder.granted_usd - holder.spent_usd
            if holder.expires_at_ms + grace_ms + FORGET_AFTER_S * 1000 <= now_ms:
                self.closed_spent_usd += holder.spent_usd
                del self.holders[holder_id]
        self.reclaimed_usd += taken
        return taken

    def lease(
        self, request: LeaseRequest, *, now_ms: int, ttl_ms: int, grace_ms: int
    ) -> LeaseReply:
        """Apply one request: take the holder's totals, then grant what the limit allows."""
        self.limit_usd = request.limit_usd
        self.reclaim(now_ms, grace_ms)
        holder = self.holders.get(request.holder)
        if holder is None:
            holder = self.holders[request.holder] = Holder()
        elif request.seq <= holder.seq:
            return LeaseReply(status="stale", granted_usd=holder.granted_usd)
        holder.seq = request.seq
        # The holder knows best what it received, returned and spent; a grant whose reply
        # was lost is dropped here because the holder does not count it.
        holder.granted_usd = request.granted_usd
        holder.released_usd = request.released_usd
        holder.spent_usd = request.spent_usd
        if request.final:
            self.closed_spent_usd += holder.spent_usd
            del self.holders[request.holder]
            return LeaseReply(granted_usd=holder.granted_usd, remaining_usd=self.remaining())
        holder.expires_at_ms = now_ms + ttl_ms
        grant = max(min(request.want_usd, self.remaining()), ZERO)
        holder.granted_usd += grant
        return LeaseReply(
            granted_usd=holder.granted_usd,
            grant_usd=grant,
            remaining_usd=self.remaining(),
            ttl_ms=ttl_ms,
        )

    def remaining(self) -> Decimal:
        return self.limit_usd - self.committed()


def account_key(budget: str, scope: str, value: str, period_key: str) -> str:
    """A KV-safe key: names and scope values may hold any character, keys only a few."""
    identity = msgspec.json.encode([budget, scope, value, period_key])
    return "a." + hashlib.sha256(identity).hexdigest()[:40]


_account_decoder = msgspec.json.Decoder(Account)
_account_encoder = msgspec.json.Encoder(decimal_format="string")


def _invalid(request: LeaseRequest) -> str | None:
    amounts = (request.want_usd, request.granted_usd, request.released_usd, request.spent_usd)
    if not request.limit_usd.is_finite() or request.limit_usd < 0:
        return "limit_usd must be a decimal of 0 or more"
    if any(not a.is_finite() or a < 0 for a in amounts):
        return "amounts must be decimals of 0 or more"
    return None


class QuotaOwner:
    """Serves lease requests from the sidecars; several replicas may share one bucket."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        reclaim_grace_s: float = RECLAIM_GRACE_S,
        max_attempts: int = 64,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self.ttl_ms = round(lease_ttl_s * 1000)
        self.grace_ms = round(reclaim_grace_s * 1000)
        self._max_attempts = max_attempts
        self._clock = clock
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # with their users
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._subscription: Subscription | None = None
        # What this replica last wrote, per account, for the scrape-time gauges.
        self._seen: dict[str, Account] = {}
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "sidegate_policyd_budget_lease_requests_total",
            "Lease requests by result: granted (all asked), partial, exhausted (nothing "
            "left), report (asked for nothing), closed, stale, invalid or unavailable.",
            ["result"], registry=self.registry,
        )  # fmt: skip
        self.conflicts = Counter(
            "sidegate_policyd_budget_cas_conflicts_total",
            "Compare-and-swap writes lost to another writer and retried.",
            registry=self.registry,
        )
        self.granted = Counter(
            "sidegate_policyd_budget_granted_usd_total", "Money granted in leases, by budget.",
            ["budget"], registry=self.registry,
        )  # fmt: skip
        self.reclaimed = Counter(
            "sidegate_policyd_budget_reclaimed_usd_total",
            "Unspent slices taken back from sidecars silent past their lease, by budget.",
            ["budget"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(_OwnerView(self))

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        reclaim_grace_s: float = RECLAIM_GRACE_S,
        registry: CollectorRegistry | None = None,
    ) -> QuotaOwner:
        kv = await open_bucket(js)
        return cls(kv, lease_ttl_s=lease_ttl_s, reclaim_grace_s=reclaim_grace_s, registry=registry)

    # -- serving -------------------------------------------------------------------------------

    async def start(self, nc: NATS) -> None:
        self._subscription = await nc.subscribe(LEASE_SUBJECT, queue=QUEUE_GROUP, cb=self._on_msg)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
            self._subscription = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_msg(self, msg: Msg) -> None:
        # nats-py awaits one callback at a time per subscription: hand each request to a task
        # so one account's compare-and-swap retries never hold up another account's lease.
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        async with self._slots:
            try:
                request = decode_request(msg.data)
            except msgspec.DecodeError as exc:
                self.requests.labels("invalid").inc()
                reply = LeaseReply(status="invalid", message=str(exc))
            else:
                try:
                    reply = await self.lease(request)
                except Exception:
                    # Boundary: one bad account (a bug, an entry we cannot read) must not
                    # end this replica's lease service for every other account.
                    log.exception("budget_lease_failed", budget=request.budget)
                    reply = LeaseReply(status="unavailable", message="internal error")
            if msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    await msg.respond(encode(reply))

    # -- deciding --------------------------------------------------------------------------------

    async def lease(self, request: LeaseRequest) -> LeaseReply:
        """Decide one request and store the result; never raises for NATS trouble."""
        problem = _invalid(request)
        if problem is not None:
            self.requests.labels("invalid").inc()
            return LeaseReply(status="invalid", message=problem)
        key = account_key(request.budget, request.scope, request.value, request.period_key)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            # Requests of one account queue here, so this replica never races itself.
            async with lock:
                reply = await self._decide(key, request)
        except (nats.errors.Error, TimeoutError) as exc:
            # Boundary: the store is down or slow. The sidecar keeps its slice or falls back
            # to its safe share, exactly as if this replica were unreachable.
            log.warning("budget_store_failed", error=str(exc) or type(exc).__name__)
            reply = LeaseReply(status="unavailable", message="budget store unavailable")
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
        self.requests.labels(_result(request, reply)).inc()
        return reply

    async def _decide(self, key: str, request: LeaseRequest) -> LeaseReply:
        for attempt in range(self._max_attempts):
            revision, account = await self._read(key)
            if account is None:
                account = Account(
                    budget=request.budget, scope=request.scope, value=request.value,
                    period_key=request.period_key, limit_usd=request.limit_usd,
                )  # fmt: skip
            now_ms = int(self._clock() * 1000)
            reclaimed = account.reclaimed_usd
            reply = account.lease(
                request, now_ms=now_ms, ttl_ms=self.ttl_ms, grace_ms=self.grace_ms
            )
            if reply.status != "ok":
                return reply
            data = _account_encoder.encode(account)
            try:
                if revision is None:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=revision)
            except KeyWrongLastSequenceError:
                # Another replica wrote first: re-read and decide again on its numbers.
                self.conflicts.inc()
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            self._seen[key] = account
            if reply.grant_usd:
                self.granted.labels(request.budget).inc(float(reply.grant_usd))
            if account.reclaimed_usd > reclaimed:
                self.reclaimed.labels(request.budget).inc(float(account.reclaimed_usd - reclaimed))
            return reply
        log.warning("budget_cas_exhausted", budget=request.budget, attempts=self._max_attempts)
        return LeaseReply(status="unavailable", message="too many concurrent writers")

    async def _read(self, key: str) -> tuple[int | None, Account | None]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None, None  # never written, or deleted (create() handles the marker)
        if entry.value is None or entry.revision is None:
            return None, None
        return entry.revision, _account_decoder.decode(entry.value)

    async def account(self, budget: str, scope: str, value: str, period_key: str) -> Account | None:
        """The stored account, for inspection and tests."""
        return (await self._read(account_key(budget, scope, value, period_key)))[1]

    def view(self) -> Iterable[tuple[str, Decimal, Decimal]]:
        """(budget, committed, limit) summed over the latest period of each budget this
        replica wrote; older periods are dropped from memory here."""
        latest: dict[str, str] = {}
        for account in self._seen.values():
            latest[account.budget] = max(latest.get(account.budget, ""), account.period_key)
        totals: dict[str, tuple[Decimal, Decimal]] = {}
        for key, account in list(self._seen.items()):
            if account.period_key != latest[account.budget]:
                del self._seen[key]
                continue
            committed, limit = totals.get(account.budget, (ZERO, ZERO))
            totals[account.budget] = (committed + account.committed(), limit + account.limit_usd)
        return [(budget, c, lim) for budget, (c, lim) in sorted(totals.items())]


async def serve_leases(
    nc: NATS,
    *,
    lease_ttl_s: float = LEASE_TTL_S,
    reclaim_grace_s: float = RECLAIM_GRACE_S,
    registry: CollectorRegistry | None = None,
    retry_s: float = 1.0,
) -> None:
    """policyd's quota owner: open the bucket (JetStream may still be starting), then answer
    lease requests until cancelled."""
    while True:
        try:
            kv = await open_bucket(nc.jetstream())
            break
        except nats.errors.Error as exc:
            # Boundary: keep trying; sidecars live on their slices and safe shares meanwhile.
            log.warning("budget_bucket_unavailable", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(retry_s)
    owner = QuotaOwner(
        kv, lease_ttl_s=lease_ttl_s, reclaim_grace_s=reclaim_grace_s, registry=registry
    )
    await owner.start(nc)
    log.info("budget_leases_serving", subject=LEASE_SUBJECT)
    try:
        await asyncio.Event().wait()
    finally:
        await owner.stop()


async def open_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(BUDGET_BUCKET)
    except BucketNotFoundError:
        # Identical config makes a racing create by another replica succeed as well.
        return await js.create_key_value(
            bucket=BUDGET_BUCKET, history=1, ttl=ENTRY_TTL_S,
            description="sidegate budget spend and leases",
        )  # fmt: skip


def _result(request: LeaseRequest, reply: LeaseReply) -> str:
    if reply.status != "ok":
        return reply.status
    if request.final:
        return "closed"
    if not request.want_usd:
        return "report"
    if reply.grant_usd >= request.want_usd:
        return "granted"
    return "partial" if reply.grant_usd > 0 else "exhausted"


class _OwnerView:
    """The owner's committed money per budget, read at scrape time."""

    def __init__(self, owner: QuotaOwner) -> None:
        self.owner = owner

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        committed = GaugeMetricFamily(
            "sidegate_policyd_budget_committed_usd",
            "Money spent or leased out in the current period, by budget (summed over scope "
            "values), as this replica last wrote it.",
            labels=["budget"],
        )
        limit = GaugeMetricFamily(
            "sidegate_policyd_budget_limit_usd",
            "The limit behind sidegate_policyd_budget_committed_usd (summed the same way).",
            labels=["budget"],
        )
        if with_values:
            for budget, spent, total in self.owner.view():
                committed.add_metric([budget], float(spent))
                limit.add_metric([budget], float(total))
        return [committed, limit]
