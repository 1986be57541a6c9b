"""The Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`) in its wire format.

Rules (text and tokens: content.py; caching: caching.py):
- The `anthropic-version` header is required, and `x-api-key` carries the key.
- `system` (a string or text blocks) counts as a system message. Message blocks: text counts
  as text, image and document blocks as media, tool_use as its name and input JSON,
  tool_result as its content's text, thinking as its text.
- The answer is a tool_use block when `tools` are given and tool_choice is "any" (first
  tool) or {"type": "tool"}, or when it is "auto"/absent and the last message is a user
  message whose own text blocks name a tool; stop_reason is then "tool_use". Otherwise the
  text answer, cut by max_tokens (stop_reason "max_tokens") or whole ("end_turn").
- usage.input_tokens excludes cached tokens: cache_read_input_tokens and
  cache_creation_input_tokens are reported apart (explicit caching with cache_control).
- Streams: message_start (usage.output_tokens 1, as the real API), content_block_start,
  ping, content_block_delta per token (text_delta or input_json_delta), content_block_stop,
  message_delta (stop_reason and the cumulative usage.output_tokens), message_stop.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from fakeprovider.content import (
    Turn,
    answer_pieces,
    canonical_json,
    count_prompt,
    last_text,
    plan,
    text_of,
)
from fakeprovider.dialects import ANTHROPIC
from fakeprovider.exchange import Exchange, admit
from fakeprovider.state import new_id
from fakeprovider.structured import ToolCall, mentioned_tool, tool_call_for

_encode = msgspec.json.Encoder().encode


class Block(msgspec.Struct):
    type: str
    text: str | None = None
    name: str | None = None
    input: Any = None
    content: Any = None
    thinking: str | None = None
    cache_control: Any = None


class MessageParam(msgspec.Struct):
    role: str
    content: str | list[Block]


class ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class CountTokensRequest(msgspec.Struct):
    model: str
    messages: list[MessageParam]
    system: str | list[Block] | None = None
    tools: list[dict[str, Any]] | None = None  # counted exactly as sent
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: int
    stream: bool | None = None


_count_decoder = msgspec.json.Decoder(CountTokensRequest)
_messages_decoder = msgspec.json.Decoder(MessagesRequest)


def _block_text(block: Block) -> str | None:
    if block.type == "text":
        return block.text or ""
    if block.type == "tool_use":
        return f"{block.name or ''}\n{canonical_json(block.input or {}).decode()}"
    if block.type == "tool_result":
        return text_of(block.content)
    if block.type == "thinking":
        return block.thinking or ""
    return None  # image, document and other media


def anthropic_turns(
    messages: list[MessageParam], system: str | list[Block] | None = None
) -> tuple[list[Turn], list[int]]:
    """The messages as turns, and the indexes of turns holding a cache_control mark."""
    turns: list[Turn] = []
    marks: list[int] = []
    sources: list[str | list[Block]] = [system] if system else []
    roles = ["system"] if system else []
    sources += [m.content for m in messages]
    roles += [m.role for m in messages]
    for role, content in zip(roles, sources, strict=True):
        if isinstance(content, str):
            turns.append(Turn(role, content))
            continue
        texts: list[str] = []
        media = 0
        for block in content:
            text = _block_text(block)
            if text is None:
                media += 1
            else:
                texts.append(text)
            if block.cache_control is not None and (not marks or marks[-1] != len(turns)):
                marks.append(len(turns))
        turns.append(Turn(role, "\n".join(texts), media))
    return turns, marks


def count_anthropic_input_tokens(
    messages: list[dict[str, Any]],
    system: str | list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> int:
    """Total input tokens (what count_tokens returns; cached ones included)."""
    views = msgspec.convert(messages, list[MessageParam])
    system_view = msgspec.convert(system, str | list[Block] | None)
    turns, _ = anthropic_turns(views, system_view)
    return count_prompt(turns, tools).total


def _own_text(message: MessageParam) -> str:
    if isinstance(message.content, str):
        return message.content
    return "\n".join(b.text or "" for b in message.content if b.type == "text")


def _chosen_tool(req: MessagesRequest) -> tuple[str, Any] | None:
    tools = {
        t["name"]: t.get("input_schema")
        for t in req.tools or ()
        if isinstance(t.get("name"), str) and "input_schema" in t
    }
    choice = req.tool_choice or ToolChoice()
    if not tools or choice.type == "none":
        return None
    name: str | None
    if choice.type == "tool":
        name = choice.name if choice.name in tools else None
    elif choice.type == "any":
        name = next(iter(tools))
    elif req.messages and req.messages[-1].role == "user":
        name = mentioned_tool(list(tools), _own_text(req.messages[-1]))
    else:
        name = None
    return (name, tools[name]) if name is not None else None


class CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int = 0


class Usage(msgspec.Struct):
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cache_creation: CacheCreation
    output_tokens: int
    service_tier: str = "standard"


class DeltaUsage(msgspec.Struct):
    output_tokens: int


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: None = None
    usage: Usage


class StreamEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    message: Message | None = None
    index: int | None = None
    content_block: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    usage: DeltaUsage | None = None


_PING = _encode(StreamEvent(type="ping"))
_STOP = _encode(StreamEvent(type="message_stop"))


async def count_tokens(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, ANTHROPIC, "messages.count_tokens", _count_decoder)
    if not isinstance(ex, Exchange):
        return ex
    turns, _ = anthropic_turns(ex.body.messages, ex.body.system)
    total = count_prompt(turns, ex.body.tools).total
    return await ex.reply(_encode({"input_tokens": total}))


async def create_message(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, ANTHROPIC, "messages", _messages_decoder)
    if not isinstance(ex, Exchange):
        return ex
    req = ex.body
    if req.max_tokens < 1:
        return ANTHROPIC.error(400, "max_tokens: must be greater than or equal to 1")
    turns, marks = anthropic_turns(req.messages, req.system)
    count = count_prompt(turns, req.tools)
    tools_key = b""
    if req.tools:
        tools_key = canonical_json(req.tools)
        if any("cache_control" in tool for tool in req.tools):
            marks.append(-1)
    read, write = ex.state.prompt_cache.explicit(
        f"anthropic\x00{req.model}", turns, count, tools_key, marks
    )
    seed = last_text(turns)
    chosen = _chosen_tool(req)
    call = tool_call_for(chosen[0], chosen[1], seed) if chosen is not None else None
    answer = plan(answer_pieces(seed, ex.settings.output_tokens), limit=req.max_tokens)
    output = call.output_tokens if call is not None else answer.output_tokens
    if call is not None:
        stop_reason = "tool_use"
    else:
        stop_reason = "max_tokens" if answer.truncated else "end_turn"
    usage = Usage(
        input_tokens=count.total - read - write,
        cache_creation_input_tokens=write,
        cache_read_input_tokens=read,
        cache_creation=CacheCreation(write),
        output_tokens=output,
    )
    tool_id = new_id("toolu_")
    if call is not None:
        block = {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}
    else:
        block = {"type": "text", "text": ""}
    message = Message(
        id=new_id("msg_"), model=req.model, content=[block], stop_reason=None, usage=usage
    )
    if req.stream:
        return await _stream(ex, message, block, answer.pieces, call, stop_reason)
    if call is not None:
        block = block | {"input": msgspec.json.decode(call.arguments)}
    else:
        block = {"type": "text", "text": answer.text}
    done = msgspec.structs.replace(message, content=[block], stop_reason=stop_reason)
    return await ex.reply(_encode(done), tokens=output)


async def _stream(
    ex: Exchange[MessagesRequest],
    message: Message,
    block: dict[str, Any],
    pieces: tuple[str, ...],
    call: ToolCall | None,
    stop_reason: str,
) -> web.StreamResponse:
    stream = await ex.stream()
    usage = message.usage
    opening_usage = msgspec.structs.replace(usage, output_tokens=1)
    opening = msgspec.structs.replace(message, content=[], usage=opening_usage)
    await stream.send(_encode(StreamEvent(type="message_start", message=opening)), "message_start")
    start = StreamEvent(type="content_block_start", index=0, content_block=block)
    await stream.send(_encode(start), "content_block_start")
    await stream.send(_PING, "ping")
    if call is not None:
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in call.arguments_pieces]
    else:
        deltas = [{"type": "text_delta", "text": p} for p in pieces]
    for delta in deltas:
        event = StreamEvent(type="content_block_delta", index=0, delta=delta)
        await stream.send(_encode(event), "content_block_delta", paced=True)
    stop = StreamEvent(type="content_block_stop", index=0)
    await stream.send(_encode(stop), "content_block_stop")
    closing = StreamEvent(
        type="message_delta",
        delta={"stop_reason": stop_reason, "stop_sequence": None},
        usage=DeltaUsage(usage.output_tokens),
    )
    await stream.send(_encode(closing), "message_delta")
    await stream.send(_STOP, "message_stop")
    return await stream.finish()


class ModelInfo(msgspec.Struct):
    id: str
    display_name: str
    created_at: str = "2025-01-01T00:00:00Z"
    type: str = "model"


class ModelPage(msgspec.Struct):
    data: list[ModelInfo]
    first_id: str | None
    last_id: str | None
    has_more: bool = False


MODELS = ("claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-sonnet-4-5")
"""Listed by GET /v1/models (with an anthropic-version header); any other name is served too."""

_MODEL_PAGE = _encode(
    ModelPage([ModelInfo(name, name) for name in MODELS], first_id=MODELS[0], last_id=MODELS[-1])
)


async def list_models(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, ANTHROPIC, "models", None)
    if not isinstance(ex, Exchange):
        return ex
    return await ex.reply(_MODEL_PAGE)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", create_message)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
