"""OpenTelemetry GenAI semantic-convention names and values shared by metrics, spans and logs.

The conventions (https://github.com/open-telemetry/semantic-conventions-genai, status
Development) name the attributes; Prometheus label names are the same with dots as underscores.
"""

from __future__ import annotations

from typing import Final

from collector.record import UsageRecord

OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
REQUEST_STREAM: Final = "gen_ai.request.stream"
TOKEN_TYPE: Final = "gen_ai.token.type"
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
ERROR_TYPE: Final = "error.type"

# Policy provider kinds to the conventions' well-known `gen_ai.provider.name` values, which
# name the telemetry flavour. An OpenAI-compatible server (vLLM, Ollama, a hosted gateway) is
# not OpenAI, so it is named by its policy provider id: a custom value the catalogue bounds.
_WELL_KNOWN: Final[dict[str, str]] = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "bedrock": "aws.bedrock",
}

# The request's own wire operations that have no well-known GenAI name of their own.
_OPERATIONS: Final[dict[str, str]] = {"messages": "chat", "responses": "chat"}


def provider_name(record: UsageRecord) -> str:
    """`gen_ai.provider.name` of the deployment that answered ("" when none was chosen)."""
    return _WELL_KNOWN.get(record.provider_kind, record.provider)


def operation_name(record: UsageRecord) -> str:
    """`gen_ai.operation.name`: Anthropic Messages and OpenAI Responses calls are chat calls."""
    return _OPERATIONS.get(record.operation, record.operation)
