"""A verified bundle compiled once into the plain lookups the request path reads."""

from __future__ import annotations

import bisect
import os
import random
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from policyd.bundle import (
    WILDCARD,
    Auth,
    Budget,
    Bundle,
    Caps,
    Deployment,
    Mirror,
    Mode,
    Model,
    ModelAccess,
    Provider,
    RateLimit,
    RequiredMetadata,
    RoutingRule,
    Rule,
    VirtualKey,
)

T = TypeVar("T")

_MILLION = Decimal(1_000_000)
_RESOLVE_CACHE_MAX = 4096


class CompiledPrice(msgspec.Struct, frozen=True):
    """Per-token USD prices as Decimals, parsed once instead of per request."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    source: str

    @classmethod
    def from_price(cls, deployment: Deployment) -> CompiledPrice | None:
        p = deployment.price
        if p is None:
            return None
        inp = Decimal(p.input_per_mtok) / _MILLION
        return cls(
            input=inp,
            output=Decimal(p.output_per_mtok) / _MILLION,
            cached_input=(
                Decimal(p.cached_input_per_mtok) / _MILLION if p.cached_input_per_mtok else inp
            ),
            cache_write=(
                Decimal(p.cache_write_per_mtok) / _MILLION if p.cache_write_per_mtok else inp
            ),
            source=p.source,
        )


class Secret:
    """A credential that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret(***)"


# How each provider kind expects its key.
_AUTH_HEADER: dict[str, tuple[str, str]] = {
    "openai": ("authorization", "Bearer "),
    "openai_compatible": ("authorization", "Bearer "),
    "azure": ("api-key", ""),
    "anthropic": ("x-api-key", ""),
    "gemini": ("x-goog-api-key", ""),
    # A Bedrock API key; without a credential reference, requests are SigV4-signed instead.
    "bedrock": ("authorization", "Bearer "),
}


class CompiledDeployment(msgspec.Struct, frozen=True):
    provider_id: str
    provider: Provider
    model: str
    weight: int
    region: str | None
    price: CompiledPrice | None
    base_url: str  # without a trailing slash
    # None when the referenced credential is missing from the sidecar's environment.
    credential: Secret | None
    credential_error: str | None
    # Effective timeouts in seconds: the deployment's override, else the provider's.
    connect_timeout_s: float = 2.0
    first_byte_timeout_s: float = 60.0
    total_timeout_s: float = 600.0

    @property
    def label(self) -> str:
        return f"{self.provider_id}/{self.model}"

    @property
    def kind(self) -> str:
        return self.provider.kind

    def in_regions(self, regions: tuple[str, ...]) -> bool:
        """True when this deployment's region is one of `regions` or inside one ("eu-west-1"
        is inside "eu"); a deployment without a region is in none."""
        region = self.region
        if region is None:
            return False
        return any(region == r or region.startswith(r + "-") for r in regions)

    def request_headers(self) -> dict[str, str]:
        """Fresh upstream headers: static provider headers plus the credential, if any."""
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        headers.update(self.provider.headers)
        if self.credential is not None:
            name, prefix = _AUTH_HEADER.get(self.provider.kind, ("authorization", "Bearer "))
            headers[name] = prefix + self.credential.value
        return headers


class CompiledModel(msgspec.Struct, frozen=True):
    name: str
    kind: str
    deployments: tuple[CompiledDeployment, ...]
    cumulative_weights: tuple[int, ...]
    fallbacks: tuple[str, ...]
    tier: str | None
    strategy: str = "weighted"
    mirror: Mirror | None = None

    def pick(self, rng: random.Random) -> CompiledDeployment:
        """A weighted choice: one bisect instead of rebuilding a weights list per request."""
        if len(self.deployments) == 1:
            return self.deployments[0]
        point = rng.randrange(self.cumulative_weights[-1])
        return self.deployments[bisect.bisect_right(self.cumulative_weights, point)]


class Section(msgspec.Struct, Generic[T], frozen=True):
    """One policy section as resolved for a request, with the rule it came from."""

    rule: str
    config: T


class ResolvedPolicy(msgspec.Struct, frozen=True):
    """Per (tenant, app, endpoint): each section from the most specific rule that sets it."""

    models: Section[ModelAccess] | None
    allowed: frozenset[str] | None  # concrete model names; None: every model
    denied: frozenset[str]
    caps: Section[Caps] | None
    rate_limits: Section[tuple[RateLimit, ...]] | None
    required_metadata: Section[RequiredMetadata] | None
    auth: Section[Auth] | None
    routing: Section[RoutingRule] | None = None
    budgets: Section[tuple[Budget, ...]] | None = None

    def allows(self, model: str) -> bool:
        return model not in self.denied and (self.allowed is None or model in self.allowed)

    @property
    def models_mode(self) -> Mode:
        return self.models.config.mode if self.models else "enforce"


def read_credential(reference: str | None) -> tuple[Secret | None, str | None]:
    """Resolve `env:NAME` / `file:/path` in the sidecar's own environment: (secret, error)."""
    if reference is None:
        return None, None
    scheme, _, name = reference.partition(":")
    if scheme == "env":
        value = os.environ.get(name)
        if not value:
            return None, f"environment variable {name} is not set"
        return Secret(value), None
    if scheme == "file":
        try:
            return Secret(Path(name).read_text().strip()), None
        except OSError as exc:
            return None, f"credential file {name} cannot be read ({exc.strerror})"
    return None, f"unsupported credential reference scheme {scheme!r}"


def _compile_model(name: str, model: Model, providers: dict[str, Provider]) -> CompiledModel:
    deployments = []
    for d in model.deployments:
        provider = providers[d.provider]
        secret, error = read_credential(provider.credential)
        connect_ms = d.connect_timeout_ms or provider.connect_timeout_ms
        first_byte_ms = d.first_byte_timeout_ms or provider.first_byte_timeout_ms
        deployments.append(
            CompiledDeployment(
                connect_timeout_s=connect_ms / 1000,
                first_byte_timeout_s=first_byte_ms / 1000,
                total_timeout_s=(d.total_timeout_ms or provider.total_timeout_ms) / 1000,
                provider_id=d.provider,
                provider=provider,
                model=d.model,
                weight=d.weight,
                region=d.region or provider.region,
                price=CompiledPrice.from_price(d),
                base_url=provider.base_url.rstrip("/"),
                credential=secret,
                credential_error=error,
            )
        )
    cumulative, total = [], 0
    for compiled in deployments:
        total += compiled.weight
        cumulative.append(total)
    return CompiledModel(
        name=name,
        kind=model.kind,
        deployments=tuple(deployments),
        cumulative_weights=tuple(cumulative),
        fallbacks=model.fallbacks,
        tier=model.tier,
        strategy=model.strategy,
        mirror=model.mirror,
    )


class CompiledBundle:
    """The active policy: immutable after construction, swapped as one reference."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.revision = bundle.revision
        # Whether any rule needs prompt-token estimates before the call.
        self.estimates_tokens = any(
            (r.caps is not None and (r.caps.max_input_tokens or r.caps.max_cost_usd))
            or any(limit.tpm for limit in r.rate_limits or ())
            or r.budgets
            for r in bundle.rules
        )
        self.content_hash = bundle.content_hash
        self.models = {
            name: _compile_model(name, m, bundle.providers) for name, m in bundle.models.items()
        }
        self.aliases = {a: self._follow_alias(a) for a in bundle.aliases}
        self.tiers: dict[str, tuple[str, ...]] = {}
        for name in sorted(self.models):
            tier = self.models[name].tier
            if tier:
                self.tiers[tier] = (*self.tiers.get(tier, ()), name)
        self.virtual_keys: dict[str, VirtualKey] = {k.sha256: k for k in bundle.virtual_keys}
        # Fallback chains and mirror targets resolved once; an unknown name is an inconsistent
        # bundle (KeyError), rejected whole like any other.
        self.fallbacks: dict[str, tuple[CompiledModel, ...]] = {
            name: tuple(self._require(f) for f in m.fallbacks if f != name)
            for name, m in self.models.items()
        }
        self.mirrors: dict[str, CompiledModel] = {
            name: self._require(m.mirror.model)
            for name, m in self.models.items()
            if m.mirror is not None
        }
        # Most specific first, so the first match per section wins.
        self._rules = sorted(bundle.rules, key=lambda r: -r.match.specificity)
        self._resolved: dict[tuple[str, str, str], ResolvedPolicy] = {}

    def _follow_alias(self, name: str) -> str:
        seen = {name}
        target = self.bundle.aliases[name]
        while target in self.bundle.aliases and target not in seen:
            seen.add(target)
            target = self.bundle.aliases[target]
        return target

    def _require(self, name: str) -> CompiledModel:
        model = self.resolve_model(name)
        if model is None:
            raise KeyError(f"unknown model or alias {name!r} in a fallback or mirror")
        return model

    def resolve_model(self, requested: str) -> CompiledModel | None:
        """Alias, `tier:<name>` or a catalogue name to a model; None when unknown."""
        model = self.models.get(requested)
        if model is not None:
            return model
        target = self.aliases.get(requested)
        if target is not None:
            return self.models.get(target)
        if requested.startswith("tier:"):
            names = self.tiers.get(requested[5:])
            return self.models[names[0]] if names else None
        return None

    def expand(self, entries: Iterable[str]) -> frozenset[str] | None:
        """Allow/deny entries (names, aliases, tiers, "*") to concrete names; None is all."""
        names: set[str] = set()
        for entry in entries:
            if entry == WILDCARD:
                return None
            if entry.startswith("tier:"):
                names.update(self.tiers.get(entry[5:], ()))
            else:
                names.add(self.aliases.get(entry, entry))
        return frozenset(names)

    def policy_for(self, tenant: str, app: str, endpoint: str) -> ResolvedPolicy:
        key = (tenant, app, endpoint)
        resolved = self._resolved.get(key)
        if resolved is None:
            if len(self._resolved) >= _RESOLVE_CACHE_MAX:
                # Header-driven keys are unbounded; a reset keeps memory flat and costs one
                # cheap recomputation per key.
                self._resolved.clear()
            resolved = self._resolved[key] = self._resolve(tenant, app, endpoint)
        return resolved

    def _resolve(self, tenant: str, app: str, endpoint: str) -> ResolvedPolicy:
        matching = [r for r in self._rules if _matches(r, tenant, app, endpoint)]

        def first(attr: str) -> Section[Any] | None:
            for rule in matching:
                value = getattr(rule, attr)
                if value is not None:
                    return Section(rule.name, value)
            return None

        models: Section[ModelAccess] | None = first("models")
        return ResolvedPolicy(
            models=models,
            allowed=self.expand(models.config.allow) if models else None,
            denied=(self.expand(models.config.deny) or frozenset()) if models else frozenset(),
            caps=first("caps"),
            rate_limits=first("rate_limits"),
            required_metadata=first("required_metadata"),
            auth=first("auth"),
            routing=first("routing"),
            budgets=first("budgets"),
        )

    def allowed_models(self, policy: ResolvedPolicy) -> list[str]:
        return sorted(name for name in self.models if policy.allows(name))


def _matches(rule: Rule, tenant: str, app: str, endpoint: str) -> bool:
    m = rule.match
    return (
        (m.tenant == WILDCARD or m.tenant == tenant)
        and (m.app == WILDCARD or m.app == app)
        and (m.endpoint == WILDCARD or m.endpoint == endpoint)
    )
