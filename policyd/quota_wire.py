"""The budget lease contract between policyd's quota owner and the sidecars (msgspec, stdlib).

A sidecar asks for money of one account, a (budget, scope value, UTC period), on
`LEASE_SUBJECT` with a `LeaseRequest`; one policyd replica (a queue group) answers with a
`LeaseReply`. Every amount a sidecar reports is cumulative for its own share of the account
(granted, released, spent since it first asked), and each request carries a sequence number.
That keeps the exchange safe over an at-most-once transport: a reply lost on the way back is
corrected by the next request's `granted_usd`, and a request that arrives after a newer one
is ignored. The sidecar imports this module, so it must stay dependency-free.

Wire rules as for every wire struct: readers skip unknown fields, new fields get defaults,
fields are never renamed or retyped, units are in names. Decimals travel as strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import msgspec

LEASE_SUBJECT = "sidegate.budget.lease"
QUEUE_GROUP = "sidegate-quota"  # every policyd replica joins it; NATS picks one per request
BUDGET_BUCKET = "sidegate_budgets"  # the quota owner's JetStream KV bucket

Period = Literal["day", "month"]

ZERO = Decimal(0)
DEFAULT_LEASE_FRACTION = Decimal("0.01")
MIN_LEASE_USD = Decimal("0.10")
DEFAULT_SAFE_SHARE_FRACTION = Decimal("0.001")
MIN_SAFE_SHARE_USD = Decimal("0.01")


class LeaseRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A holder asks for up to `want_usd` of one account and reports its running totals."""

    holder: str  # one sidecar process: "<sidecar id>#<random>", new on every start
    seq: int  # grows with every request of this holder; older ones are ignored
    budget: str
    scope: str
    value: str  # the scope value: a tenant, an app, a key id; '["tenant","user"]' for users
    period: Period
    period_key: str  # "2026-11" (month) or "2026-11-22" (day), UTC
    limit_usd: Decimal  # from the asker's bundle; the latest request's limit applies
    want_usd: Decimal = ZERO  # 0: only report (a heartbeat, a release)
    granted_usd: Decimal = ZERO  # cumulative grants this holder has received replies for
    released_usd: Decimal = ZERO  # cumulative money handed back unspent
    spent_usd: Decimal = ZERO  # cumulative settled spend, leased or not
    final: bool = False  # the holder is done with this account: nothing in flight, rest back


class LeaseReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The owner's answer: the holder's authoritative grant total and the lease's lifetime."""

    # stale: an older request than one already answered; invalid: a malformed request;
    # unavailable: the owner could not reach its store. Only "ok" carries a lease.
    status: Literal["ok", "stale", "invalid", "unavailable"] = "ok"
    granted_usd: Decimal = ZERO  # the holder's cumulative grants, this one included
    grant_usd: Decimal = ZERO  # what this request added; less than asked near the limit
    remaining_usd: Decimal = ZERO  # the limit minus everything committed, after this grant
    ttl_ms: int = 0  # the lease is usable this long after the request was sent
    message: str = ""


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(LeaseRequest)
_reply_decoder = msgspec.json.Decoder(LeaseReply)


def encode(message: LeaseRequest | LeaseReply) -> bytes:
    return _encoder.encode(message)


def decode_request(data: bytes) -> LeaseRequest:
    return _request_decoder.decode(data)


def decode_reply(data: bytes) -> LeaseReply:
    return _reply_decoder.decode(data)


# ---------------------------------------------------------------------------------------------
# Slice sizes and calendar periods
# ---------------------------------------------------------------------------------------------


def lease_size(limit_usd: Decimal, lease_usd: str | None) -> Decimal:
    """The slice one sidecar leases at a time: the policy's, else 1% of the limit, ≥ $0.10."""
    if lease_usd is not None:
        return min(Decimal(lease_usd), limit_usd)
    return min(max(limit_usd * DEFAULT_LEASE_FRACTION, MIN_LEASE_USD), limit_usd)


def safe_share(limit_usd: Decimal, lease: Decimal, safe_share_usd: str | None) -> Decimal:
    """Spendable without a lease, per sidecar and account: the policy's, else 0.1% of the
    limit, at least $0.01 and at most one slice."""
    if safe_share_usd is not None:
        return Decimal(safe_share_usd)
    return min(max(limit_usd * DEFAULT_SAFE_SHARE_FRACTION, MIN_SAFE_SHARE_USD), lease)


def period_key(period: Period, at_s: float) -> str:
    """The UTC calendar period holding `at_s`: "2026-11-22" for a day, "2026-11" for a month."""
    moment = datetime.fromtimestamp(at_s, tz=UTC)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_end_s(period: Period, at_s: float) -> float:
    """Unix seconds at which the period holding `at_s` ends (the next one starts)."""
    moment = datetime.fromtimestamp(at_s, tz=UTC)
    if period == "day":
        start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        return start.timestamp() + 86_400
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()
