"""Anthropic Messages as an ingress and as an egress: requests and whole answers.

Streams are in `anthropic_stream.py`. Mapping notes: system prompts become the hub's system
messages; tool_result blocks become `tool` messages placed before the rest of their user turn
(OpenAI wants them right after the calls they answer); JSON mode, which Messages lacks, is
asked for with a system instruction; temperatures above Anthropic's 1.0 are clamped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from sidecar.policy import CompiledDeployment
from sidecar.providers.base import (
    FinishReason,
    Reply,
    StreamDecoder,
    StreamEncoder,
    TranslationError,
    error_message,
    new_id,
    parse_data_url,
)
from sidecar.providers.chat import (
    ChatRequest,
    ContentPart,
    FunctionCall,
    FunctionDef,
    FunctionName,
    ImageURL,
    Message,
    NamedToolChoice,
    Tool,
    ToolCall,
    encode,
)
from sidecar.usage import AnthropicUsage, TokenUsage

DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; the hub does not
API_VERSION = "2023-06-01"
_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_REASON: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_any = msgspec.json.Decoder()


class _Wire(msgspec.Struct, omit_defaults=True):
    pass


class ImageSource(_Wire):
    type: str  # base64 | url
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(_Wire):
    type: str
    text: str | None = None
    source: ImageSource | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None


class AnthropicMessage(_Wire):
    role: str
    content: str | list[Block]


class AnthropicTool(_Wire):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # set for Anthropic's server tools (web search, …)


class ToolChoice(_Wire):
    type: str = "auto"
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Wire):
    user_id: str | None = None


class MessagesRequest(_Wire, kw_only=True):
    model: str
    messages: list[AnthropicMessage]
    max_tokens: int
    system: str | list[Block] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None


class AnswerUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int

    @classmethod
    def of(cls, usage: TokenUsage) -> AnswerUsage:
        # Anthropic's input_tokens exclude cache reads and writes.
        uncached = max(usage.input - usage.cached_input - usage.cache_write, 0)
        return cls(uncached, usage.output, usage.cache_write, usage.cached_input)


class Answer(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[Block]
    stop_reason: str | None
    stop_sequence: None = None
    usage: AnswerUsage


class MessageView(msgspec.Struct):
    """An upstream Messages answer (or message_start's message), only what the hub needs."""

    id: str = ""
    model: str = ""
    content: list[Block] = []
    stop_reason: str | None = None
    usage: AnthropicUsage | None = None


_request_decoder = msgspec.json.Decoder(MessagesRequest)
_message_decoder = msgspec.json.Decoder(MessageView)


def finish_of(stop_reason: str | None) -> FinishReason:
    return _STOP.get(stop_reason or "end_turn", "stop")


def _text(content: str | list[Block] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(b.text for b in content if b.type == "text" and b.text is not None)


def _image_url(source: ImageSource | None) -> str:
    if source is not None and source.type == "base64" and source.data:
        return f"data:{source.media_type or 'image/png'};base64,{source.data}"
    if source is not None and source.type == "url" and source.url:
        return source.url
    raise TranslationError("An image block needs a base64 or url source.")


# --- ingress: Messages → hub --------------------------------------------------------------------


class MessagesIngress:
    def __init__(self, encoder: Callable[[], StreamEncoder]) -> None:
        self._encoder = encoder  # the stream encoder lives in anthropic_stream.py

    def to_chat(self, body: bytes) -> ChatRequest:
        req = _request_decoder.decode(body)
        messages: list[Message] = []
        if req.system:
            messages.append(Message(role="system", content=_text(req.system)))
        for m in req.messages:
            if isinstance(m.content, str):
                messages.append(Message(role=m.role, content=m.content))
            elif m.role == "assistant":
                messages.append(_assistant_message(m.content))
            else:
                messages.extend(_user_messages(m.content))
        return ChatRequest(
            model=req.model,
            messages=messages,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop_sequences,
            stream=req.stream,
            tools=[_hub_tool(t) for t in req.tools] if req.tools else None,
            tool_choice=_hub_tool_choice(req.tool_choice),
            parallel_tool_calls=(
                False if req.tool_choice and req.tool_choice.disable_parallel_tool_use else None
            ),
            user=req.metadata.user_id if req.metadata else None,
        )

    def reply(self, reply: Reply) -> bytes:
        blocks: list[Block] = []
        if reply.content:
            blocks.append(Block(type="text", text=reply.content))
        blocks.extend(tool_use_block(call) for call in reply.tool_calls)
        if not blocks:
            blocks.append(Block(type="text", text=""))
        answer = Answer(
            id=reply.id if reply.id.startswith("msg_") else new_id("msg_"),
            model=reply.model,
            content=blocks,
            stop_reason=STOP_REASON[reply.finish_reason],
            usage=AnswerUsage.of(reply.usage),
        )
        return encode(answer)

    def encoder(self, *, include_usage: bool) -> StreamEncoder:
        return self._encoder()  # Messages streams always carry usage


def _assistant_message(blocks: list[Block]) -> Message:
    texts = [b.text for b in blocks if b.type == "text" and b.text]
    calls = [
        ToolCall(
            id=b.id or new_id("toolu_"),
            function=FunctionCall(b.name or "", encode(b.input or {}).decode()),
        )
        for b in blocks
        if b.type == "tool_use"
    ]
    return Message(role="assistant", content="".join(texts) or None, tool_calls=calls or None)


def _user_messages(blocks: list[Block]) -> list[Message]:
    out: list[Message] = []
    parts: list[ContentPart] = []
    for b in blocks:
        if b.type == "tool_result":
            text = _text(b.content)
            out.append(Message(role="tool", tool_call_id=b.tool_use_id, content=text))
        elif b.type == "text":
            parts.append(ContentPart(type="text", text=b.text or ""))
        elif b.type == "image":
            parts.append(ContentPart(type="image_url", image_url=ImageURL(_image_url(b.source))))
        elif b.type not in ("thinking", "redacted_thinking"):
            raise TranslationError(
                f"Content blocks of type `{b.type}` can only be sent to an Anthropic provider."
            )
    if parts:
        if all(p.type == "text" for p in parts):
            out.append(Message(role="user", content="\n".join(p.text or "" for p in parts)))
        else:
            out.append(Message(role="user", content=parts))
    return out


def _hub_tool(tool: AnthropicTool) -> Tool:
    if tool.type not in (None, "custom"):
        raise TranslationError(
            f"The server tool `{tool.name}` ({tool.type}) is only available on Anthropic.",
            param="tools",
        )
    schema = tool.input_schema or {"type": "object", "properties": {}}
    return Tool(function=FunctionDef(tool.name, tool.description, schema))


def _hub_tool_choice(choice: ToolChoice | None) -> str | NamedToolChoice | None:
    if choice is None:
        return None
    if choice.type == "tool" and choice.name:
        return NamedToolChoice(FunctionName(choice.name))
    return {"any": "required", "none": "none"}.get(choice.type, "auto")


def tool_use_block(call: ToolCall) -> Block:
    return Block(
        type="tool_use", id=call.id, name=call.function.name,
        input=_arguments(call.function.arguments),
    )  # fmt: skip


def _arguments(text: str) -> Any:
    try:
        value = _any.decode(text) if text else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


# --- egress: hub → Messages ---------------------------------------------------------------------


def to_messages(request: ChatRequest) -> tuple[list[str], list[AnthropicMessage]]:
    """The hub's messages as Messages turns: (system texts, alternating turns)."""
    system: list[str] = []
    turns: list[AnthropicMessage] = []

    def add(role: str, blocks: list[Block]) -> None:
        if not blocks:
            return
        last = turns[-1] if turns else None
        if last is not None and last.role == role and isinstance(last.content, list):
            last.content.extend(blocks)  # Bedrock requires strict alternation; Anthropic merges
        else:
            turns.append(AnthropicMessage(role=role, content=blocks))

    for m in request.messages:
        if m.role in ("system", "developer"):
            system.append(m.text())
        elif m.role == "tool":
            add("user", [Block(type="tool_result", tool_use_id=m.tool_call_id, content=m.text())])
        elif m.role == "assistant":
            blocks = [Block(type="text", text=m.text())] if m.text() else []
            blocks.extend(tool_use_block(call) for call in m.tool_calls or ())
            add("assistant", blocks)
        else:
            add("user", _user_blocks(m))
    instruction = request.json_instruction()
    if instruction:
        system.append(instruction)
    return system, turns


def _user_blocks(m: Message) -> list[Block]:
    if isinstance(m.content, str) or m.content is None:
        return [Block(type="text", text=m.content or "")]
    blocks: list[Block] = []
    for part in m.content:
        if part.type == "text":
            blocks.append(Block(type="text", text=part.text or ""))
        elif part.type == "image_url" and part.image_url is not None:
            data = parse_data_url(part.image_url.url)
            if data is None:
                source = ImageSource(type="url", url=part.image_url.url)
            else:
                source = ImageSource(type="base64", media_type=data.media_type, data=data.data)
            blocks.append(Block(type="image", source=source))
        else:
            raise TranslationError(f"Content parts of type `{part.type}` cannot be translated.")
    return blocks


def _tool_choice(request: ChatRequest) -> ToolChoice | None:
    choice = request.tool_choice
    parallel_off = True if request.parallel_tool_calls is False else None
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("tool", choice.function.name, parallel_off)
    if choice is None and parallel_off is None:
        return None
    kind = {"required": "any", "none": "none"}.get(choice or "auto", "auto")
    return ToolChoice(kind, disable_parallel_tool_use=parallel_off if kind != "none" else None)


class AnthropicEgress:
    kind = "anthropic"
    native = frozenset({"messages", "count_tokens"})
    stream_content_types: tuple[str, ...] = ("text/event-stream",)

    def __init__(self, decoder: Callable[[str], StreamDecoder]) -> None:
        self._decoder = decoder  # the stream decoder lives in anthropic_stream.py

    def url(self, d: CompiledDeployment, wire: str, *, stream: bool) -> str:
        # Accept the SDK-style base (https://api.anthropic.com) and one ending in /v1.
        root = d.base_url if d.base_url.endswith("/v1") else d.base_url + "/v1"
        return root + ("/messages/count_tokens" if wire == "count_tokens" else "/messages")

    def encode(self, request: ChatRequest, d: CompiledDeployment, *, stream: bool) -> bytes:
        system, turns = to_messages(request)
        temperature = request.temperature
        tools = [
            AnthropicTool(t.function.name, t.function.description, t.function.parameters or {})
            for t in request.tools or ()
        ]
        return encode(
            MessagesRequest(
                model=d.model,
                messages=turns,
                max_tokens=request.output_limit or DEFAULT_MAX_TOKENS,
                system="\n\n".join(system) or None,
                stop_sequences=request.stop_list or None,
                temperature=min(temperature, 1.0) if temperature is not None else None,
                top_p=request.top_p,
                stream=True if stream else None,
                tools=tools or None,
                tool_choice=_tool_choice(request) if tools else None,
                metadata=Metadata(request.user) if request.user else None,
            )
        )

    def reply(self, body: bytes, d: CompiledDeployment) -> Reply:
        view = _message_decoder.decode(body)
        texts = [b.text for b in view.content if b.type == "text" and b.text]
        calls = [
            ToolCall(id=b.id or new_id("toolu_"), function=FunctionCall(b.name or "", _json(b)))
            for b in view.content
            if b.type == "tool_use"
        ]
        return Reply(
            id=view.id or new_id("msg_"),
            model=view.model or d.model,
            content="".join(texts) if texts or not calls else None,
            tool_calls=calls,
            finish_reason=finish_of(view.stop_reason),
            usage=view.usage.normalise() if view.usage else TokenUsage(),
        )

    def decoder(self, d: CompiledDeployment) -> StreamDecoder:
        return self._decoder(d.model)

    def error_message(self, body: bytes) -> str:
        return error_message(body)


def _json(block: Block) -> str:
    return encode(block.input if block.input is not None else {}).decode()


def message_view(body: bytes) -> MessageView:
    return _message_decoder.decode(body)
