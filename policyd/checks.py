"""Semantic checks on merged policy source: references, loops, weights, duplicates, credentials.

The source structs already guarantee shapes and types; these checks find what only the whole
folder can tell: a rule allowing a model nobody defined, two rules that can never both win,
an alias that points back at itself. Each returns located problems; none stops the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from policyd.bundle import WILDCARD, Match
from policyd.problems import Problem, Segment
from policyd.source import Located, PolicySource

_CREDENTIAL = re.compile(r"^(?:env:[A-Za-z_][A-Za-z0-9_]*|file:/\S+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
TIER_PREFIX = "tier:"
_TIMEOUTS = ("connect_timeout_ms", "first_byte_timeout_ms", "total_timeout_ms")


def expiry_seconds(value: str | int | None) -> int | None:
    """`expires_at` as unix seconds: an int as is, an ISO date at 00:00 UTC, a datetime.

    A datetime without an offset is read as UTC: policy files travel between clusters and
    laptops, and a local-time reading would move the expiry with them.
    """
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    if len(text) == 10:
        day = date.fromisoformat(text)
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def check(source: PolicySource) -> list[Problem]:
    """Every semantic problem of a merged source, in file and line order."""
    checker = _Checker(source)
    checker.providers()
    checker.models()
    checker.aliases()
    checker.prices()
    checker.rules()
    checker.virtual_keys()
    return sorted(checker.problems)


class _Checker:
    def __init__(self, source: PolicySource) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.tiers = {m.value.tier for m in source.models.values() if m.value.tier}
        self.names = set(source.models) | set(source.aliases) | source.broken

    def report(self, at: Located[Any], inner: tuple[Segment, ...], message: str) -> None:
        self.problems.append(self.source.problem(at.file, at.path + inner, message))

    def refs(self, at: Located[Any], inner: tuple[Segment, ...], entries: Iterable[str]) -> None:
        """Allow/deny/scope entries: "*", a model, an alias, or `tier:<name>` of some model."""
        for i, entry in enumerate(entries):
            if entry == WILDCARD or entry in self.names:
                continue
            if entry.startswith(TIER_PREFIX):
                if entry[len(TIER_PREFIX) :] not in self.tiers:
                    self.report(at, (*inner, i), f"no model has tier '{entry[len(TIER_PREFIX) :]}'")
                continue
            self.report(at, (*inner, i), f"unknown model or alias '{entry}'")

    def positive(self, at: Located[Any], inner: tuple[Segment, ...], value: float | None) -> None:
        if value is not None and value <= 0:
            self.report(at, inner, f"must be greater than 0, got {value}")

    def providers(self) -> None:
        for at in self.source.providers.values():
            provider = at.value
            if provider.credential is not None and not _CREDENTIAL.match(provider.credential):
                self.report(
                    at, ("credential",), "must be env:NAME or file:/path, never the secret itself"
                )
            if not provider.base_url.startswith(("http://", "https://")):
                self.report(at, ("base_url",), "must start with http:// or https://")
            for name in _TIMEOUTS:
                self.positive(at, (name,), getattr(provider, name))

    def models(self) -> None:
        known_providers = set(self.source.providers) | self.source.broken
        for name, at in self.source.models.items():
            model = at.value
            if not model.deployments:
                self.report(at, ("deployments",), "needs at least one deployment")
            for i, deployment in enumerate(model.deployments):
                here: tuple[Segment, ...] = ("deployments", i)
                if deployment.provider not in known_providers:
                    self.report(
                        at, (*here, "provider"), f"unknown provider '{deployment.provider}'"
                    )
                if deployment.price is not None:
                    self.report(
                        at, (*here, "price"), "set by policyd; put negotiated rates in prices:"
                    )
                self.positive(at, (*here, "weight"), deployment.weight)
                for field in _TIMEOUTS:
                    self.positive(at, (*here, field), getattr(deployment, field))
            for i, fallback in enumerate(model.fallbacks):
                if fallback == name:
                    self.report(at, ("fallbacks", i), "a model cannot fall back to itself")
                elif fallback not in self.names:
                    self.report(at, ("fallbacks", i), f"unknown model or alias '{fallback}'")
            if model.mirror is not None:
                if model.mirror.model not in self.names:
                    self.report(
                        at, ("mirror", "model"), f"unknown model or alias '{model.mirror.model}'"
                    )
                if not 0 < model.mirror.percent <= 100:
                    self.report(at, ("mirror", "percent"), "must be above 0 and at most 100")

    def aliases(self) -> None:
        aliases = self.source.aliases
        for name, at in aliases.items():
            if name in self.source.models:
                self.report(at, (), f"alias '{name}' hides the model of the same name")
            if at.value not in self.names:
                self.report(at, (), f"unknown model or alias '{at.value}'")
        reported: set[frozenset[str]] = set()
        for start in sorted(aliases):
            chain = [start]
            target = aliases[start].value
            while target in aliases and target not in chain:
                chain.append(target)
                target = aliases[target].value
            if target in chain:
                loop = chain[chain.index(target) :]
                if frozenset(loop) not in reported:
                    reported.add(frozenset(loop))
                    first = min(loop)
                    rotated = loop[loop.index(first) :] + loop[: loop.index(first)]
                    path = " -> ".join([*rotated, first])
                    self.report(aliases[first], (), f"alias loop: {path}")

    def prices(self) -> None:
        deployed = {d.model for m in self.source.models.values() for d in m.value.deployments}
        for name, at in self.source.prices.items():
            if name not in self.source.models and name not in deployed:
                self.report(at, (), f"no model or deployment named '{name}'")
            for field in at.value.__struct_fields__:
                value = getattr(at.value, field)
                if isinstance(value, Decimal) and (not value.is_finite() or value < 0):
                    self.report(at, (field,), f"must be a price of 0 or more, got {value}")

    def rules(self) -> None:
        by_name: dict[str, Located[Any]] = {}
        by_match: dict[Match, Located[Any]] = {}
        budgets: dict[str, tuple[Located[Any], int]] = {}
        for at in self.source.rules:
            rule = at.value
            if rule.source:
                self.report(at, ("source",), "set by policyd to the file and index of the rule")
            if (first := by_name.get(rule.name)) is not None:
                where = self.source.where(first)
                self.report(at, ("name",), f"duplicate rule name '{rule.name}' (also at {where})")
            by_name.setdefault(rule.name, at)
            if (same := by_match.get(rule.match)) is not None:
                self.report(
                    at,
                    ("match",),
                    f"same match as rule '{same.value.name}' at {self.source.where(same)}; "
                    "merge them, only one could ever apply",
                )
            by_match.setdefault(rule.match, at)
            if rule.models is not None:
                self.refs(at, ("models", "allow"), rule.models.allow)
                self.refs(at, ("models", "deny"), rule.models.deny)
            if rule.caps is not None:
                self._caps(at)
            for i, limit in enumerate(rule.rate_limits or ()):
                if limit.rpm is None and limit.tpm is None:
                    self.report(at, ("rate_limits", i), "set rpm, tpm or both")
                self.positive(at, ("rate_limits", i, "rpm"), limit.rpm)
                self.positive(at, ("rate_limits", i, "tpm"), limit.tpm)
                self.positive(at, ("rate_limits", i, "burst"), limit.burst)
            if rule.required_metadata is not None and not rule.required_metadata.fields:
                self.report(at, ("required_metadata", "fields"), "list at least one field")
            self._budgets(at, budgets)

    def _caps(self, at: Located[Any]) -> None:
        caps = at.value.caps
        self.positive(at, ("caps", "max_tokens"), caps.max_tokens)
        self.positive(at, ("caps", "max_input_tokens"), caps.max_input_tokens)
        self.positive(at, ("caps", "deadline_ms"), caps.deadline_ms)
        if caps.max_cost_usd is not None:
            try:
                cost = Decimal(caps.max_cost_usd)
            except InvalidOperation:
                cost = Decimal("NaN")
            if not cost.is_finite() or cost <= 0:
                self.report(at, ("caps", "max_cost_usd"), "must be a decimal string above 0")

    def _budgets(self, at: Located[Any], seen: dict[str, tuple[Located[Any], int]]) -> None:
        """Amounts are decimals; a name is one spend counter, so it must mean one budget."""
        in_rule: set[str] = set()
        for i, budget in enumerate(at.value.budgets or ()):
            here: tuple[Segment, ...] = ("budgets", i)
            if budget.name in in_rule:
                self.report(at, (*here, "name"), f"duplicate budget name '{budget.name}'")
            in_rule.add(budget.name)
            limit = self._amount(at, (*here, "limit_usd"), budget.limit_usd, zero_ok=False)
            if budget.lease_usd is not None:
                self._amount(at, (*here, "lease_usd"), budget.lease_usd, zero_ok=False)
            if budget.safe_share_usd is not None:
                self._amount(at, (*here, "safe_share_usd"), budget.safe_share_usd, zero_ok=True)
            first = seen.setdefault(budget.name, (at, i))
            if first[0] is at:
                continue
            other = first[0].value.budgets[first[1]]
            other_limit = _decimal(other.limit_usd)
            if (other.scope, other.period, other_limit) != (budget.scope, budget.period, limit):
                self.report(
                    at, (*here, "name"),
                    f"budget '{budget.name}' is defined differently at "
                    f"{self.source.where(first[0])}; one name is one spend counter",
                )  # fmt: skip

    def _amount(
        self, at: Located[Any], path: tuple[Segment, ...], text: str, *, zero_ok: bool
    ) -> Decimal | None:
        value = _decimal(text)
        if value is None or value < 0 or (value == 0 and not zero_ok):
            bound = "0 or more" if zero_ok else "above 0"
            self.report(at, path, f'must be a decimal string {bound}, e.g. "500.00"')
            return None
        return value

    def virtual_keys(self) -> None:
        by_id: dict[str, Located[Any]] = {}
        for at in self.source.virtual_keys:
            key = at.value
            if (first := by_id.get(key.id)) is not None:
                where = self.source.where(first)
                self.report(at, ("id",), f"duplicate virtual key id '{key.id}' (also at {where})")
            by_id.setdefault(key.id, at)
            if (key.key_sha256 is None) == (key.key_env is None):
                self.report(at, (), "set exactly one of key_sha256 and key_env")
            if key.key_sha256 is not None and not _SHA256.match(key.key_sha256):
                self.report(at, ("key_sha256",), "must be 64 hex characters (a SHA-256)")
            if key.key_env is not None and not _ENV_NAME.match(key.key_env):
                self.report(at, ("key_env",), "must be an environment variable name")
            try:
                expiry_seconds(key.expires_at)
            except ValueError:
                self.report(
                    at, ("expires_at",), "expected an ISO date, an ISO datetime or unix seconds"
                )
            self.refs(at, ("scopes",), key.scopes)


def _decimal(text: str) -> Decimal | None:
    """A finite decimal, or None for anything else ("NaN", "Infinity", "five")."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None
