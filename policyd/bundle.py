"""The policy bundle contract between policyd and every sidecar (msgspec and stdlib only).

A bundle is the compiled, canonical form of the policy files. policyd produces it; sidecars
verify it and compile it once into lookup tables. The sidecar imports this module and nothing
else from policyd, so it must stay dependency-free.

Evolution rules (msgspec): new fields get defaults; never rename or retype a field. Config
structs here are decoded from policyd's own output, so they forbid unknown fields: a bundle
from a newer policyd that a sidecar cannot understand is rejected, never half-applied.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

Mode = Literal["enforce", "warn", "shadow", "off"]
"""How a stage acts on a violation: deny, allow with a header and a record, record only, skip."""

ProviderKind = Literal["openai", "openai_compatible", "azure", "anthropic", "gemini", "bedrock"]
Scope = Literal["tenant", "app", "user", "key", "endpoint"]

WILDCARD = "*"


class _Config(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Base for bundle structs: typos fail loudly, defaults stay out of the canonical bytes."""


# ---------------------------------------------------------------------------------------------
# Providers and the model catalogue
# ---------------------------------------------------------------------------------------------


class RetryPolicy(_Config, frozen=True):
    """How failed calls to a provider's deployments are retried (backoff with full jitter)."""

    max_attempts: int = 3  # per model of a fallback chain, the first attempt included
    base_backoff_ms: int = 100
    max_backoff_ms: int = 5_000
    max_retry_after_ms: int = 30_000  # a longer retry-after moves on instead of waiting
    # The retry budget, per deployment: retries may add at most this share of its requests,
    # plus a small floor per second so a quiet sidecar can still retry at all.
    budget_ratio: float = 0.1
    budget_min_per_s: float = 1.0


class BreakerPolicy(_Config, frozen=True):
    """When a deployment's circuit opens (it is skipped) and how it is probed again."""

    consecutive_failures: int = 5
    error_rate: float = 0.5  # of the calls in the window, once min_requests were made
    min_requests: int = 20
    window_ms: int = 30_000
    open_ms: int = 30_000
    half_open_probes: int = 1


class Provider(_Config, frozen=True):
    """An upstream API endpoint. The credential is a reference, never the secret itself."""

    kind: ProviderKind
    base_url: str
    # "env:NAME" or "file:/path" resolved in the sidecar container; None sends no credential.
    credential: str | None = None
    api_version: str | None = None  # Azure OpenAI api-version
    region: str | None = None
    connect_timeout_ms: int = 2_000
    first_byte_timeout_ms: int = 60_000
    total_timeout_ms: int = 600_000
    headers: dict[str, str] = {}
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    max_connections: int = 100  # keep-alive pool size for this provider
    tls_verify: bool = True  # off only for a lab server with a self-signed certificate
    ca_file: str | None = None  # a PEM bundle to trust instead of the system store


class Price(_Config, frozen=True):
    """USD per million tokens; strings so the canonical form keeps exact decimals."""

    input_per_mtok: str
    output_per_mtok: str
    cached_input_per_mtok: str | None = None
    cache_write_per_mtok: str | None = None
    source: str = "policy"  # "policy" (negotiated override) or "genai-prices@<version>"


class Deployment(_Config, frozen=True):
    """One concrete place a model is served."""

    provider: str
    model: str  # the model name the upstream expects
    weight: int = 100
    region: str | None = None
    price: Price | None = None  # None: unknown price, cost is recorded as null
    # Per-deployment overrides of the provider's timeouts.
    connect_timeout_ms: int | None = None
    first_byte_timeout_ms: int | None = None
    total_timeout_ms: int | None = None


class Mirror(_Config, frozen=True):
    """Shadow traffic: a copy of some requests goes to a candidate model, never to the caller."""

    model: str
    percent: float = 100.0


class Model(_Config, frozen=True):
    """A model name callers may ask for, and where it is served."""

    deployments: tuple[Deployment, ...]
    kind: Literal["chat", "embedding"] = "chat"
    fallbacks: tuple[str, ...] = ()
    tier: str | None = None  # e.g. "cheap": callers may ask for "tier:cheap"
    # "weighted": split by weight (canaries); "latency": the fastest healthy deployment.
    strategy: Literal["weighted", "latency"] = "weighted"
    mirror: Mirror | None = None


# ---------------------------------------------------------------------------------------------
# Policy rules
# ---------------------------------------------------------------------------------------------


class Match(_Config, frozen=True):
    """Which requests a rule applies to. "*" matches anything, including an absent value."""

    tenant: str = WILDCARD
    app: str = WILDCARD
    endpoint: str = WILDCARD

    @property
    def specificity(self) -> int:
        """Tenant outranks app outranks endpoint: a bitmask, so no two distinct shapes tie."""
        return (
            (4 if self.tenant != WILDCARD else 0)
            | (2 if self.app != WILDCARD else 0)
            | (1 if self.endpoint != WILDCARD else 0)
        )


class ModelAccess(_Config, frozen=True):
    allow: tuple[str, ...] = (WILDCARD,)
    deny: tuple[str, ...] = ()
    mode: Mode = "enforce"


class Caps(_Config, frozen=True):
    max_tokens: int | None = None
    max_tokens_action: Literal["clamp", "reject"] = "clamp"
    max_input_tokens: int | None = None
    max_cost_usd: str | None = None
    deadline_ms: int | None = None
    mode: Mode = "enforce"


class RateLimit(_Config, frozen=True):
    scope: Scope
    rpm: int | None = None
    tpm: int | None = None
    burst: float = 1.0  # bucket capacity as a multiple of the per-minute rate
    mode: Mode = "enforce"


class RequiredMetadata(_Config, frozen=True):
    fields: tuple[Literal["tenant", "user", "endpoint", "prompt_version"], ...]
    environments: tuple[str, ...] = ()  # empty: every environment
    mode: Mode = "enforce"


class Auth(_Config, frozen=True):
    require_key: bool = False
    mode: Mode = "enforce"


class Budget(_Config, frozen=True):
    """A spend ceiling in USD per UTC calendar period, per scope value, across every sidecar.

    Sidecars spend from slices leased from policyd's quota owner (policyd/quota.py). Amounts
    are decimal strings so the canonical form keeps exact cents. A budget is identified by its
    name: rules that repeat a name (e.g. an endpoint override) share one spend counter.
    """

    name: str
    scope: Scope
    limit_usd: str
    period: Literal["day", "month"] = "month"
    mode: Mode = "enforce"
    # The slice a sidecar leases at a time; None: 1% of the limit, at least $0.10 (at most
    # the limit). Bigger slices mean fewer lease requests and more money parked per sidecar.
    lease_usd: str | None = None
    # What a sidecar may reserve per period without a lease (before its first lease arrives,
    # or while the quota owner is unreachable); None: 0.1% of the limit, at least $0.01 (at
    # most the lease). Each sidecar can overshoot an exhausted budget by at most this much.
    safe_share_usd: str | None = None


class RoutingRule(_Config, frozen=True):
    """Residency: only deployments in these regions (or their sub-regions: "eu" has "eu-west-1")."""

    regions: tuple[str, ...] = ()
    mode: Mode = "enforce"


class Rule(_Config, frozen=True):
    """One policy rule. Per section, the most specific matching rule that sets it wins."""

    name: str
    match: Match = Match()
    models: ModelAccess | None = None
    caps: Caps | None = None
    rate_limits: tuple[RateLimit, ...] | None = None
    required_metadata: RequiredMetadata | None = None
    auth: Auth | None = None
    routing: RoutingRule | None = None
    budgets: tuple[Budget, ...] | None = None
    source: str = ""  # "file.yaml#rules[2]" for error messages and decisions


class VirtualKey(_Config, frozen=True):
    """A caller credential issued by the platform team; only its SHA-256 is distributed."""

    id: str
    sha256: str
    tenant: str
    user: str | None = None
    scopes: tuple[str, ...] = ()  # model names or aliases; empty: whatever policy allows
    expires_at: int | None = None  # unix seconds


# ---------------------------------------------------------------------------------------------
# The bundle and its envelope
# ---------------------------------------------------------------------------------------------


class Bundle(_Config, frozen=True):
    """Everything a sidecar needs to enforce policy, in canonical form."""

    revision: int
    content_hash: str  # sha256 of the canonical body, see `content_hash()`
    created_at: int  # unix milliseconds
    providers: dict[str, Provider]
    models: dict[str, Model]
    aliases: dict[str, str] = {}
    rules: tuple[Rule, ...] = ()
    virtual_keys: tuple[VirtualKey, ...] = ()
    schema_version: int = SCHEMA_VERSION


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """What travels over NATS: the exact signed bytes plus the signature over them.

    The payload is kept as bytes (not re-encoded on receipt) so the signature covers exactly
    what the sidecar decodes.
    """

    payload: bytes  # msgspec-JSON of `Bundle`, base64 on the wire
    signature: bytes | None = None  # Ed25519 over `payload`
    key_id: str | None = None


_body_encoder = msgspec.json.Encoder(order="deterministic")
_bundle_decoder = msgspec.json.Decoder(Bundle)
_envelope_decoder = msgspec.json.Decoder(Envelope)
_envelope_encoder = msgspec.json.Encoder()


def content_hash(bundle: Bundle) -> str:
    """Hash of the policy content alone, so re-applying unchanged files publishes nothing."""
    body = msgspec.structs.replace(bundle, revision=0, content_hash="", created_at=0)
    return hashlib.sha256(_body_encoder.encode(body)).hexdigest()


def encode_bundle(bundle: Bundle) -> bytes:
    return _body_encoder.encode(bundle)


def decode_bundle(payload: bytes) -> Bundle:
    return _bundle_decoder.decode(payload)


def encode_envelope(envelope: Envelope) -> bytes:
    return _envelope_encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    return _envelope_decoder.decode(data)


# NATS names shared by policyd and the sidecars.
KV_BUCKET = "sidegate_policy"
KV_KEY = "bundle"
STATUS_BUCKET = "sidegate_sidecars"  # each sidecar's running revision, keyed by sidecar id
