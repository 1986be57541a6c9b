"""The access log: one structured line per request, built from its usage record alone.

The usage record carries no prompt or response text, so neither can this line: what a request
said stays out of logs by construction. Logging prompts on a policy's request (redacted) would
be a separate, opt-in field; the bundle has no such setting today.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from collector.record import UsageRecord

LOGGER: Final = "sidegate.access"
EVENT: Final = "access"
_MAX_MODEL_CHARS: Final = 200  # the caller's model string is free text


def access_fields(record: UsageRecord) -> dict[str, Any]:
    """The line's fields: who, what, how it went, what it cost, and what policy decided."""
    fields: dict[str, Any] = {
        "request_id": record.id,
        "client_request_id": record.client_request_id or None,
        "trace_id": record.trace_id,
        "tenant": record.tenant,
        "app": record.app,
        "endpoint": record.endpoint,
        "operation": record.operation,
        "stream": record.stream,
        "model_requested": record.model_requested[:_MAX_MODEL_CHARS],
        "model_resolved": record.model_resolved,
        "model_served": record.model_served,
        "provider": record.provider,
        "deployment": record.deployment,
        "status": record.status_code,
        "outcome": record.outcome,
        "error_class": record.error_class,
        "error_message": record.error_message or None,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "token_source": record.token_source,
        # A string: JSON numbers would round a Decimal that FinOps reconciles to the cent.
        "cost_usd": str(record.cost_usd) if record.cost_usd is not None else None,
        "attempts": record.attempts,
        "retries": record.retries,
        "fallback_from": record.fallback_from or None,
        "cache": record.cache,
        "policy_revision": record.policy_revision,
        "decisions": [
            {"stage": d.stage, "rule": d.rule, "mode": d.mode, "outcome": d.outcome}
            for d in record.decisions
        ],
    }
    return fields


class AccessLog:
    """Writes the line through structlog, so it shares the process's JSON renderer and level."""

    def __init__(self) -> None:
        # A logger per sidecar app rather than per module: the configuration in force when the
        # app is made is the one its lines use (tests capture them this way).
        self._log = structlog.get_logger(LOGGER)

    def write(self, record: UsageRecord) -> None:
        self._log.info(EVENT, **access_fields(record))
