"""The budget stage: worst-case reservations, denials in enforce, would-deny in warn and shadow."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from budget_kit import Clock, chat, compiled, grant, routed

from collector.record import UsageRecord
from sidecar.budgets import BudgetLedger
from sidecar.pipeline import WARNING_HEADER, Pipeline, Violation
from sidecar.policy import CompiledBundle
from sidecar.stages.budget import Budget, worst_case
from sidecar.stages.caps import input_tokens

D = Decimal
RULES = """
rules:
  - name: team
    budgets:
      - {name: team-daily, scope: tenant, limit_usd: "1", period: day, lease_usd: "0.01",
         safe_share_usd: "0.001"}
  - name: trial
    match: {tenant: globex}
    budgets: [{name: trial, scope: tenant, limit_usd: "1", safe_share_usd: "0", mode: shadow}]
  - name: loud
    match: {tenant: tyrell}
    budgets: [{name: loud, scope: tenant, limit_usd: "1", safe_share_usd: "0", mode: warn}]
  - name: per-user
    match: {tenant: initech}
    budgets: [{name: per-user, scope: user, limit_usd: "1", safe_share_usd: "0.001"}]
"""


@pytest.fixture
def bundle(tmp_path: Path) -> CompiledBundle:
    return compiled(tmp_path / "policy", RULES)


@pytest.fixture
def ledger() -> BudgetLedger:
    return BudgetLedger(holder="sidecar-a", clock=Clock())


def ask(
    bundle: CompiledBundle, ledger: BudgetLedger, *, tenant: str = "acme", **headers: str
) -> tuple[str, Violation | None]:
    """One request with max_tokens 50 through the stage; returns its record id and result."""
    ctx = routed(bundle, chat(max_tokens=50), {"x-sidegate-tenant": tenant, **headers})
    return ctx.record_id, Budget(ledger)(ctx)


def test_the_worst_case_is_the_prompt_and_the_output_limit_at_the_deployments_price(
    bundle: CompiledBundle,
) -> None:
    ctx = routed(bundle, chat(max_tokens=50))
    prompt = input_tokens(ctx)
    assert worst_case(ctx) == prompt * D("0.0000025") + 50 * D("0.00001")


def test_a_request_reserves_its_worst_case_and_settles_with_the_records_cost(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    ctx = routed(bundle, chat(max_tokens=50))
    assert Budget(ledger)(ctx) is None
    [account] = ledger.accounts()
    assert account.reserved == worst_case(ctx)
    ledger.settle_record(ctx, UsageRecord(id=ctx.record_id, ts_ms=0, cost_usd=D("0.0002")))
    assert (account.reserved, account.spent) == (D(0), D("0.0002"))
    assert ctx.response_headers["x-sidegate-budget"] == "team-daily"
    assert ctx.response_headers["x-sidegate-budget-limit"] == "1"


def test_an_enforced_budget_denies_what_the_slice_cannot_cover(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    assert ask(bundle, ledger)[1] is None  # about $0.00053 of the $0.001 safe share
    _, result = ask(bundle, ledger)
    assert isinstance(result, Violation)
    reject = result.reject
    assert (reject.status, reject.error_class, reject.code) == (429, "budget_exceeded",
                                                                "budget_exceeded")  # fmt: skip
    assert reject.retry_after_s == 1.0
    assert "until the quota owner answers" in reject.message
    assert ledger.wake.is_set()  # the renewal is already asked for


def test_a_spent_budget_says_when_it_resets(bundle: CompiledBundle, ledger: BudgetLedger) -> None:
    ask(bundle, ledger)
    account = ledger.accounts()[0]
    grant(ledger, account, "0")
    _, result = ask(bundle, ledger)
    assert isinstance(result, Violation)
    assert result.reject.retry_after_s == 12 * 3600  # noon to midnight UTC
    assert "resets at 2026-11-23T00:00:00Z" in result.reject.message


def test_a_denied_request_is_not_charged(bundle: CompiledBundle, ledger: BudgetLedger) -> None:
    ask(bundle, ledger)
    account = ledger.accounts()[0]
    before = account.reserved
    ask(bundle, ledger)
    assert account.reserved == before


def test_a_granted_slice_lets_requests_through_with_the_remaining_budget_in_a_header(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    ask(bundle, ledger)
    account = ledger.accounts()[0]
    grant(ledger, account, "0.9")
    ctx = routed(bundle, chat(max_tokens=50))
    assert Budget(ledger)(ctx) is None
    # The owner's last figure plus the part of our slice that nothing has reserved yet.
    assert account.owner_remaining is not None
    expected = (account.owner_remaining + account.lease_left).quantize(D("0.000001"))
    assert D(ctx.response_headers["x-sidegate-budget-remaining"]) == expected
    assert D("0.89") < expected < D("0.9")


def test_a_shadow_budget_records_a_would_deny_and_lets_the_request_through(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    ctx = routed(bundle, chat(max_tokens=50), {"x-sidegate-tenant": "globex"})
    assert Pipeline([Budget(ledger)]).run(ctx) is None
    [decision] = ctx.decisions
    assert (decision.stage, decision.rule, decision.mode, decision.outcome) == (
        "budget", "trial", "shadow", "would_deny",
    )  # fmt: skip
    assert decision.reason.startswith("budget_exceeded: ")
    assert not any(h.startswith("x-sidegate-budget") for h in ctx.response_headers)
    assert ledger.accounts()[0].reserved == 0


def test_a_warn_budget_tells_the_caller_and_lets_the_request_through(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    ctx = routed(bundle, chat(max_tokens=50), {"x-sidegate-tenant": "tyrell"})
    assert Pipeline([Budget(ledger)]).run(ctx) is None
    assert ctx.response_headers[WARNING_HEADER] == "budget/loud: budget_exceeded"
    assert ctx.decisions[0].outcome == "would_deny"


def test_a_shadow_budget_that_allows_charges_its_account(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    ask(bundle, ledger, tenant="globex")
    account = ledger.accounts()[0]
    grant(ledger, account, "1")
    ctx = routed(bundle, chat(max_tokens=50), {"x-sidegate-tenant": "globex"})
    assert Pipeline([Budget(ledger)]).run(ctx) is None
    assert ctx.decisions == []
    assert account.reserved == worst_case(ctx)


def test_each_user_spends_from_an_account_of_their_own(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    assert ask(bundle, ledger, tenant="initech", **{"x-sidegate-user": "ann"})[1] is None
    assert ask(bundle, ledger, tenant="initech", **{"x-sidegate-user": "ann"})[1] is not None
    assert ask(bundle, ledger, tenant="initech", **{"x-sidegate-user": "bob"})[1] is None
    values = sorted(a.value for a in ledger.accounts())
    assert values == ['["initech","ann"]', '["initech","bob"]']


def test_a_model_without_a_price_passes_every_budget(
    bundle: CompiledBundle, ledger: BudgetLedger
) -> None:
    for _ in range(3):
        ctx = routed(bundle, chat("unpriced", max_tokens=50))
        assert Budget(ledger)(ctx) is None
    assert len(ledger) == 0
