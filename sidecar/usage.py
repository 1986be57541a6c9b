"""Normalised token usage from each provider's response shape, and its cost in exact decimals."""

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
