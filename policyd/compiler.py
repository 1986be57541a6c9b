"""Policy source → canonical `Bundle`: sorted names, flattened aliases, prices, hashed keys.

The bundle is canonical so its content hash only changes when policy does: names are sorted,
rules keep file-name-then-file order (their order is how authors read them), and anything
computed (prices, key hashes) is computed the same way every time. The revision is left at 0;
the publisher assigns it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import msgspec

from policyd.bundle import Bundle, Model, Price, ProviderKind, Rule, VirtualKey, content_hash
from policyd.checks import check, expiry_seconds
from policyd.problems import Invalid, Problem, Segment
from policyd.source import PolicySource, PriceSource, load_source

PRICE_SOURCE = f"genai-prices@{genai_prices.__version__}"

# genai-prices provider ids to try, in order, per provider kind. An openai_compatible server
# (vLLM, Ollama, a proxy) most often serves OpenAI-named or open models priced like OpenAI's
# catalogue; Azure OpenAI lists only some models, so it falls back to OpenAI's list price.
_GENAI_PROVIDERS: dict[ProviderKind, tuple[str, ...]] = {
    "openai": ("openai",),
    "openai_compatible": ("openai",),
    "azure": ("azure", "openai"),
    "anthropic": ("anthropic",),
    "gemini": ("google",),
    "bedrock": ("aws",),
}


def compile_dir(
    directory: Path, *, environ: Mapping[str, str] | None = None, now_ms: int | None = None
) -> Bundle | Invalid:
    """Load, check and compile a policy folder; every problem at once when it cannot be."""
    loaded = load_source(directory)
    problems = [*loaded.problems, *check(loaded.source)]
    if problems:
        return Invalid(tuple(sorted(problems)))
    return compile_source(loaded.source, environ=environ, now_ms=now_ms)


def compile_source(
    source: PolicySource, *, environ: Mapping[str, str] | None = None, now_ms: int | None = None
) -> Bundle | Invalid:
    """A checked source to a bundle; only key_env variables missing from `environ` can fail."""
    env = os.environ if environ is None else environ
    created_at = int(time.time() * 1000) if now_ms is None else now_ms
    priced_at = datetime.fromtimestamp(created_at / 1000, tz=UTC)
    problems: list[Problem] = []
    keys: list[VirtualKey] = []
    for at in source.virtual_keys:
        vk = at.value
        if vk.key_env is not None:
            plaintext = env.get(vk.key_env, "")
            if not plaintext:
                problems.append(
                    source.problem(at.file, (*at.path, "key_env"), f"${vk.key_env} is not set")
                )
                continue
            digest = hashlib.sha256(plaintext.encode()).hexdigest()
        elif vk.key_sha256 is not None:
            digest = vk.key_sha256.lower()
        else:
            continue  # already reported by the checks; compile_source trusts them
        keys.append(
            VirtualKey(
                id=vk.id,
                sha256=digest,
                tenant=vk.tenant,
                user=vk.user,
                scopes=vk.scopes,
                expires_at=expiry_seconds(vk.expires_at),
            )
        )
    if problems:
        return Invalid(tuple(sorted(problems)))

    prices = {name: at.value for name, at in source.prices.items()}
    kinds = {name: at.value.kind for name, at in source.providers.items()}
    bundle = Bundle(
        revision=0,
        content_hash="",
        created_at=created_at,
        providers={name: source.providers[name].value for name in sorted(source.providers)},
        models={
            name: _model(name, source.models[name].value, kinds, prices, priced_at)
            for name in sorted(source.models)
        },
        aliases={name: _resolve_alias(name, source) for name in sorted(source.aliases)},
        rules=tuple(_rule(at.value, at.file, at.path[1]) for at in source.rules),
        virtual_keys=tuple(sorted(keys, key=lambda k: k.id)),
    )
    return msgspec.structs.replace(bundle, content_hash=content_hash(bundle))


def _model(
    name: str,
    model: Model,
    kinds: Mapping[str, ProviderKind],
    prices: Mapping[str, PriceSource],
    at: datetime,
) -> Model:
    deployments = tuple(
        msgspec.structs.replace(d, price=_price(name, d.model, kinds[d.provider], prices, at))
        for d in model.deployments
    )
    return msgspec.structs.replace(model, deployments=deployments)


def _rule(rule: Rule, file: str, index: Segment) -> Rule:
    return msgspec.structs.replace(rule, source=f"{file}#rules[{index}]")


def _resolve_alias(name: str, source: PolicySource) -> str:
    """Follow alias chains to the model, so a sidecar resolves any alias in one lookup."""
    seen = {name}
    target = source.aliases[name].value
    while target in source.aliases and target not in seen:
        seen.add(target)
        target = source.aliases[target].value
    return target


# ---------------------------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------------------------


def _price(
    catalogue_name: str,
    upstream_model: str,
    kind: ProviderKind,
    overrides: Mapping[str, PriceSource],
    at: datetime,
) -> Price | None:
    """A negotiated override (the deployment's own model name first), else the public price."""
    override = overrides.get(upstream_model) or overrides.get(catalogue_name)
    if override is not None:
        return Price(
            input_per_mtok=_decimal(override.input_per_mtok),
            output_per_mtok=_decimal(override.output_per_mtok),
            cached_input_per_mtok=_optional(override.cached_input_per_mtok),
            cache_write_per_mtok=_optional(override.cache_write_per_mtok),
            source="policy",
        )
    return public_price(kind, upstream_model, at=at)


def public_price(kind: ProviderKind, model: str, *, at: datetime | None = None) -> Price | None:
    """The genai-prices list price of `model` served by a `kind` provider; None when unknown."""
    when = at or datetime.now(tz=UTC)
    for provider_id in _GENAI_PROVIDERS[kind]:
        try:
            found = genai_prices.calc_price(
                genai_prices.Usage(), model, provider_id=provider_id, genai_request_timestamp=when
            )
        except LookupError:
            continue
        rates = found.model_price
        input_rate = _per_mtok(rates, "input_mtok")
        if input_rate is None:
            continue
        return Price(
            input_per_mtok=_decimal(input_rate),
            # Embedding models have no output price: nothing is generated.
            output_per_mtok=_decimal(_per_mtok(rates, "output_mtok") or Decimal(0)),
            cached_input_per_mtok=_optional(_per_mtok(rates, "cache_read_mtok")),
            cache_write_per_mtok=_optional(_per_mtok(rates, "cache_write_mtok")),
            source=PRICE_SOURCE,
        )
    return None


def _per_mtok(rates: Any, name: str) -> Decimal | None:
    value = getattr(rates, name, None)
    if value is None:
        return None
    if isinstance(value, genai_prices.types.TieredPrices):
        # A bundle price has one rate per token kind; the base tier covers all but very long
        # prompts (e.g. over 200k tokens), where cost is then under-recorded, never refused.
        return Decimal(value.base)
    return Decimal(value)


def _decimal(value: Decimal) -> str:
    return format(value, "f")


def _optional(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")
