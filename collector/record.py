"""The usage record contract: one per request, from sidecar to collector (msgspec and stdlib only).

Wire rules: readers skip unknown fields (no forbid_unknown_fields), new fields get defaults,
fields are never renamed or retyped, and units are in names. OpenTelemetry GenAI attribute
names are given beside fields that have one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

RECORD_SCHEMA_VERSION = 1

TokenSource = Literal["provider", "estimated", "none"]
Outcome = Literal["ok", "error", "denied"]
ErrorClass = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "rate_limited",
    "budget_exceeded",
    "policy_violation",
    "policy_unavailable",
    "client_closed",
    "upstream_timeout",
    "upstream_unavailable",
    "upstream_error",
    "internal",
]


class Decision(msgspec.Struct, frozen=True, omit_defaults=True):
    """A policy stage's verdict that is worth keeping: a denial or a would-have-denied."""

    stage: str  # "models", "caps", "rate_limit", ...
    rule: str  # the rule's name
    mode: str  # enforce | warn | shadow
    outcome: Literal["denied", "would_deny", "modified"]
    reason: str


class UsageRecord(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Everything FinOps and the platform team ask about one request."""

    id: str  # request id; also Nats-Msg-Id and the DuckDB primary key
    ts_ms: int  # request start, unix milliseconds
    schema_version: int = RECORD_SCHEMA_VERSION

    # who
    tenant: str = ""
    app: str = ""
    namespace: str = ""
    service_account: str = ""
    pod: str = ""
    user: str = ""
    virtual_key_id: str = ""
    endpoint: str = ""  # endpoint tag / use case
    prompt_version: str = ""
    environment: str = ""  # prod | staging | dev
    data_mode: str = "real"  # real | test
    client_request_id: str = ""  # the app's own x-request-id; `id` is always sidecar-made

    # what
    operation: str = ""  # gen_ai.operation.name: chat | embeddings | messages | responses
    ingress_format: str = ""  # openai | anthropic
    stream: bool = False
    model_requested: str = ""  # gen_ai.request.model, as the caller sent it
    model_resolved: str = ""  # after alias / tier resolution
    model_served: str = ""  # gen_ai.response.model, as the provider reported it
    provider: str = ""  # gen_ai.provider.name (the policy's provider id)
    provider_kind: str = ""
    deployment: str = ""  # provider/model actually called

    # tokens (gen_ai.usage.*)
    input_tokens: int = 0  # all prompt tokens, cached ones included
    output_tokens: int = 0  # all completion tokens, reasoning ones included
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    token_source: TokenSource = "none"

    # money
    cost_usd: Decimal | None = None  # None: no price known for the model
    price_source: str = ""

    # how it went
    status_code: int = 0
    outcome: Outcome = "ok"
    error_class: ErrorClass | None = None
    error_message: str = ""  # our own message or the upstream's, never prompt text
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_latency_ms: float | None = None
    attempts: int = 0
    retries: int = 0
    fallback_from: str = ""
    cache: str = "off"  # hit | miss | off
    # A repeated idempotency-key answered from the first result: no upstream call was made.
    idempotent_replay: bool = False
    # Shadow traffic: the id of the request this mirrored copy was made from ("" if none).
    mirror_of: str = ""

    # evidence
    policy_revision: int = 0
    decisions: list[Decision] = []
    trace_id: str = ""
    sidecar_id: str = ""


record_encoder = msgspec.json.Encoder(decimal_format="string")
record_decoder = msgspec.json.Decoder(UsageRecord)

# NATS names shared by the sidecars and the collector.
USAGE_STREAM = "SIDEGATE_USAGE"
USAGE_SUBJECT_PREFIX = "sidegate.usage"  # records on sidegate.usage.<tenant-token>
DEAD_LETTER_SUBJECT = "sidegate.deadletter.usage"
