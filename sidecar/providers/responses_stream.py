"""Neutral stream events → OpenAI Responses stream events, as the API sends them.

The Responses stream is item-structured: each message or function call is opened with
`response.output_item.added`, filled with deltas and closed with `.done` events, and the stream
ends with `response.completed` (or `response.incomplete`) carrying the whole response and its
usage. The encoder keeps the text and arguments it has sent so the closing events can repeat
them, which is what the SDK's stream helpers accumulate against.
"""

from __future__ import annotations

from typing import Any

from sidecar.providers.base import Event, new_id, sse
from sidecar.providers.chat import encode
from sidecar.providers.responses import (
    FunctionCallItem,
    OutputMessage,
    OutputText,
    response_object,
)
from sidecar.usage import TokenUsage


class ResponsesStreamEncoder:
    def __init__(self) -> None:
        self._sequence = 0
        self._id = ""
        self._model = ""
        self._items: list[Any] = []  # finished output items, for the closing response
        self._message: OutputMessage | None = None
        self._text: list[str] = []
        self._call: FunctionCallItem | None = None
        self._call_index = -1
        self._arguments: list[str] = []
        self._status = "completed"

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse(encode(payload), kind)

    def start(self, id: str, model: str, usage: TokenUsage | None) -> bytes:
        self._id = id if id.startswith("resp_") else new_id("resp_")
        self._model = model
        opening = response_object(self._id, model, "in_progress", [], None)
        return self._event("response.created", response=opening) + self._event(
            "response.in_progress", response=opening
        )

    def _at(self) -> dict[str, Any]:
        return {"output_index": len(self._items)}

    def _close_message(self) -> bytes:
        message = self._message
        if message is None:
            return b""
        text = "".join(self._text)
        at = {**self._at(), "item_id": message.id, "content_index": 0}
        part = OutputText(text)
        done = OutputMessage(id=message.id, status=self._status, content=[part])
        out = self._event("response.output_text.done", text=text, **at)
        out += self._event("response.content_part.done", part=part, **at)
        out += self._event("response.output_item.done", item=done, **self._at())
        self._items.append(done)
        self._message, self._text = None, []
        return out

    def _close_call(self) -> bytes:
        call = self._call
        if call is None:
            return b""
        arguments = "".join(self._arguments)
        done = FunctionCallItem(
            id=call.id, call_id=call.call_id, name=call.name, arguments=arguments,
            status="completed",
        )  # fmt: skip
        at = {**self._at(), "item_id": call.id}
        out = self._event("response.function_call_arguments.done", arguments=arguments, **at)
        out += self._event("response.output_item.done", item=done, **self._at())
        self._items.append(done)
        self._call, self._arguments = None, []
        return out

    def encode(self, event: Event) -> bytes:
        if event.text is not None:
            out = self._close_call()
            if self._message is None:
                self._message = OutputMessage(id=new_id("msg_"), status="in_progress", content=[])
                item = {**self._at(), "item_id": self._message.id, "content_index": 0}
                out += self._event("response.output_item.added", item=self._message, **self._at())
                out += self._event("response.content_part.added", part=OutputText(""), **item)
            self._text.append(event.text)
            at = {**self._at(), "item_id": self._message.id, "content_index": 0}
            return out + self._event("response.output_text.delta", delta=event.text, **at)
        if event.tool_index >= 0:
            out = self._close_message()
            if self._call is None or event.tool_index != self._call_index:
                out += self._close_call()
                self._call_index = event.tool_index
                self._call = FunctionCallItem(
                    id=new_id("fc_"), call_id=event.tool_id or new_id("call_"),
                    name=event.tool_name or "", arguments="", status="in_progress",
                )  # fmt: skip
                out += self._event("response.output_item.added", item=self._call, **self._at())
            if event.arguments:
                self._arguments.append(event.arguments)
                at = {**self._at(), "item_id": self._call.id}
                out += self._event(
                    "response.function_call_arguments.delta", delta=event.arguments, **at
                )
            return out
        if event.finish is not None:
            self._status = "incomplete" if event.finish == "length" else "completed"
        return b""

    def finish(self, usage: TokenUsage | None) -> bytes:
        out = self._close_message() + self._close_call()
        final = response_object(self._id, self._model, self._status, self._items, usage)
        kind = "response.incomplete" if self._status == "incomplete" else "response.completed"
        return out + self._event(kind, response=final)
