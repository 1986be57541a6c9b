"""OpenAI embeddings (`POST /v1/embeddings`): deterministic unit vectors and exact token counts.

Rules. `input` is a string, a list of strings, a list of token ids or a list of token-id lists
(token ids are decoded with cl100k_base first, so they embed like the text they spell). A
vector is a function of (model, text) only: SHAKE-256 of "model\\0text" read as little-endian
int16 values, scaled to unit length. `dimensions` (default 3072 for text-embedding-3-large,
1536 otherwise) takes a prefix of that stream and rescales it, which is how shortened v3
embeddings behave. `encoding_format` "base64" sends the float32 little-endian bytes in base64.
usage.prompt_tokens is the sum of the inputs' tokens (token-id lists count their length); an
input over 8,192 tokens is refused with a 400, as the real API does.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from functools import lru_cache
from typing import Any

import msgspec
from aiohttp import web

from fakeprovider.content import ENCODING, count_tokens
from fakeprovider.dialects import OPENAI
from fakeprovider.exchange import Exchange, admit

MAX_INPUT_TOKENS = 8_192
_encode = msgspec.json.Encoder().encode
_BIG_ENDIAN = sys.byteorder == "big"


def default_dimensions(model: str) -> int:
    return 3072 if "large" in model else 1536


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    encoding_format: str | None = None
    dimensions: int | None = None


_decoder = msgspec.json.Decoder(EmbeddingRequest)


@lru_cache(maxsize=256)
def embedding_for(model: str, text: str, dimensions: int | None = None) -> tuple[float, ...]:
    """The vector the server returns for `text` under `model`."""
    size = dimensions or default_dimensions(model)
    raw = array("h", hashlib.shake_256(f"{model}\x00{text}".encode()).digest(2 * size))
    if _BIG_ENDIAN:
        raw.byteswap()  # the stream is defined little-endian, whatever the host
    norm = math.sqrt(math.fsum(x * x for x in raw)) or 1.0
    return tuple(x / norm for x in raw)


def _inputs(value: str | list[Any]) -> tuple[list[tuple[str, int]], str | None]:
    """(text, tokens) per input, or a problem message."""
    if isinstance(value, str):
        return [(value, count_tokens(value))], None
    if not value:
        return [], "'input' must not be empty."
    if all(isinstance(item, str) for item in value):
        return [(item, count_tokens(item)) for item in value], None
    if all(isinstance(item, int) for item in value):
        value = [value]
    if all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in value):
        try:
            return [(ENCODING.decode(item), len(item)) for item in value], None
        except (KeyError, ValueError, OverflowError):
            return [], "'input' contains an invalid token id."
    return [], "'input' must be a string, a list of strings or a list of token-id lists."


def count_embedding_tokens(input: str | list[Any]) -> int:
    """usage.prompt_tokens the server reports for this embeddings input."""
    inputs, _ = _inputs(input)
    return sum(tokens for _, tokens in inputs)


class EmbeddingItem(msgspec.Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, OPENAI, "embeddings", _decoder)
    if not isinstance(ex, Exchange):
        return ex
    req = ex.body
    inputs, problem = _inputs(req.input)
    if problem is not None:
        return OPENAI.detailed_error(400, problem, param="input")
    if req.encoding_format not in (None, "float", "base64"):
        return OPENAI.detailed_error(
            400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    if req.dimensions is not None and req.dimensions < 1:
        return OPENAI.detailed_error(400, "'dimensions' must be at least 1.", param="dimensions")
    longest = max(tokens for _, tokens in inputs)
    if longest > MAX_INPUT_TOKENS:
        return OPENAI.detailed_error(
            400,
            f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
            f"requested {longest} tokens in an input. Please reduce your input.",
            param="input",
        )
    as_base64 = req.encoding_format == "base64"
    data = []
    for index, (text, _) in enumerate(inputs):
        vector = embedding_for(req.model, text, req.dimensions)
        if as_base64:
            packed = array("f", vector)
            if _BIG_ENDIAN:
                packed.byteswap()
            data.append(EmbeddingItem(index, base64.b64encode(packed.tobytes()).decode()))
        else:
            data.append(EmbeddingItem(index, list(vector)))
    tokens = sum(tokens for _, tokens in inputs)
    body = EmbeddingList(data, req.model, EmbeddingUsage(tokens, tokens))
    return await ex.reply(_encode(body))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", create_embeddings)
