"""The sidecar's budget ledger: leased slices, worst-case reservations, settlement, safe share.

An account is one (budget, scope value, UTC period) as this sidecar sees it: the money the
quota owner granted it, what it gave back, what it spent and what requests in flight have
reserved. Everything here is plain arithmetic on Decimals, called from the request path
without I/O; the lease client (sidecar/leases.py) talks to the owner in the background and
feeds the answers back through `request()` and `answered()`.

Money a request may reserve:

    granted - released - spent - reserved        (the unspent slice, while the lease lives)
    + what is left of the safe share              (only without a lease decision, see below)

The safe share covers the moments without a lease: the first request of an account while its
first lease is on the way, and any time the owner is unreachable. What requests reserve
beyond the slice is counted against it, per account and UTC period, across idle spells, so a
sidecar can never reserve more than one safe share per period without a lease. Spend beyond
the slice reaches the owner as spent above granted, which it counts as committed and fills
from the next grant, so only a budget that is already exhausted is overshot: by at most one
safe share per sidecar and period. Once the owner has said "nothing left", the safe share is
off for that account until money is granted again.

A lease expires `ttl_ms` after its request was sent (the owner's clock starts later, so the
owner's expiry is always the later one); past it, the unreserved slice is given back and
nothing more is reserved against it. Renewal starts in the background once less than half a
slice is left, so busy accounts renew before they run dry.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from decimal import Decimal

import msgspec

from collector.record import UsageRecord
from policyd.bundle import Budget, Mode
from policyd.quota_wire import (
    ZERO,
    LeaseReply,
    LeaseRequest,
    Period,
    lease_size,
    period_end_s,
    period_key,
    safe_share,
)
from sidecar.context import RequestContext

RENEW_BELOW = Decimal("0.5")  # of the target slice: renew once less than this is left
DEFAULT_TTL_S = 60.0  # until the owner says otherwise
IDLE_S = 600.0  # an account unused this long gives its slice back and is forgotten
# Safe-share use of forgotten accounts kept for the rest of their period; past this many the
# oldest go (a caller idle that long may get a second safe share: the only loosening).
MAX_REMEMBERED = 100_000
RECHECK_S = 5.0  # an exhausted account asks again this often: others may give money back
MAX_BACKOFF_S = 10.0
# A reservation nobody settled (a bug: the proxy observes every request) counts as spent in
# full after this long, so it can neither leak memory nor hold money forever.
RESERVATION_TTL_S = 900.0


class BudgetSpec(msgspec.Struct, frozen=True):
    """A budget's policy compiled once: exact amounts, defaults applied."""

    name: str
    scope: str
    period: Period
    mode: Mode
    limit: Decimal
    lease: Decimal
    safe_share: Decimal

    @classmethod
    def compile(cls, budget: Budget) -> BudgetSpec:
        limit = Decimal(budget.limit_usd)
        lease = lease_size(limit, budget.lease_usd)
        return cls(
            name=budget.name,
            scope=budget.scope,
            period=budget.period,
            mode=budget.mode,
            limit=limit,
            lease=lease,
            safe_share=safe_share(limit, lease, budget.safe_share_usd),
        )


class Account:
    """This sidecar's share of one account. Totals are cumulative, as the owner reads them."""

    __slots__ = (
        "answered", "closing", "exhausted", "expires_at", "failures", "granted", "in_flight",
        "last_used", "next_try", "owner_remaining", "peak", "period_end", "period_key",
        "released", "reserved", "spec", "spent", "ttl_s", "unleased", "unreachable", "value",
    )  # fmt: skip

    def __init__(self, spec: BudgetSpec, value: str, now: float) -> None:
        self.spec = spec
        self.value = value
        self.period_key = period_key(spec.period, now)
        self.period_end = period_end_s(spec.period, now)
        self.granted = ZERO
        self.released = ZERO
        self.spent = ZERO
        self.reserved = ZERO
        self.unleased = ZERO  # reserved beyond the slice this period: the safe share used
        self.expires_at = 0.0
        self.ttl_s = DEFAULT_TTL_S
        self.answered = False  # the owner has decided on this account at least once
        self.unreachable = False  # the last lease request failed
        self.exhausted = False  # the owner's last answer could not fill the ask
        self.owner_remaining: Decimal | None = None
        self.in_flight = False
        self.next_try = 0.0
        self.failures = 0
        self.peak = ZERO  # the largest single reservation seen
        self.last_used = now
        self.closing = False

    @property
    def lease_left(self) -> Decimal:
        return self.granted - self.released - self.spent - self.reserved

    @property
    def safe_allowed(self) -> bool:
        return not self.exhausted and (not self.answered or self.unreachable)

    def expire(self, now: float) -> None:
        """Past the lease's expiry the owner may reclaim it: hand back what is not reserved."""
        if now >= self.expires_at:
            left = self.lease_left
            if left > 0:
                self.released += left

    def available(self, now: float) -> Decimal:
        """What a request may reserve right now: the slice left, plus the safe share if due."""
        self.expire(now)
        extra = max(self.spec.safe_share - self.unleased, ZERO) if self.safe_allowed else ZERO
        return max(self.lease_left, ZERO) + extra

    def remaining(self, now: float) -> Decimal:
        """The budget left as best known here: the owner's last figure plus our own slice."""
        self.expire(now)
        if self.owner_remaining is None:
            return max(self.spec.limit - self.spent - self.reserved, ZERO)
        return max(self.owner_remaining + max(self.lease_left, ZERO), ZERO)

    def target(self) -> Decimal:
        """The slice to hold: the policy's, or room for two of the largest requests seen."""
        return min(max(self.spec.lease, 2 * self.peak), self.spec.limit)

    def retry_after_s(self, now: float) -> float:
        """When asking again may help: the next period if the owner has nothing left, else
        once the renewal in the background has had time to land."""
        if self.exhausted:
            return max(1.0, self.period_end - now)
        return max(1.0, self.next_try - now)


class BudgetLedger:
    """Every account of one sidecar process; outlives bundles, so a policy swap resets nobody."""

    def __init__(
        self,
        *,
        holder: str,
        clock: Callable[[], float] = time.time,
        idle_s: float = IDLE_S,
        recheck_s: float = RECHECK_S,
    ) -> None:
        # A fresh holder per process: sequence numbers restart, so the owner must not mix
        # this process up with the one before it.
        self.holder = f"{holder or 'sidecar'}#{os.urandom(4).hex()}"
        self.now = clock
        self.idle_s = idle_s
        self.recheck_s = recheck_s
        self.wake = asyncio.Event()  # set when an account needs the lease client
        self._accounts: dict[tuple[str, str, str], Account] = {}
        self._closing: list[Account] = []
        self._unleased: dict[tuple[str, str, str], tuple[str, Decimal]] = {}  # forgotten ones
        self._reservations: dict[str, tuple[float, list[tuple[Account, Decimal]]]] = {}
        self._seq = 0
        self.results: dict[str, int] = {}  # lease requests by result, for /metrics

    def __len__(self) -> int:
        return len(self._accounts)

    def accounts(self) -> list[Account]:
        """The accounts of the current periods, for inspection."""
        return list(self._accounts.values())

    # -- the request path ------------------------------------------------------------------------

    def account(self, spec: BudgetSpec, value: str, now: float) -> Account:
        """The account for `value` in the current period; a new period starts a new account
        and sends the old one's leftovers back."""
        key = (spec.name, spec.scope, value)
        account = self._accounts.get(key)
        if account is None or now >= account.period_end or account.spec.period != spec.period:
            if account is not None:
                account.closing = True
                self._closing.append(account)
            account = self._accounts[key] = Account(spec, value, now)
            remembered = self._unleased.pop(key, None)
            if remembered is not None and remembered[0] == account.period_key:
                account.unleased = remembered[1]
            self.wake.set()
        account.spec = spec  # a new bundle's limit or slice size applies at once
        return account

    def reserve(self, record_id: str, account: Account, amount: Decimal, now: float) -> None:
        """Hold `amount` against the account until the request's record settles it."""
        account.unleased += max(amount - max(account.lease_left, ZERO), ZERO)
        account.reserved += amount
        account.last_used = now
        account.peak = max(account.peak, amount)
        entry = self._reservations.setdefault(record_id, (now, []))
        entry[1].append((account, amount))
        if not account.in_flight and account.lease_left < account.target() * RENEW_BELOW:
            self.wake.set()

    def short(self, account: Account, amount: Decimal) -> None:
        """A request of `amount` did not fit: size the next slice for it and renew now."""
        account.peak = max(account.peak, amount)
        self.wake.set()

    def settle(self, record_id: str, cost: Decimal) -> None:
        """Replace each reservation of a finished request with what it really cost."""
        entry = self._reservations.pop(record_id, None)
        if entry is None:
            return
        for account, amount in entry[1]:
            account.reserved -= amount
            account.spent += cost
            if account.closing and not account.reserved:
                self.wake.set()

    def settle_record(self, ctx: RequestContext, record: UsageRecord) -> None:
        """The proxy observer: settle with the record's exact cost (nothing if not priced)."""
        if record.id in self._reservations:
            self.settle(record.id, record.cost_usd or ZERO)

    # -- the lease client's side -----------------------------------------------------------------

    def due(self, now: float) -> list[Account]:
        """Accounts that need a lease request now (renew, heartbeat, close)."""
        self._sweep(now)
        due = [a for a in self._closing if not a.in_flight and not a.reserved and now >= a.next_try]
        for key, account in list(self._accounts.items()):
            if account.in_flight or now < account.next_try:
                continue
            account.expire(now)
            if now - account.last_used > self.idle_s and not account.reserved:
                del self._accounts[key]
                self._remember(key, account)
                if account.answered or account.granted or account.spent:
                    account.closing = True
                    self._closing.append(account)
                    due.append(account)
                continue
            low = account.lease_left < account.target() * RENEW_BELOW
            # A lease in use is renewed before it expires, so it never lapses under load.
            aging = account.expires_at - now < account.ttl_s / 3 and account.granted > 0
            if not account.answered or low or (aging and now - account.last_used < account.ttl_s):
                due.append(account)
        return due

    def request(self, account: Account, now: float) -> LeaseRequest:
        """The next lease request of `account`; marks it in flight."""
        account.in_flight = True
        self._seq += 1
        want = ZERO
        if account.closing:
            account.released = account.granted - account.spent  # nothing reserved: all back
        else:
            want = max(account.target() - account.lease_left, ZERO)
        return LeaseRequest(
            holder=self.holder,
            seq=self._seq,
            budget=account.spec.name,
            scope=account.spec.scope,
            value=account.value,
            period=account.spec.period,
            period_key=account.period_key,
            limit_usd=account.spec.limit,
            want_usd=want,
            granted_usd=account.granted,
            released_usd=max(account.released, ZERO),
            spent_usd=account.spent,
            final=account.closing,
        )

    def answered(
        self, account: Account, request: LeaseRequest, reply: LeaseReply | None, sent_at: float
    ) -> None:
        """Apply the owner's reply to `request`; None (or an error status) means no answer."""
        account.in_flight = False
        now = self.now()
        if reply is None or reply.status != "ok":
            result: str = "unreachable" if reply is None else reply.status
            self.results[result] = self.results.get(result, 0) + 1
            account.unreachable = True
            account.failures += 1
            account.next_try = now + min(0.25 * 2**account.failures, MAX_BACKOFF_S)
            return
        account.failures = 0
        account.unreachable = False
        account.answered = True
        if request.final:
            self.results["closed"] = self.results.get("closed", 0) + 1
            self._closing.remove(account)
            return
        account.granted = reply.granted_usd
        account.ttl_s = reply.ttl_ms / 1000
        account.expires_at = sent_at + account.ttl_s
        account.owner_remaining = reply.remaining_usd
        account.exhausted = reply.grant_usd < request.want_usd
        result = "exhausted" if account.exhausted else "granted"
        self.results[result] = self.results.get(result, 0) + 1
        account.next_try = now + self.recheck_s if account.exhausted else 0.0

    def retry_now(self) -> None:
        """NATS is back: ask at once instead of waiting out the backoff of failed requests."""
        for account in [*self._accounts.values(), *self._closing]:
            if account.unreachable:
                account.next_try = 0.0
        self.wake.set()

    def close_all(self) -> list[Account]:
        """On shutdown: every account with something to report, as closing ones."""
        for account in self._accounts.values():
            account.closing = True
            self._closing.append(account)
        self._accounts.clear()
        return [a for a in self._closing if not a.in_flight and not a.reserved]

    def _remember(self, key: tuple[str, str, str], account: Account) -> None:
        if account.unleased:
            if len(self._unleased) >= MAX_REMEMBERED:
                del self._unleased[next(iter(self._unleased))]
            self._unleased[key] = (account.period_key, account.unleased)

    def _sweep(self, now: float) -> None:
        cutoff = now - RESERVATION_TTL_S
        for record_id in [r for r, (stamp, _) in self._reservations.items() if stamp < cutoff]:
            _, held = self._reservations[record_id]
            self.settle(record_id, max(amount for _, amount in held))

    # -- telemetry -----------------------------------------------------------------------------

    def gauges(self) -> Iterable[tuple[str, float, float]]:
        """(budget, lowest remaining among its scope values, slices held) for /metrics."""
        now = self.now()
        rows: dict[str, tuple[Decimal, Decimal]] = {}
        for account in self._accounts.values():
            remaining = account.remaining(now)
            held = max(account.lease_left, ZERO)
            low, total = rows.get(account.spec.name, (remaining, ZERO))
            rows[account.spec.name] = (min(low, remaining), total + held)
        return [(name, float(low), float(held)) for name, (low, held) in sorted(rows.items())]
