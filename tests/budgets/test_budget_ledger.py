"""The sidecar's budget ledger: slices, reservations, settlement, renewal, periods, safe share."""

from __future__ import annotations

from decimal import Decimal

import pytest
from budget_kit import NOON, Clock, fail, grant

from policyd.bundle import Budget
from policyd.quota_wire import lease_size, period_end_s, period_key, safe_share
from sidecar.budgets import BudgetLedger, BudgetSpec

D = Decimal
SPEC = BudgetSpec.compile(
    Budget(name="team", scope="tenant", limit_usd="10", period="day", lease_usd="1",
           safe_share_usd="0.10")
)  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock) -> BudgetLedger:
    return BudgetLedger(holder="sidecar-a", clock=clock)


def test_a_new_account_may_spend_only_its_safe_share_until_the_first_lease(
    ledger: BudgetLedger,
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    assert account.available(NOON) == D("0.10")
    assert ledger.due(NOON) == [account]


def test_a_granted_slice_is_what_requests_may_reserve(ledger: BudgetLedger) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10")
    assert account.granted == D("1")
    assert account.available(NOON) == D("1")  # the safe share is off once the owner answered
    ledger.reserve("r1", account, D("0.30"), NOON)
    assert account.available(NOON) == D("0.70")


def test_settlement_replaces_the_reservation_with_the_real_cost(ledger: BudgetLedger) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10")
    ledger.reserve("r1", account, D("0.30"), NOON)
    ledger.settle("r1", D("0.012345"))
    assert (account.reserved, account.spent) == (D(0), D("0.012345"))
    assert account.available(NOON) == D("0.987655")


def test_settling_an_unknown_request_changes_nothing(ledger: BudgetLedger) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10")
    ledger.settle("never-reserved", D("5"))
    assert account.spent == 0


def test_renewal_is_due_once_less_than_half_a_slice_is_left(ledger: BudgetLedger) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10")
    ledger.reserve("r1", account, D("0.50"), NOON)
    assert ledger.due(NOON) == []
    ledger.reserve("r2", account, D("0.01"), NOON)
    assert ledger.due(NOON) == [account]
    assert ledger.request(account, NOON).want_usd == D("0.51")  # back up to one slice


def test_a_request_larger_than_a_slice_sizes_the_next_slice_for_it(ledger: BudgetLedger) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10")
    ledger.short(account, D("2.50"))
    assert ledger.request(account, NOON).want_usd == D("4")  # room for two such requests


def test_a_lease_in_use_is_renewed_before_it_expires(ledger: BudgetLedger, clock: Clock) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10", ttl_s=60)
    clock.now = NOON + 30
    ledger.reserve("r1", account, D("0.01"), clock.now)
    assert ledger.due(clock.now) == []
    clock.now = NOON + 45
    assert ledger.due(clock.now) == [account]


def test_an_expired_lease_gives_back_what_is_not_reserved(
    ledger: BudgetLedger, clock: Clock
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10", ttl_s=60)
    ledger.reserve("r1", account, D("0.25"), NOON)
    clock.now = NOON + 61
    assert account.available(clock.now) == 0
    assert account.released == D("0.75")
    ledger.settle("r1", D("0.05"))
    assert account.available(clock.now) == 0  # what the request did not spend goes back too
    assert account.released == D("0.95")


def test_a_new_period_starts_a_new_account_and_closes_the_old_one(
    ledger: BudgetLedger, clock: Clock
) -> None:
    clock.now = period_end_s("day", NOON) - 10  # 23:59:50
    today = ledger.account(SPEC, "acme", clock.now)
    grant(ledger, today, "10")
    ledger.reserve("r1", today, D("0.40"), clock.now)
    clock.now += 11
    tomorrow = ledger.account(SPEC, "acme", clock.now)
    assert tomorrow is not today
    assert (today.period_key, tomorrow.period_key) == ("2026-11-22", "2026-11-23")
    assert today not in ledger.due(clock.now)  # its request is still in flight
    ledger.settle("r1", D("0.10"))
    assert today in ledger.due(clock.now)
    final = ledger.request(today, clock.now)
    assert final.final
    assert (final.spent_usd, final.released_usd, final.want_usd) == (D("0.10"), D("0.90"), D(0))


def test_an_unreachable_owner_lets_the_safe_share_apply_on_top_of_the_slice(
    ledger: BudgetLedger,
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10")
    ledger.reserve("r1", account, D("0.60"), NOON)
    fail(ledger, account)
    assert account.unreachable
    assert account.available(NOON) == D("0.50")  # 0.40 of the slice + the 0.10 safe share
    ledger.reserve("r2", account, D("0.50"), NOON)
    assert account.available(NOON) == 0


def test_an_exhausted_budget_gets_no_safe_share_even_when_the_owner_is_gone(
    ledger: BudgetLedger,
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "0")
    assert account.exhausted
    fail(ledger, account)
    assert account.available(NOON) == 0


def test_spend_beyond_the_slice_is_reported_and_filled_by_the_next_grant(
    ledger: BudgetLedger,
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    fail(ledger, account)
    ledger.reserve("r1", account, D("0.08"), NOON)
    ledger.settle("r1", D("0.08"))
    request = ledger.request(account, NOON)
    assert (request.granted_usd, request.spent_usd, request.want_usd) == (
        D(0),
        D("0.08"),
        D("1.08"),
    )


def test_the_safe_share_is_spent_once_per_period_even_across_idle_spells(
    ledger: BudgetLedger, clock: Clock
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    ledger.reserve("r1", account, D("0.06"), NOON)
    ledger.settle("r1", D("0.02"))
    clock.now = NOON + ledger.idle_s + 1
    [closing] = ledger.due(clock.now)
    ledger.answered(closing, ledger.request(closing, clock.now), None, clock.now)
    again = ledger.account(SPEC, "acme", clock.now)
    assert again is not account
    assert again.available(clock.now) == D("0.04")


def test_failed_lease_requests_back_off(ledger: BudgetLedger, clock: Clock) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    fail(ledger, account)
    fail(ledger, account)
    assert ledger.due(clock.now) == []
    clock.now += 1.01
    assert ledger.due(clock.now) == [account]


def test_an_idle_account_hands_its_slice_back_and_is_forgotten(
    ledger: BudgetLedger, clock: Clock
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10", ttl_s=3600)
    clock.now = NOON + ledger.idle_s + 1
    assert ledger.due(clock.now) == [account]
    assert ledger.request(account, clock.now).final
    assert len(ledger) == 0


def test_each_scope_value_has_an_account_of_its_own(ledger: BudgetLedger) -> None:
    assert ledger.account(SPEC, "acme", NOON) is not ledger.account(SPEC, "globex", NOON)
    assert ledger.account(SPEC, "acme", NOON) is ledger.account(SPEC, "acme", NOON + 1)


def test_a_reservation_nobody_settles_counts_as_spent_after_a_while(
    ledger: BudgetLedger, clock: Clock
) -> None:
    account = ledger.account(SPEC, "acme", NOON)
    grant(ledger, account, "10", ttl_s=3600)
    ledger.reserve("lost", account, D("0.20"), NOON)
    clock.now = NOON + 901
    ledger.due(clock.now)
    assert (account.reserved, account.spent) == (D(0), D("0.20"))


def test_sequence_numbers_grow_across_accounts(ledger: BudgetLedger) -> None:
    first = ledger.request(ledger.account(SPEC, "acme", NOON), NOON)
    second = ledger.request(ledger.account(SPEC, "globex", NOON), NOON)
    assert second.seq > first.seq
    assert first.holder == second.holder != BudgetLedger(holder="sidecar-a").holder


def test_default_slices_are_a_percent_of_the_limit_and_never_tiny() -> None:
    assert lease_size(D("500"), None) == D("5.00")
    assert lease_size(D("3"), None) == D("0.10")
    assert lease_size(D("0.05"), None) == D("0.05")  # never more than the limit
    assert safe_share(D("500"), D("5"), None) == D("0.500")
    assert safe_share(D("3"), D("0.10"), None) == D("0.01")


def test_periods_are_utc_calendar_days_and_months() -> None:
    assert period_key("month", NOON) == "2026-11"
    assert period_end_s("month", NOON) == 1_796_083_200.0  # 2026-12-01T00:00:00Z
    assert period_end_s("month", 1_796_083_199.0) == 1_796_083_200.0
    assert period_key("month", 1_796_083_200.0) == "2026-12"
    assert period_end_s("month", 1_796_083_200.0) == 1_798_761_600.0  # 2027-01-01T00:00:00Z
