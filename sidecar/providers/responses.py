"""The OpenAI Responses API (`/v1/responses`) as an ingress: to the hub and back, and its meter.

Responses traffic to an OpenAI provider passes through unchanged. To any other provider, the
stateless subset translates: string or item inputs (messages, function calls and their
outputs), instructions, function tools, JSON output formats and reasoning effort. Features
that need OpenAI's server-side state or tools (`previous_response_id`, built-in tools, files)
are refused with a 400 naming the feature, rather than silently dropped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from sidecar.providers.base import Reply, StreamEncoder, TranslationError, new_id
from sidecar.providers.chat import (
    ChatRequest,
    ContentPart,
    FunctionCall,
    FunctionDef,
    FunctionName,
    ImageURL,
    JsonSchemaFormat,
    Message,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
    encode,
)
from sidecar.usage import ResponsesUsage, TokenUsage


class _Wire(msgspec.Struct, omit_defaults=True):
    pass


class InputPart(_Wire):
    type: str = "input_text"
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None


class InputItem(_Wire):
    type: str | None = None
    role: str | None = None
    content: str | list[InputPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None


class ResponsesTool(_Wire):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Wire):
    type: str = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextConfig(_Wire):
    format: TextFormat | None = None


class Reasoning(_Wire):
    effort: str | None = None


class ResponsesRequest(_Wire, kw_only=True):
    model: str
    input: str | list[InputItem] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    user: str | None = None
    previous_response_id: str | None = None


_request_decoder = msgspec.json.Decoder(ResponsesRequest)


def _parts_text(parts: str | list[InputPart] | None) -> str:
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    return "".join(p.text for p in parts if p.text is not None)


def _message(item: InputItem) -> Message:
    role = item.role or "user"
    role = "system" if role == "developer" else role
    if item.content is None or isinstance(item.content, str):
        return Message(role=role, content=item.content or "")
    parts: list[ContentPart] = []
    for p in item.content:
        if p.type in ("input_text", "output_text", "text"):
            parts.append(ContentPart(type="text", text=p.text or ""))
        elif p.type == "input_image" and p.image_url:
            parts.append(ContentPart(type="image_url", image_url=ImageURL(p.image_url, p.detail)))
        else:
            raise TranslationError(
                f"Input parts of type `{p.type}` need an OpenAI provider.", param="input"
            )
    if role != "user" or all(p.type == "text" for p in parts):
        return Message(role=role, content="".join(p.text or "" for p in parts))
    return Message(role=role, content=parts)


def _messages(req: ResponsesRequest) -> list[Message]:
    messages: list[Message] = []
    if req.instructions:
        messages.append(Message(role="system", content=req.instructions))
    if isinstance(req.input, str):
        messages.append(Message(role="user", content=req.input))
        return messages
    for item in req.input:
        kind = item.type or "message"
        if kind == "message":
            messages.append(_message(item))
        elif kind == "function_call":
            call = ToolCall(
                item.call_id or new_id("call_"), FunctionCall(item.name or "", item.arguments or "")
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls is not None:
                last.tool_calls.append(call)  # parallel calls share one assistant turn
            else:
                messages.append(Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            text = _parts_text(item.output)
            messages.append(Message(role="tool", tool_call_id=item.call_id, content=text))
        elif kind != "reasoning":
            raise TranslationError(f"Input items of type `{kind}` need an OpenAI provider.")
    return messages


def _tool(tool: ResponsesTool) -> Tool:
    if tool.type != "function" or not tool.name:
        raise TranslationError(
            f"The built-in tool `{tool.type}` is only available on OpenAI.", param="tools"
        )
    return Tool(FunctionDef(tool.name, tool.description, tool.parameters, tool.strict))


def _tool_choice(choice: str | dict[str, Any] | None) -> str | NamedToolChoice | None:
    if isinstance(choice, dict):
        name = choice.get("name")
        return NamedToolChoice(FunctionName(name)) if isinstance(name, str) else "required"
    return choice


def _response_format(text: TextConfig | None) -> ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema":
        schema = JsonSchemaFormat(fmt.name or "response", fmt.schema, strict=fmt.strict)
        return ResponseFormat("json_schema", schema)
    return ResponseFormat("json_object")


# --- answers --------------------------------------------------------------------------------------


class OutputText(msgspec.Struct):
    text: str
    type: str = "output_text"
    annotations: list[Any] = []


class OutputMessage(msgspec.Struct, kw_only=True):
    id: str
    status: str
    content: list[OutputText]
    type: str = "message"
    role: str = "assistant"


class FunctionCallItem(msgspec.Struct, kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str
    type: str = "function_call"


class _InputDetails(msgspec.Struct):
    cached_tokens: int


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: int


class AnswerUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: _InputDetails
    output_tokens: int
    output_tokens_details: _OutputDetails
    total_tokens: int

    @classmethod
    def of(cls, u: TokenUsage) -> AnswerUsage:
        return cls(
            u.input,
            _InputDetails(u.cached_input),
            u.output,
            _OutputDetails(u.reasoning),
            u.input + u.output,
        )


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: str
    error: None = None
    incomplete_details: dict[str, str] | None = None
    model: str
    output: list[Any]
    parallel_tool_calls: bool = True
    tool_choice: Any = "auto"
    tools: list[Any] = []
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    usage: AnswerUsage | None = None


def response_object(
    id: str, model: str, status: str, output: list[Any], usage: TokenUsage | None
) -> ResponseObject:
    incomplete = status == "incomplete"
    return ResponseObject(
        id=id,
        created_at=int(time.time()),
        status=status,
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        model=model,
        output=output,
        usage=AnswerUsage.of(usage) if usage is not None else None,
    )


class ResponsesIngress:
    def __init__(self, encoder: Callable[[], StreamEncoder]) -> None:
        self._encoder = encoder  # the stream encoder lives in responses_stream.py

    def to_chat(self, body: bytes) -> ChatRequest:
        req = _request_decoder.decode(body)
        if req.previous_response_id:
            raise TranslationError(
                "previous_response_id needs a provider that stores responses (OpenAI).",
                param="previous_response_id",
            )
        return ChatRequest(
            model=req.model,
            messages=_messages(req),
            max_tokens=req.max_output_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stream=req.stream,
            tools=[_tool(t) for t in req.tools] if req.tools else None,
            tool_choice=_tool_choice(req.tool_choice),
            parallel_tool_calls=req.parallel_tool_calls,
            response_format=_response_format(req.text),
            reasoning_effort=req.reasoning.effort if req.reasoning else None,
            user=req.user,
        )

    def reply(self, reply: Reply) -> bytes:
        output: list[Any] = []
        status = "incomplete" if reply.finish_reason == "length" else "completed"
        if reply.content or not reply.tool_calls:
            text = OutputText(reply.content or "")
            output.append(OutputMessage(id=new_id("msg_"), status=status, content=[text]))
        output.extend(
            FunctionCallItem(
                id=new_id("fc_"),
                call_id=call.id,
                name=call.function.name,
                arguments=call.function.arguments,
                status="completed",
            )
            for call in reply.tool_calls
        )
        rid = reply.id if reply.id.startswith("resp_") else new_id("resp_")
        return encode(response_object(rid, reply.model, status, output, reply.usage))

    def encoder(self, *, include_usage: bool) -> StreamEncoder:
        return self._encoder()


# --- same-format meter ----------------------------------------------------------------------------


class _ResponseView(msgspec.Struct):
    model: str = ""
    usage: ResponsesUsage | None = None


class _EventView(msgspec.Struct):
    type: str = ""
    response: _ResponseView | None = None
    delta: str | None = None


_response_decoder = msgspec.json.Decoder(_ResponseView)
_event_decoder = msgspec.json.Decoder(_EventView)
_NULL_USAGE = (b'"usage":null', b'"usage": null')


class ResponsesMeter:
    """Model and usage of Responses traffic passing through unchanged (usage on completion)."""

    def __init__(self) -> None:
        self.model = ""
        self.usage: TokenUsage | None = None
        self.error = ""

    def body(self, body: bytes) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            view = _response_decoder.decode(body)
            self.model = view.model
            if view.usage is not None:
                self.usage = view.usage.normalise()

    def event(self, event: bytes) -> bool:
        if event.startswith((b"event: error", b"event: response.failed")):
            self.error = "The provider reported an error mid-stream."
        if b'"usage"' not in event or any(m in event for m in _NULL_USAGE):
            return False
        with contextlib.suppress(msgspec.DecodeError):
            view = _event_decoder.decode(event.partition(b"data: ")[2])
            if view.response is not None:
                self.model = view.response.model or self.model
                if view.response.usage is not None:
                    self.usage = view.response.usage.normalise()
        return False


def streamed_text(events: list[bytes]) -> str:
    """The output_text deltas of Responses events already sent (to estimate an aborted stream)."""
    parts: list[str] = []
    for event in events:
        if b"output_text.delta" not in event:
            continue
        with contextlib.suppress(msgspec.DecodeError):
            view = _event_decoder.decode(event.partition(b"data: ")[2])
            if view.delta:
                parts.append(view.delta)
    return "".join(parts)
