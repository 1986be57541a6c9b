"""OpenAI Chat Completions as an ingress and as an egress (OpenAI and any compatible server).

As an ingress the request already is the hub, so only answers from other providers are encoded
here. As an egress it serves translated requests (from Anthropic Messages or Responses) and
decodes answers and chunks into neutral values. Same-format traffic only meets `ChatMeter`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgspec

from sidecar.policy import CompiledDeployment
from sidecar.providers.base import (
    Event,
    FinishReason,
    Reply,
    SSEBuffer,
    new_id,
    raise_stream_error,
    sse,
)
from sidecar.providers.chat import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    Choice,
    ChunkChoice,
    ChunkFunction,
    ChunkToolCall,
    Delta,
    Message,
    ReplyMessage,
    StreamOptions,
    Usage,
    chat_request_decoder,
    encode,
)
from sidecar.usage import OpenAIUsage, TokenUsage, openai_response_decoder

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_USAGE_MARK = b'"usage"'
_NULL_USAGE_MARKS = (b'"usage":null', b'"usage": null')
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')
_DONE = b"[DONE]"
_PATHS = {"embeddings": "/embeddings", "responses": "/responses"}
_ERROR_START = b'{"error"'


# --- decoding views of OpenAI answers ------------------------------------------------------------


class _ChoiceView(msgspec.Struct):
    message: Message | None = None
    finish_reason: str | None = None


class _CompletionView(msgspec.Struct):
    id: str = ""
    model: str = ""
    created: int = 0
    choices: list[_ChoiceView] = []
    usage: OpenAIUsage | None = None


class _ChunkChoiceView(msgspec.Struct):
    delta: Delta | None = None
    finish_reason: str | None = None


class _ChunkView(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[_ChunkChoiceView] = []
    usage: OpenAIUsage | None = None
    error: Any = None


class _ErrorDetail(msgspec.Struct):
    message: str = ""


class _ErrorView(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None  # some compatible servers put it at the top level


_completion_decoder = msgspec.json.Decoder(_CompletionView)
_chunk_decoder = msgspec.json.Decoder(_ChunkView)
_error_decoder = msgspec.json.Decoder(_ErrorView)


def error_message(body: bytes) -> str:
    """The human message of an OpenAI-style error body, or the body's start."""
    try:
        view = _error_decoder.decode(body)
    except msgspec.DecodeError:
        return body[:300].decode(errors="replace")
    if isinstance(view.error, _ErrorDetail) and view.error.message:
        return view.error.message
    if isinstance(view.error, str):
        return view.error
    return view.message or body[:300].decode(errors="replace")


# --- egress -------------------------------------------------------------------------------------


class OpenAIEgress:
    """OpenAI, or any server speaking its API under `base_url` (vLLM, Ollama, Together, …)."""

    stream_content_types: tuple[str, ...] = ("text/event-stream",)

    def __init__(self, kind: str, native: frozenset[str], *, completion_tokens_field: bool) -> None:
        self.kind = kind
        self.native = native
        # OpenAI's reasoning models refuse max_tokens; many compatible servers only know it.
        self._completion_tokens_field = completion_tokens_field

    def url(self, d: CompiledDeployment, wire: str, *, stream: bool) -> str:
        return d.base_url + _PATHS.get(wire, "/chat/completions")

    def encode(self, request: ChatRequest, d: CompiledDeployment, *, stream: bool) -> bytes:
        return encode(for_openai(request, d.model, stream, self._completion_tokens_field))

    def reply(self, body: bytes, d: CompiledDeployment) -> Reply:
        view = _completion_decoder.decode(body)
        choice = view.choices[0] if view.choices else _ChoiceView()
        message = choice.message or Message(role="assistant")
        return Reply(
            id=view.id or new_id("chatcmpl-"),
            model=view.model or d.model,
            content=message.text() if message.content is not None else None,
            tool_calls=message.tool_calls or [],
            finish_reason=_FINISH.get(choice.finish_reason or "stop", "stop"),
            usage=view.usage.normalise() if view.usage else TokenUsage(),
            created=view.created,
        )

    def decoder(self, d: CompiledDeployment) -> ChunkDecoder:
        return ChunkDecoder(d.model)

    def error_message(self, body: bytes) -> str:
        return error_message(body)


def for_openai(
    request: ChatRequest, model: str, stream: bool, completion_field: bool
) -> ChatRequest:
    """The hub request as an OpenAI-family upstream takes it, for one deployment."""
    changes: dict[str, Any] = {
        "model": model,
        "stream": True if stream else None,
        # Exact stream usage needs the provider's usage chunk.
        "stream_options": StreamOptions(include_usage=True) if stream else None,
    }
    if completion_field and request.max_tokens is not None:
        changes["max_completion_tokens"] = request.max_completion_tokens or request.max_tokens
        changes["max_tokens"] = None
    return msgspec.structs.replace(request, **changes)


class ChunkDecoder:
    """OpenAI chat chunks → neutral events."""

    def __init__(self, model: str) -> None:
        self.id = ""
        self.model = model
        self.usage: TokenUsage | None = None
        self._sse = SSEBuffer()

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for _, data in self._sse.feed(chunk):
            if data == _DONE:
                continue
            view = _chunk_decoder.decode(data)
            if view.error is not None:
                raise_stream_error(error_message(data))
            if not self.id:
                self.id = view.id
                self.model = view.model or self.model
            if view.usage is not None:
                self.usage = view.usage.normalise()
            for choice in view.choices[:1]:
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        events.append(Event(text=delta.content))
                    for call in delta.tool_calls or ():
                        fn = call.function or ChunkFunction()
                        events.append(
                            Event(
                                tool_index=call.index,
                                tool_id=call.id,
                                tool_name=fn.name,
                                arguments=fn.arguments or "",
                            )
                        )
                if choice.finish_reason:
                    events.append(Event(finish=_FINISH.get(choice.finish_reason, "stop")))
        return events


# --- ingress ------------------------------------------------------------------------------------


class ChatIngress:
    """OpenAI Chat Completions callers reaching a provider of another format."""

    def to_chat(self, body: bytes) -> ChatRequest:
        return chat_request_decoder.decode(body)

    def reply(self, reply: Reply) -> bytes:
        message = ReplyMessage(content=reply.content)
        if reply.tool_calls:
            message.tool_calls = reply.tool_calls
        return encode(
            ChatCompletion(
                id=reply.id,
                created=reply.created or int(time.time()),
                model=reply.model,
                choices=[Choice(message=message, finish_reason=reply.finish_reason)],
                usage=Usage.of(reply.usage),
            )
        )

    def encoder(self, *, include_usage: bool) -> ChatStreamEncoder:
        return ChatStreamEncoder(include_usage=include_usage)


class ChatStreamEncoder:
    """Neutral events → chat.completion.chunk SSE events, ending with `data: [DONE]`."""

    def __init__(self, *, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._created = 0

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatChunk(id=self._id, created=self._created, model=self._model, choices=choices)
        if usage is not None:
            chunk.usage = usage
        return sse(encode(chunk))

    def start(self, id: str, model: str, usage: TokenUsage | None) -> bytes:
        self._id = id or new_id("chatcmpl-")
        self._model = model
        self._created = int(time.time())
        return self._chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])

    def encode(self, event: Event) -> bytes:
        if event.text is not None:
            return self._chunk([ChunkChoice(delta=Delta(content=event.text))])
        if event.tool_index >= 0:
            call = ChunkToolCall(
                index=event.tool_index,
                id=event.tool_id,
                type="function" if event.tool_id else None,
                function=ChunkFunction(name=event.tool_name, arguments=event.arguments),
            )
            return self._chunk([ChunkChoice(delta=Delta(tool_calls=[call]))])
        if event.finish is not None:
            return self._chunk([ChunkChoice(finish_reason=event.finish)])
        return b""

    def finish(self, usage: TokenUsage | None) -> bytes:
        tail = b""
        if self._include_usage and usage is not None:
            tail = self._chunk([], Usage.of(usage))
        return tail + b"data: [DONE]\n\n"


# --- same-format meter --------------------------------------------------------------------------


class ChatMeter:
    """Model and usage of chat and embeddings traffic passing through unchanged."""

    def __init__(self, *, strip_usage_chunk: bool = False) -> None:
        self.model = ""
        self.usage: TokenUsage | None = None
        self.error = ""
        self._strip = strip_usage_chunk

    def body(self, body: bytes) -> None:
        try:
            view = openai_response_decoder.decode(body)
        except msgspec.DecodeError:
            return
        self.model = view.model
        if view.usage is not None:
            self.usage = view.usage.normalise()

    def event(self, event: bytes) -> bool:
        data = event.partition(b"data: ")[2]
        if data.startswith(_ERROR_START):
            self.error = error_message(data)  # a provider's in-stream error, passed on as is
            return False
        if not self.model and data[:1] == b"{":
            with contextlib.suppress(msgspec.DecodeError):
                self.model = openai_response_decoder.decode(data).model
        if _USAGE_MARK not in event or any(m in event for m in _NULL_USAGE_MARKS):
            return False
        try:
            view = openai_response_decoder.decode(data)
        except msgspec.DecodeError:
            return False
        if view.usage is None:
            return False
        self.usage = view.usage.normalise()
        # The usage-only chunk has no choices; the client did not ask for it when we strip.
        return self._strip and any(m in data for m in _EMPTY_CHOICES)


class _TextDelta(msgspec.Struct):
    content: str | None = None


class _TextChoice(msgspec.Struct):
    delta: _TextDelta | None = None


class _TextChunk(msgspec.Struct):
    choices: list[_TextChoice] = []


_text_chunk_decoder = msgspec.json.Decoder(_TextChunk)


def streamed_text(events: list[bytes]) -> str:
    """The content deltas of chat chunks already sent (to estimate an aborted stream)."""
    parts: list[str] = []
    for event in events:
        try:
            chunk = _text_chunk_decoder.decode(event.partition(b"data: ")[2])
        except msgspec.DecodeError:
            continue
        parts.extend(c.delta.content for c in chunk.choices if c.delta and c.delta.content)
    return "".join(parts)


OPENAI = OpenAIEgress(
    "openai", frozenset({"chat", "embeddings", "responses"}), completion_tokens_field=True
)
OPENAI_COMPATIBLE = OpenAIEgress(
    "openai_compatible", frozenset({"chat", "embeddings"}), completion_tokens_field=False
)
CHAT_INGRESS = ChatIngress()
