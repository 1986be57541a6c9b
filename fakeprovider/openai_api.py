"""OpenAI Chat Completions and the model list, in OpenAI's wire format.

Chat rules (see content.py and structured.py for text, tokens and JSON):
- The answer is a tool call when `tools` are given and `tool_choice` is "required" (first
  tool) or names a function, or when it is "auto"/absent and the last message is a user
  message naming a tool; finish_reason is then "tool_calls". "none" never calls.
- `response_format` json_object / json_schema makes the content JSON.
- The limit is max_completion_tokens, else max_tokens; reasoning models (o1…, gpt-5…) refuse
  max_tokens as the real API does, and report reasoning_tokens.
- Streams send a role chunk, one chunk per token, a finish chunk, then `data: [DONE]`. The
  usage chunk (empty choices) comes only with stream_options.include_usage, and then every
  other chunk carries "usage": null, as OpenAI does.
- usage.prompt_tokens_details.cached_tokens follows the implicit caching rule (caching.py).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from fakeprovider.content import (
    Completion,
    PromptCount,
    Turn,
    canonical_json,
    count_prompt,
    last_text,
    reasoning_tokens_for,
)
from fakeprovider.dialects import OPENAI
from fakeprovider.exchange import Exchange, admit
from fakeprovider.state import new_id
from fakeprovider.structured import ToolCall, answer_for, mentioned_tool, tool_call_for

_UNSET = msgspec.UNSET
_encode = msgspec.json.Encoder().encode

# ---------------------------------------------------------------------------------------------
# Request views: only the fields the fake acts on
# ---------------------------------------------------------------------------------------------


class ContentPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class FunctionCallView(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class ToolCallView(msgspec.Struct):
    function: FunctionCallView | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallView] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class JsonSchemaSpec(msgspec.Struct):
    name: str = ""
    schema: Any = None


class ResponseFormat(msgspec.Struct):
    type: str = "text"
    json_schema: JsonSchemaSpec | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None  # counted exactly as sent
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)


def chat_turns(messages: list[ChatMessage]) -> list[Turn]:
    turns = []
    for message in messages:
        texts: list[str] = []
        media = 0
        if isinstance(message.content, str):
            texts.append(message.content)
        elif message.content:
            for part in message.content:
                if part.text is not None:
                    texts.append(part.text)
                else:
                    media += 1
        for call in message.tool_calls or ():
            if call.function is not None:
                texts += (call.function.name, call.function.arguments)
        turns.append(Turn(message.role, "\n".join(texts), media, message.name))
    return turns


def count_chat_prompt_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> int:
    """prompt_tokens the server reports for these chat messages and tool definitions."""
    views = msgspec.convert(messages, list[ChatMessage])
    return count_prompt(chat_turns(views), tools).total


def function_tools(tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """name -> parameters schema of the function tools, in definition order."""
    found: dict[str, Any] = {}
    for tool in tools or ():
        spec = tool.get("function", tool)  # Chat nests the function; Responses does not
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            found[spec["name"]] = spec.get("parameters")
    return found


def chosen_tool(
    tools: dict[str, Any], choice: str | dict[str, Any] | None, turns: list[Turn]
) -> str | None:
    """Which tool the fake model calls, by OpenAI's tool_choice (Chat or Responses shape)."""
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        spec = choice.get("function", choice)
        name = spec.get("name") if isinstance(spec, dict) else None
        return name if isinstance(name, str) and name in tools else None
    if choice == "required":
        return next(iter(tools))
    if not turns or turns[-1].role != "user":
        return None
    return mentioned_tool(list(tools), turns[-1].text)


# ---------------------------------------------------------------------------------------------
# Response structs
# ---------------------------------------------------------------------------------------------


class PromptDetails(msgspec.Struct):
    cached_tokens: int
    audio_tokens: int = 0


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails
    completion_tokens_details: CompletionDetails


class FunctionOut(msgspec.Struct):
    arguments: str
    name: str | msgspec.UnsetType = _UNSET


class ToolCallOut(msgspec.Struct, kw_only=True):
    index: int | msgspec.UnsetType = _UNSET
    id: str | msgspec.UnsetType = _UNSET
    type: str | msgspec.UnsetType = _UNSET
    function: FunctionOut


class Message(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    refusal: None = None
    annotations: list[Any] = []
    tool_calls: list[ToolCallOut] | msgspec.UnsetType = _UNSET


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: Message
    logprobs: None = None
    finish_reason: str


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    service_tier: str = "default"
    system_fingerprint: str = "fp_fakeprovider"


class Delta(msgspec.Struct, kw_only=True):
    role: str | msgspec.UnsetType = _UNSET
    content: str | msgspec.UnsetType | None = _UNSET
    refusal: msgspec.UnsetType | None = _UNSET
    tool_calls: list[ToolCallOut] | msgspec.UnsetType = _UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    service_tier: str = "default"
    system_fingerprint: str = "fp_fakeprovider"
    choices: list[ChunkChoice]
    usage: Usage | msgspec.UnsetType | None = _UNSET


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


def _usage(count: PromptCount, cached: int, output: int, reasoning: int) -> Usage:
    return Usage(
        prompt_tokens=count.total,
        completion_tokens=output,
        total_tokens=count.total + output,
        prompt_tokens_details=PromptDetails(cached),
        completion_tokens_details=CompletionDetails(reasoning),
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, OPENAI, "chat.completions", _chat_decoder)
    if not isinstance(ex, Exchange):
        return ex
    req = ex.body
    reasoning = reasoning_tokens_for(req.model, req.reasoning_effort)
    if reasoning and req.max_tokens is not None:
        return OPENAI.detailed_error(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    turns = chat_turns(req.messages)
    count = count_prompt(turns, req.tools)
    tools_key = canonical_json(req.tools) if req.tools else b""
    cached = ex.state.prompt_cache.implicit(f"openai\x00{req.model}", turns, count, tools_key)
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    seed = last_text(turns)

    tools = function_tools(req.tools)
    name = chosen_tool(tools, req.tool_choice, turns)
    call = tool_call_for(name, tools[name], seed) if name is not None else None
    fmt = req.response_format
    spec = fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None
    answer = answer_for(
        seed,
        call=call,
        json_mode=fmt is not None and fmt.type in ("json_object", "json_schema"),
        schema=spec.schema if spec is not None else None,
        limit=limit,
        reasoning=reasoning,
        output_tokens=ex.settings.output_tokens,
    )
    output = answer.output_tokens + (call.output_tokens if call is not None else 0)
    usage = _usage(count, cached, output, answer.reasoning_tokens)
    finish = "tool_calls" if call is not None else ("length" if answer.truncated else "stop")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await _stream_chat(ex, req.model, answer, call, usage, finish, include_usage)
    if call is not None:
        tool_call = ToolCallOut(
            id=new_id("call_"), type="function", function=FunctionOut(call.arguments, call.name)
        )
        message = Message(content=None, tool_calls=[tool_call])
    else:
        message = Message(content=answer.text)
    body = ChatCompletion(
        id=new_id("chatcmpl-"),
        created=int(time.time()),
        model=req.model,
        choices=[Choice(message=message, finish_reason=finish)],
        usage=usage,
    )
    return await ex.reply(_encode(body), tokens=output)


async def _stream_chat(
    ex: Exchange[ChatRequest],
    model: str,
    answer: Completion,
    call: ToolCall | None,
    usage: Usage,
    finish: str,
    include_usage: bool,
) -> web.StreamResponse:
    stream = await ex.stream()
    chunk_id = new_id("chatcmpl-")
    created = int(time.time())
    none_yet: Usage | msgspec.UnsetType | None = None if include_usage else _UNSET

    async def send(delta: Delta, finish_reason: str | None = None, *, paced: bool = False) -> None:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        chunk = ChatChunk(
            id=chunk_id, created=created, model=model, choices=[choice], usage=none_yet
        )
        await stream.send(_encode(chunk), paced=paced)

    if call is None:
        await send(Delta(role="assistant", content="", refusal=None))
        for piece in answer.pieces:
            await send(Delta(content=piece), paced=True)
    else:
        head = ToolCallOut(
            index=0, id=new_id("call_"), type="function", function=FunctionOut("", call.name)
        )
        await send(Delta(role="assistant", content=None, refusal=None, tool_calls=[head]))
        for piece in call.arguments_pieces:
            await send(
                Delta(tool_calls=[ToolCallOut(index=0, function=FunctionOut(piece))]), paced=True
            )
    await send(Delta(), finish)
    if include_usage:
        tail = ChatChunk(id=chunk_id, created=created, model=model, choices=[], usage=usage)
        await stream.send(_encode(tail))
    await stream.send(b"[DONE]")
    return await stream.finish()


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o3-mini",
    "o4-mini", "gpt-5", "gpt-5-mini", "text-embedding-3-small", "text-embedding-3-large",
    "text-embedding-ada-002",
)  # fmt: skip
"""Listed by GET /v1/models; any other name is served too."""

_CREATED = 1_700_000_000


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = _CREATED
    owned_by: str = "fakeprovider"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


_MODEL_LIST = _encode(ModelList([ModelCard(name) for name in MODELS]))


async def list_models(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, OPENAI, "models", None)
    if not isinstance(ex, Exchange):
        return ex
    return await ex.reply(_MODEL_LIST)


async def get_model(request: web.Request) -> web.StreamResponse:
    name = request.match_info["model"]
    ex = await admit(request, OPENAI, "models", None, model=name)
    if not isinstance(ex, Exchange):
        return ex
    return await ex.reply(_encode(ModelCard(name)))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models/{model}", get_model)
