"""Anthropic Messages streams: decoding a provider's events, encoding them for a caller, metering.

An Anthropic stream names its usage twice: message_start carries the input side (input tokens
without cache reads and writes, and those apart), message_delta the cumulative output and, from
newer API versions, the input side again. Both are merged so the record holds the final counts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from sidecar.providers.anthropic import (
    STOP_REASON,
    AnswerUsage,
    Block,
    MessageView,
    finish_of,
    message_view,
)
from sidecar.providers.base import Event, SSEBuffer, error_message, new_id, raise_stream_error, sse
from sidecar.providers.chat import encode
from sidecar.usage import AnthropicUsage, TokenUsage


class _Delta(msgspec.Struct):
    type: str = ""
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _StreamEvent(msgspec.Struct):
    type: str
    message: MessageView | None = None
    index: int = 0
    content_block: Block | None = None
    delta: _Delta | None = None
    usage: AnthropicUsage | None = None


_event_decoder = msgspec.json.Decoder(_StreamEvent)


class MessagesStreamDecoder:
    """A provider's Messages events → neutral events (thinking is not carried across)."""

    def __init__(self, model: str) -> None:
        self.id = ""
        self.model = model
        self.usage: TokenUsage | None = None
        self._raw = AnthropicUsage()
        self._sse = SSEBuffer()
        self._tools: dict[int, int] = {}  # content block index → tool call index

    def _note(self, usage: AnthropicUsage) -> None:
        self._raw = self._raw.merged(usage)
        self.usage = self._raw.normalise()

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for _, data in self._sse.feed(chunk):
            view = _event_decoder.decode(data)
            kind = view.type
            if kind == "content_block_delta" and view.delta is not None:
                delta = view.delta
                if delta.type == "text_delta" and delta.text:
                    events.append(Event(text=delta.text))
                elif delta.type == "input_json_delta" and delta.partial_json:
                    tool = self._tools.get(view.index, 0)
                    events.append(Event(tool_index=tool, arguments=delta.partial_json))
            elif kind == "content_block_start" and view.content_block is not None:
                block = view.content_block
                if block.type == "tool_use":
                    tool = self._tools[view.index] = len(self._tools)
                    events.append(Event(tool_index=tool, tool_id=block.id, tool_name=block.name))
                elif block.type == "text" and block.text:
                    events.append(Event(text=block.text))
            elif kind == "message_start" and view.message is not None:
                self.id = view.message.id
                self.model = view.message.model or self.model
                if view.message.usage is not None:
                    self._note(view.message.usage)
            elif kind == "message_delta":
                if view.usage is not None:
                    self._note(view.usage)
                if view.delta is not None and view.delta.stop_reason:
                    events.append(Event(finish=finish_of(view.delta.stop_reason)))
            elif kind == "error":
                raise_stream_error(error_message(data))
        return events


class _Start(msgspec.Struct):
    id: str
    model: str
    usage: AnswerUsage
    content: list[Any] = []
    type: str = "message"
    role: str = "assistant"
    stop_reason: None = None
    stop_sequence: None = None


class MessagesStreamEncoder:
    """Neutral events → Messages SSE: one content block per text run or tool call."""

    def __init__(self) -> None:
        self._index = -1  # the open content block, -1 for none
        self._open: str | None = None  # "text" or "tool:<n>"
        self._stop_reason = "end_turn"

    def start(self, id: str, model: str, usage: TokenUsage | None) -> bytes:
        opening = AnswerUsage.of(usage or TokenUsage())
        message = _Start(id if id.startswith("msg_") else new_id("msg_"), model, opening)
        return sse(encode({"type": "message_start", "message": message}), "message_start")

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        stop = {"type": "content_block_stop", "index": self._index}
        return sse(encode(stop), "content_block_stop")

    def _begin(self, label: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = label
        begin = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + sse(encode(begin), "content_block_start")

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return sse(encode(event), "content_block_delta")

    def encode(self, event: Event) -> bytes:
        if event.text is not None:
            out = b"" if self._open == "text" else self._begin("text", {"type": "text", "text": ""})
            return out + self._delta({"type": "text_delta", "text": event.text})
        if event.tool_index >= 0:
            label = f"tool:{event.tool_index}"
            out = b""
            if self._open != label:
                block = {
                    "type": "tool_use",
                    "id": event.tool_id or new_id("toolu_"),
                    "name": event.tool_name or "",
                    "input": {},
                }
                out = self._begin(label, block)
            if event.arguments:
                out += self._delta({"type": "input_json_delta", "partial_json": event.arguments})
            return out
        if event.finish is not None:
            self._stop_reason = STOP_REASON[event.finish]
            return self._close()
        return b""

    def finish(self, usage: TokenUsage | None) -> bytes:
        totals = AnswerUsage.of(usage or TokenUsage())
        closing = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
            "usage": totals,  # cumulative, input side included, as newer API versions send
        }
        stop = sse(b'{"type":"message_stop"}', "message_stop")
        return self._close() + sse(encode(closing), "message_delta") + stop


class MessagesMeter:
    """Model and usage of Messages traffic passing through unchanged; never holds events back."""

    def __init__(self) -> None:
        self.model = ""
        self.usage: TokenUsage | None = None
        self.error = ""
        self._raw = AnthropicUsage()

    def body(self, body: bytes) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            view = message_view(body)
            self.model = view.model
            if view.usage is not None:
                self.usage = view.usage.normalise()

    def event(self, event: bytes) -> bool:
        if event.startswith(b"event: error"):
            self.error = error_message(event.partition(b"data: ")[2])
            return False
        if b'"usage"' not in event:
            return False
        with contextlib.suppress(msgspec.DecodeError):
            view = _event_decoder.decode(event.partition(b"data: ")[2])
            usage = view.usage
            if view.message is not None:
                self.model = view.message.model
                usage = view.message.usage
            if usage is not None:
                self._raw = self._raw.merged(usage)
                self.usage = self._raw.normalise()
        return False


def streamed_text(events: list[bytes]) -> str:
    """The text deltas of Messages events already sent (to estimate an aborted stream)."""
    parts: list[str] = []
    for event in events:
        if b"text_delta" not in event:
            continue
        with contextlib.suppress(msgspec.DecodeError):
            view = _event_decoder.decode(event.partition(b"data: ")[2])
            if view.delta is not None and view.delta.text:
                parts.append(view.delta.text)
    return "".join(parts)
