"""The quota owner on a real nats-server: grants within the limit, CAS, returns, reclaims."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgspec
import pytest
from budget_kit import NOON, Clock, Connect
from nats.aio.client import Client as NATS

from policyd.quota import QuotaOwner, open_bucket
from policyd.quota_wire import (
    LEASE_SUBJECT,
    LeaseReply,
    LeaseRequest,
    decode_reply,
    encode,
)

D = Decimal
PERIOD = "2026-11"
CONFLICTS = "sidegate_policyd_budget_cas_conflicts_total"


class Holder:
    """A sidecar's side of the protocol, reduced to its totals."""

    def __init__(self, name: str, limit: str = "10") -> None:
        self.name = name
        self.limit = D(limit)
        self.seq = 0
        self.granted = self.released = self.spent = D(0)

    def request(self, want: str = "0", *, final: bool = False) -> LeaseRequest:
        self.seq += 1
        return LeaseRequest(
            holder=self.name, seq=self.seq, budget="team", scope="tenant", value="acme",
            period="month", period_key=PERIOD, limit_usd=self.limit, want_usd=D(want),
            granted_usd=self.granted, released_usd=self.released, spent_usd=self.spent,
            final=final,
        )  # fmt: skip

    def take(self, reply: LeaseReply) -> LeaseReply:
        assert reply.status == "ok", reply
        self.granted = reply.granted_usd
        return reply

    async def ask(self, owner: QuotaOwner, want: str = "0", *, final: bool = False) -> LeaseReply:
        return self.take(await owner.lease(self.request(want, final=final)))

    async def ask_over_nats(self, nc: NATS, want: str) -> LeaseReply:
        msg = await nc.request(LEASE_SUBJECT, encode(self.request(want)), timeout=5)
        return self.take(decode_reply(msg.data))


async def test_grants_over_nats_never_exceed_the_limit_across_concurrent_sidecars(
    owner: QuotaOwner, connect: Connect
) -> None:
    holders = [Holder(f"sidecar-{i}") for i in range(10)]
    connections = [await connect() for _ in range(3)]

    async def hammer(i: int, holder: Holder) -> None:
        for _ in range(5):
            await holder.ask_over_nats(connections[i % 3], "0.30")

    await asyncio.gather(*(hammer(i, h) for i, h in enumerate(holders)))
    assert sum(h.granted for h in holders) == D("10")  # 15 asked for, exactly 10 granted
    account = await owner.account("team", "tenant", "acme", PERIOD)
    assert account is not None
    assert account.committed() == D("10")
    assert {h: account.holders[h].granted_usd for h in account.holders} == {
        h.name: h.granted for h in holders
    }


async def test_two_owners_sharing_a_bucket_lose_nothing_to_compare_and_swap(
    connect: Connect,
) -> None:
    replicas = [QuotaOwner(await open_bucket((await connect()).jetstream())) for _ in range(2)]
    holders = [Holder(f"sidecar-{i}", limit="100") for i in range(16)]

    async def hammer(i: int, holder: Holder) -> None:
        for n in range(8):
            await holder.ask(replicas[(i + n) % 2], "1")

    await asyncio.gather(*(hammer(i, h) for i, h in enumerate(holders)))
    assert sum(h.granted for h in holders) == D("100")  # 128 asked for
    account = await replicas[0].account("team", "tenant", "acme", PERIOD)
    assert account is not None
    assert account.committed() == D("100")
    conflicts = [r.registry.get_sample_value(CONFLICTS) or 0 for r in replicas]
    assert sum(conflicts) > 0  # the races did happen, and were lost without losing money


async def test_money_handed_back_is_granted_again(owner: QuotaOwner) -> None:
    ann, bob = Holder("ann", limit="1"), Holder("bob", limit="1")
    assert (await ann.ask(owner, "1")).grant_usd == D("1")
    assert (await bob.ask(owner, "1")).grant_usd == 0
    ann.spent = D("0.30")
    await ann.ask(owner, final=True)
    reply = await bob.ask(owner, "1")
    assert (reply.grant_usd, reply.remaining_usd) == (D("0.70"), D(0))


async def test_an_expired_lease_is_reclaimed_for_others_but_its_reported_spend_stays(
    nc: NATS,
) -> None:
    clock = Clock()
    owner = QuotaOwner(
        await open_bucket(nc.jetstream()), lease_ttl_s=60, reclaim_grace_s=30, clock=clock
    )
    ann, bob = Holder("ann", limit="1"), Holder("bob", limit="1")
    await ann.ask(owner, "0.50")
    ann.spent = D("0.20")
    await ann.ask(owner, "0.50")  # ann holds 1.00 and has reported 0.20 spent
    clock.now = NOON + 89
    assert (await bob.ask(owner, "1")).grant_usd == 0
    clock.now = NOON + 91
    assert (await bob.ask(owner, "1")).grant_usd == D("0.80")
    account = await owner.account("team", "tenant", "acme", PERIOD)
    assert account is not None
    assert (account.reclaimed_usd, account.committed()) == (D("0.80"), D("1.00"))


async def test_a_late_report_from_a_reclaimed_sidecar_still_counts(nc: NATS) -> None:
    clock = Clock()
    owner = QuotaOwner(
        await open_bucket(nc.jetstream()), lease_ttl_s=60, reclaim_grace_s=30, clock=clock
    )
    ann, bob = Holder("ann", limit="1"), Holder("bob", limit="1")
    await ann.ask(owner, "0.50")
    clock.now = NOON + 91
    await bob.ask(owner, "0.40")
    ann.spent = D("0.30")  # spent before its lease lapsed, reported after the reclaim
    ann.released = D("0.20")
    await ann.ask(owner)
    assert (await bob.ask(owner, "1")).grant_usd == D("0.30")  # 1 - 0.30 - 0.40


async def test_a_grant_whose_reply_was_lost_is_undone_by_the_next_request(
    owner: QuotaOwner,
) -> None:
    ann = Holder("ann", limit="1")
    await owner.lease(ann.request("0.60"))  # granted, but ann never hears of it
    reply = await ann.ask(owner, "0.60")
    assert (reply.granted_usd, reply.remaining_usd) == (D("0.60"), D("0.40"))


async def test_a_request_older_than_one_already_answered_is_ignored(owner: QuotaOwner) -> None:
    ann = Holder("ann", limit="1")
    early = ann.request("0.50")
    await ann.ask(owner, "0.20")
    reply = await owner.lease(early)
    assert reply.status == "stale"
    account = await owner.account("team", "tenant", "acme", PERIOD)
    assert account is not None
    assert account.committed() == D("0.20")


async def test_a_restarted_owner_continues_from_the_stored_spend(connect: Connect) -> None:
    first = QuotaOwner(await open_bucket((await connect()).jetstream()))
    await Holder("ann", limit="1").ask(first, "0.75")
    restarted = QuotaOwner(await open_bucket((await connect()).jetstream()))
    assert (await Holder("bob", limit="1").ask(restarted, "1")).grant_usd == D("0.25")


async def test_each_period_has_a_spend_of_its_own(owner: QuotaOwner) -> None:
    ann = Holder("ann", limit="1")
    await ann.ask(owner, "1")
    december = msgspec.structs.replace(
        Holder("ann-2", limit="1").request("1"), period_key="2026-12"
    )
    assert (await owner.lease(december)).grant_usd == D("1")


async def test_malformed_and_negative_requests_are_refused(owner: QuotaOwner, nc: NATS) -> None:
    negative = msgspec.structs.replace(Holder("ann").request("1"), spent_usd=D("-5"))
    assert (await owner.lease(negative)).status == "invalid"
    msg = await nc.request(LEASE_SUBJECT, b"{not json", timeout=5)
    assert decode_reply(msg.data).status == "invalid"


async def test_the_owner_exports_committed_money_and_lease_results_per_budget(
    owner: QuotaOwner,
) -> None:
    await Holder("ann", limit="1").ask(owner, "0.30")
    await Holder("bob", limit="1").ask(owner, "0.90")
    read = owner.registry.get_sample_value
    assert read("sidegate_policyd_budget_committed_usd", {"budget": "team"}) == pytest.approx(1)
    assert read("sidegate_policyd_budget_limit_usd", {"budget": "team"}) == 1.0
    assert read("sidegate_policyd_budget_lease_requests_total", {"result": "granted"}) == 1.0
    assert read("sidegate_policyd_budget_lease_requests_total", {"result": "partial"}) == 1.0
    assert read("sidegate_policyd_budget_granted_usd_total", {"budget": "team"}) == pytest.approx(1)
