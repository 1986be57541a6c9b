"""Budgets in policy files: read into the bundle as written, with located errors for mistakes."""

from __future__ import annotations

from pathlib import Path

from budget_kit import write_policy

from policyd.bundle import Budget, Bundle
from policyd.compiler import compile_dir
from policyd.problems import Invalid


def compile_rules(tmp_path: Path, rules: str) -> Bundle | Invalid:
    return compile_dir(write_policy(tmp_path / "policy", rules))


def test_a_budget_is_read_into_the_bundle_with_its_defaults(tmp_path: Path) -> None:
    bundle = compile_rules(
        tmp_path,
        """
        rules:
          - name: acme
            match: {tenant: acme}
            budgets: [{name: acme-monthly, scope: tenant, limit_usd: "500", mode: shadow}]
        """,
    )
    assert isinstance(bundle, Bundle), bundle
    [budget] = bundle.rules[0].budgets or ()
    assert budget == Budget(name="acme-monthly", scope="tenant", limit_usd="500", mode="shadow")
    assert (budget.period, budget.lease_usd, budget.safe_share_usd) == ("month", None, None)


def test_amounts_that_are_not_positive_decimals_are_located(tmp_path: Path) -> None:
    invalid = compile_rules(
        tmp_path,
        """
        rules:
          - name: team
            budgets:
              - {name: a, scope: app, limit_usd: "0", lease_usd: "lots", safe_share_usd: "-1"}
        """,
    )
    assert isinstance(invalid, Invalid)
    assert {p.path for p in invalid.problems} == {
        "rules[0].budgets[0].limit_usd",
        "rules[0].budgets[0].lease_usd",
        "rules[0].budgets[0].safe_share_usd",
    }


def test_one_budget_name_cannot_mean_two_different_budgets(tmp_path: Path) -> None:
    invalid = compile_rules(
        tmp_path,
        """
        rules:
          - name: team
            budgets: [{name: shared, scope: tenant, limit_usd: "100"}]
          - name: search
            match: {endpoint: search}
            budgets:
              - {name: shared, scope: tenant, limit_usd: "100", mode: warn}
              - {name: other, scope: user, limit_usd: "5"}
              - {name: other, scope: user, limit_usd: "5"}
          - name: odd
            match: {app: odd}
            budgets: [{name: shared, scope: tenant, limit_usd: "200"}]
        """,
    )
    assert isinstance(invalid, Invalid)
    messages = [(p.path, p.message) for p in invalid.problems]
    assert messages[0] == ("rules[1].budgets[2].name", "duplicate budget name 'other'")
    assert messages[1][0] == "rules[2].budgets[0].name"
    assert "defined differently" in messages[1][1]
    assert len(messages) == 2  # the same budget in warn mode for one endpoint is fine
