"""Prompt caching: which prompt prefixes this server has seen, and the cached tokens it reports.

Prefixes end at message boundaries. The prefix ending after message i holds the request head
(reply priming and tool definitions) and messages 0..i, and is keyed by (API family, model,
tool definitions, those messages). Prefixes shorter than 1,024 tokens are never cached, as with
the real APIs.

Implicit caching (OpenAI chat and Responses, Gemini): cached tokens = the token count of the
longest prefix already seen, rounded down to a multiple of 128; 0 on a first sight. Every
eligible prefix of the request is then remembered. So a request sent twice reports
`cached = prompt_tokens // 128 * 128` the second time (when prompt_tokens >= 1024). OpenAI
reports them inside prompt_tokens / input_tokens; Gemini inside promptTokenCount.

Explicit caching (Anthropic): only prefixes ending at a block marked `cache_control` count
(a tool definition marks the head, a system block the system message). The longest marked
prefix already seen is read (cache_read_input_tokens); the rest up to the last marker is
written (cache_creation_input_tokens); input_tokens is the remainder, excluding both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from fakeprovider.content import PromptCount, Turn

CACHE_MIN_TOKENS = 1_024
CACHE_BLOCK_TOKENS = 128
DEFAULT_CAPACITY = 65_536


def implicit_cached_tokens(prefix_tokens: int) -> int:
    """What implicit caching reports for a seen prefix of `prefix_tokens` tokens."""
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return prefix_tokens // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS


class PromptCache:
    """Digests of prompt prefixes already seen, oldest forgotten first past `capacity`."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._seen: dict[bytes, None] = {}

    def clear(self) -> None:
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._seen)

    def implicit(
        self, scope: str, turns: Sequence[Turn], count: PromptCount, tools: bytes = b""
    ) -> int:
        """Cached tokens for an OpenAI or Gemini request, remembering its prefixes."""
        if count.total < CACHE_MIN_TOKENS:
            return 0  # the common, short case does no hashing at all
        boundaries = range(len(turns))
        longest = 0
        for tokens, digest in self._prefixes(scope, turns, count, tools, boundaries):
            if digest in self._seen:
                longest = tokens
            else:
                self._remember(digest)
        return implicit_cached_tokens(longest)

    def explicit(
        self,
        scope: str,
        turns: Sequence[Turn],
        count: PromptCount,
        tools: bytes,
        marks: Iterable[int],
    ) -> tuple[int, int]:
        """(cache read, cache write) tokens for an Anthropic request with cache_control marks.

        A mark is the index of the marked message, or -1 for the head (a marked tool).
        """
        wanted = sorted(set(marks))
        if not wanted or count.total < CACHE_MIN_TOKENS:
            return 0, 0
        read = 0
        last = 0
        for tokens, digest in self._prefixes(scope, turns, count, tools, wanted):
            last = tokens
            if digest in self._seen:
                read = tokens
            else:
                self._remember(digest)
        return read, max(last - read, 0)

    def _prefixes(
        self,
        scope: str,
        turns: Sequence[Turn],
        count: PromptCount,
        tools: bytes,
        boundaries: Iterable[int],
    ) -> Iterable[tuple[int, bytes]]:
        """(tokens, digest) of each eligible prefix ending after the given message indexes."""
        wanted = set(boundaries)
        rolling = hashlib.blake2b(digest_size=20)
        rolling.update(scope.encode() + b"\x00" + tools + b"\x00")
        tokens = count.head
        if -1 in wanted and tokens >= CACHE_MIN_TOKENS:
            yield tokens, rolling.copy().digest()
        for index, turn in enumerate(turns):
            rolling.update(f"{turn.role}\x00{turn.name or ''}\x00{turn.media}\x00".encode())
            rolling.update(turn.text.encode() + b"\x01")
            tokens += count.turns[index]
            if index in wanted and tokens >= CACHE_MIN_TOKENS:
                yield tokens, rolling.copy().digest()

    def _remember(self, digest: bytes) -> None:
        self._seen[digest] = None
        if len(self._seen) > self._capacity:
            del self._seen[next(iter(self._seen))]
