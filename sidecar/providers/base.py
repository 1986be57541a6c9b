"""The adapter protocol between ingress formats, the canonical request, and provider formats.

The hub is OpenAI Chat Completions for requests (`chat.ChatRequest`): it is the format most
clients and OpenAI-compatible servers already speak, so OpenAI-family egress needs no second
conversion, and every other format maps into it without inventing concepts. Responses and
stream events travel as two small neutral values, `Reply` and `Event`, that carry usage as
`TokenUsage` so cache reads and writes survive every hop (OpenAI's usage shape has no place
for a cache write).

An ingress adapter turns its wire request into the hub and the neutral values back into its
wire format; an egress adapter does the opposite for one provider kind. Same-format traffic
never touches either: only a `Meter` reads usage from the bytes passing through.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

import msgspec

from sidecar.errors import UpstreamStreamBroken
from sidecar.usage import TokenUsage

if TYPE_CHECKING:
    from sidecar.policy import CompiledDeployment
    from sidecar.providers.chat import ChatRequest, ToolCall

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
Wire = Literal["chat", "embeddings", "responses", "messages", "count_tokens"]
"""What a route speaks; a provider kind passes through the wires it natively serves."""


class TranslationError(Exception):
    """A request that cannot be expressed in the provider's format (answered as a 400)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UpstreamStreamError(UpstreamStreamBroken):
    """The provider reported an error inside a stream it had started."""


class Reply(msgspec.Struct, kw_only=True):
    """A whole, non-streamed model answer in neutral form."""

    id: str
    model: str
    content: str | None = None
    tool_calls: list[ToolCall] = []
    finish_reason: FinishReason = "stop"
    usage: TokenUsage = msgspec.field(default_factory=TokenUsage)
    created: int = 0


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One piece of a streamed answer: text, a tool-call fragment, or the finish reason.

    A tool fragment names its call by `tool_index` (0, 1, … in the order calls start); the
    first fragment of a call carries its id and name, later ones only argument text.
    """

    text: str | None = None
    tool_index: int = -1
    tool_id: str | None = None
    tool_name: str | None = None
    arguments: str = ""
    finish: FinishReason | None = None


class StreamDecoder(Protocol):
    """Provider stream bytes → neutral events. `id`, `model` and `usage` fill in as seen."""

    id: str
    model: str
    usage: TokenUsage | None

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by this chunk of the body; raises UpstreamStreamError."""
        ...


class StreamEncoder(Protocol):
    """Neutral events → the client's stream format, one output frame at a time."""

    def start(self, id: str, model: str, usage: TokenUsage | None) -> bytes: ...

    def encode(self, event: Event) -> bytes: ...

    def finish(self, usage: TokenUsage | None) -> bytes: ...


class Meter(Protocol):
    """Reads the served model and usage from same-format traffic without changing it."""

    model: str
    usage: TokenUsage | None
    error: str  # an error the provider reported inside a stream ("" for none)

    def body(self, body: bytes) -> None: ...

    def event(self, event: bytes) -> bool:
        """Note one SSE event; True when the client must not see it (an injected usage chunk)."""
        ...


class Ingress(Protocol):
    """A client-facing format that can reach other providers through the hub."""

    def to_chat(self, body: bytes) -> ChatRequest: ...

    def reply(self, reply: Reply) -> bytes: ...

    def encoder(self, *, include_usage: bool) -> StreamEncoder: ...


class Egress(Protocol):
    """How one provider kind is called with a hub request, and how it answers."""

    kind: str
    native: frozenset[str]  # wires passed through byte for byte
    stream_content_types: tuple[str, ...]  # a response with another type is not a stream

    def url(self, d: CompiledDeployment, wire: str, *, stream: bool) -> str: ...

    def encode(self, request: ChatRequest, d: CompiledDeployment, *, stream: bool) -> bytes: ...

    def reply(self, body: bytes, d: CompiledDeployment) -> Reply: ...

    def decoder(self, d: CompiledDeployment) -> StreamDecoder: ...

    def error_message(self, body: bytes) -> str: ...


# --- helpers shared by the adapters -----------------------------------------------------------


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


class DataURL(msgspec.Struct, frozen=True):
    media_type: str
    data: str  # base64, as it was in the URL


def parse_data_url(url: str) -> DataURL | None:
    """`data:image/png;base64,AAAA` → its media type and base64 text; None for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise TranslationError("Only base64 data URLs are supported for images.")
    return DataURL(head[:-7] or "application/octet-stream", data)


def check_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TranslationError("An image's base64 data is not valid base64.") from exc


class SSEBuffer:
    """Cuts a byte stream into the data payloads of complete SSE events.

    Returns (event name, data) pairs; comments and keep-alives are skipped. Used by decoders
    of translated streams, which look inside every event anyway.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._tail = events.pop()
        out: list[tuple[bytes, bytes]] = []
        for raw in events:
            name, lines = b"", []
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    lines.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
            if lines:
                out.append((name, b"\n".join(lines)))
        return out


def sse(data: bytes, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def raise_stream_error(message: str) -> NoReturn:
    raise UpstreamStreamError(f"The provider reported an error mid-stream: {message}")


class _ErrorDetail(msgspec.Struct):
    message: str = ""


class _ErrorView(msgspec.Struct):
    error: _ErrorDetail | None = None


_error_decoder = msgspec.json.Decoder(_ErrorView)


def error_message(body: bytes) -> str:
    """A provider error's message: Anthropic and Gemini both put it at `error.message`."""
    try:
        view = _error_decoder.decode(body)
    except msgspec.DecodeError:
        view = _ErrorView()
    if view.error is not None and view.error.message:
        return view.error.message
    return body[:300].decode(errors="replace")
