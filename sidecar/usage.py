"""Normalised token usage from each provider's response shape, and its cost in exact decimals.

Every shape lands in `TokenUsage`, where input counts every prompt token (cached reads and
cache writes included) and output counts every generated token (reasoning included). Providers
disagree on both: OpenAI and Gemini include cached tokens in their prompt count, Anthropic and
Bedrock report them beside it; Gemini reports thinking beside the candidates. The rules live
here, once, so reports compare providers on the same footing.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from collector.record import TokenSource
from sidecar.policy import CompiledPrice


class TokenUsage(msgspec.Struct):
    """One request's tokens. input includes cached and cache-write; output includes reasoning."""

    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_write: int = 0
    reasoning: int = 0
    source: TokenSource = "none"

    def cost(self, price: CompiledPrice | None) -> Decimal | None:
        if price is None or self.source == "none":
            return None
        uncached = max(self.input - self.cached_input - self.cache_write, 0)
        return (
            uncached * price.input
            + self.cached_input * price.cached_input
            + self.cache_write * price.cache_write
            + self.output * price.output
        )


# --- OpenAI chat / embeddings -----------------------------------------------------------------


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class OpenAIUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None

    def normalise(self) -> TokenUsage:
        p, c = self.prompt_tokens_details, self.completion_tokens_details
        return TokenUsage(
            input=self.prompt_tokens,
            output=self.completion_tokens,
            cached_input=(p.cached_tokens or 0) if p else 0,
            reasoning=(c.reasoning_tokens or 0) if c else 0,
            source="provider",
        )


class OpenAIResponseView(msgspec.Struct):
    """The two fields of a chat/embeddings response (or stream chunk) accounting reads."""

    model: str = ""
    usage: OpenAIUsage | None = None


openai_response_decoder = msgspec.json.Decoder(OpenAIResponseView)


# --- OpenAI Responses -------------------------------------------------------------------------


class _InputDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class ResponsesUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None

    def normalise(self) -> TokenUsage:
        i, o = self.input_tokens_details, self.output_tokens_details
        return TokenUsage(
            input=self.input_tokens,
            output=self.output_tokens,
            cached_input=(i.cached_tokens or 0) if i else 0,
            reasoning=(o.reasoning_tokens or 0) if o else 0,
            source="provider",
        )


# --- Anthropic Messages -----------------------------------------------------------------------


class AnthropicUsage(msgspec.Struct):
    """Anthropic's input_tokens EXCLUDE cache reads and writes, which are reported beside it.

    In a stream, message_start carries the input side and message_delta the cumulative output
    (and, from newer API versions, the input side again); absent fields are None so a delta
    only overwrites what it states.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    def normalise(self) -> TokenUsage:
        read = self.cache_read_input_tokens or 0
        write = self.cache_creation_input_tokens or 0
        return TokenUsage(
            input=(self.input_tokens or 0) + read + write,
            output=self.output_tokens or 0,
            cached_input=read,
            cache_write=write,
            source="provider",
        )

    def merged(self, later: AnthropicUsage) -> AnthropicUsage:
        """This usage updated by a later, cumulative one (message_delta after message_start)."""
        return AnthropicUsage(
            input_tokens=_later(later.input_tokens, self.input_tokens),
            output_tokens=_later(later.output_tokens, self.output_tokens),
            cache_read_input_tokens=_later(
                later.cache_read_input_tokens, self.cache_read_input_tokens
            ),
            cache_creation_input_tokens=_later(
                later.cache_creation_input_tokens, self.cache_creation_input_tokens
            ),
        )


def _later(value: int | None, previous: int | None) -> int | None:
    return previous if value is None else value


# --- Google Gemini ----------------------------------------------------------------------------


class GeminiUsage(msgspec.Struct, rename="camel"):
    """promptTokenCount includes cachedContentTokenCount; thoughts are beside the candidates."""

    prompt_token_count: int = 0
    candidates_token_count: int = 0
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0

    def normalise(self) -> TokenUsage:
        return TokenUsage(
            input=self.prompt_token_count + self.tool_use_prompt_token_count,
            output=self.candidates_token_count + self.thoughts_token_count,
            cached_input=self.cached_content_token_count,
            reasoning=self.thoughts_token_count,
            source="provider",
        )


# --- AWS Bedrock Converse ---------------------------------------------------------------------


class BedrockUsage(msgspec.Struct, rename="camel"):
    """Converse reports cache reads and writes beside inputTokens, as Anthropic does."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0

    def normalise(self) -> TokenUsage:
        read, write = self.cache_read_input_tokens, self.cache_write_input_tokens
        return TokenUsage(
            input=self.input_tokens + read + write,
            output=self.output_tokens,
            cached_input=read,
            cache_write=write,
            source="provider",
        )
