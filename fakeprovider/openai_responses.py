"""The OpenAI Responses API (`POST /v1/responses`), non-stream and stream, in OpenAI's format.

Rules: the same answer, tool and JSON rules as Chat Completions (see openai_api.py), with
`instructions` counted as a system message, `input` as a string (one user message) or a list
of items (messages, function_call, function_call_output), `max_output_tokens` as the limit,
`text.format` for JSON, `reasoning.effort` for reasoning models (which also get a reasoning
output item). A cut answer ends with status "incomplete" (reason max_output_tokens) and, in
a stream, the `response.incomplete` event instead of `response.completed`, as the real API.

Stream events: response.created, response.in_progress, [reasoning item added/done],
response.output_item.added, response.content_part.added, response.output_text.delta (one
per token), response.output_text.done, response.content_part.done,
response.output_item.done, response.completed. A function call streams
response.function_call_arguments.delta/done instead of the content events.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from fakeprovider.content import (
    Completion,
    Turn,
    canonical_json,
    count_prompt,
    last_text,
    reasoning_tokens_for,
    text_of,
)
from fakeprovider.dialects import OPENAI
from fakeprovider.exchange import Exchange, admit
from fakeprovider.openai_api import chosen_tool, function_tools
from fakeprovider.state import new_id
from fakeprovider.structured import ToolCall, answer_for, tool_call_for

_encode = msgspec.json.Encoder().encode


class InputPart(msgspec.Struct):
    type: str = "input_text"
    text: str | None = None


class InputItem(msgspec.Struct):
    type: str | None = None
    role: str | None = None
    content: str | list[InputPart] | None = None
    name: str | None = None
    arguments: str | None = None
    output: Any = None


class TextFormat(msgspec.Struct):
    type: str = "text"
    schema: Any = None


class TextConfig(msgspec.Struct):
    format: TextFormat | None = None


class ReasoningConfig(msgspec.Struct):
    effort: str | None = None


class ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[InputItem] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    stream: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)


def responses_turns(input: str | list[InputItem], instructions: str | None = None) -> list[Turn]:
    turns = [Turn("system", instructions)] if instructions else []
    if isinstance(input, str):
        turns.append(Turn("user", input))
        return turns
    for item in input:
        if item.type in (None, "message"):
            texts: list[str] = []
            media = 0
            if isinstance(item.content, str):
                texts.append(item.content)
            for part in item.content if isinstance(item.content, list) else ():
                if part.text is not None:
                    texts.append(part.text)
                else:
                    media += 1
            turns.append(Turn(item.role or "user", "\n".join(texts), media))
        elif item.type == "function_call":
            turns.append(Turn("assistant", f"{item.name or ''}\n{item.arguments or ''}"))
        elif item.type == "function_call_output":
            turns.append(Turn("tool", text_of(item.output)))
    return turns


def count_responses_input_tokens(
    input: str | list[dict[str, Any]],
    instructions: str | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> int:
    """usage.input_tokens the server reports for this Responses input."""
    items = input if isinstance(input, str) else msgspec.convert(input, list[InputItem])
    return count_prompt(responses_turns(items, instructions), tools).total


class OutputText(msgspec.Struct, kw_only=True):
    type: str = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(msgspec.Struct, kw_only=True):
    type: str = "message"
    id: str
    status: str
    role: str = "assistant"
    content: list[OutputText]


class FunctionCallItem(msgspec.Struct, kw_only=True):
    type: str = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ReasoningItem(msgspec.Struct, kw_only=True):
    type: str = "reasoning"
    id: str
    summary: list[Any] = []


OutputItem = OutputMessage | FunctionCallItem | ReasoningItem


class InputDetails(msgspec.Struct):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputDetails(msgspec.Struct):
    reasoning_tokens: int


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputDetails
    output_tokens: int
    output_tokens_details: OutputDetails
    total_tokens: int


class Incomplete(msgspec.Struct):
    reason: str


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: str
    error: None = None
    incomplete_details: Incomplete | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    reasoning: dict[str, Any]
    store: bool = True
    temperature: float = 1.0
    text: dict[str, Any]
    tool_choice: Any
    tools: list[dict[str, Any]]
    top_p: float = 1.0
    truncation: str = "disabled"
    usage: ResponseUsage | None
    user: None = None
    metadata: dict[str, Any] = {}


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every Responses stream event; each kind sets its own subset of fields."""

    type: str
    sequence_number: int
    response: ResponseObject | None = None
    output_index: int | None = None
    item_id: str | None = None
    content_index: int | None = None
    item: OutputItem | None = None
    part: OutputText | None = None
    delta: str | None = None
    text: str | None = None
    name: str | None = None
    arguments: str | None = None
    logprobs: list[Any] | None = None


async def create_response(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, OPENAI, "responses", _decoder)
    if not isinstance(ex, Exchange):
        return ex
    req = ex.body
    effort = req.reasoning.effort if req.reasoning is not None else None
    reasoning = reasoning_tokens_for(req.model, effort)
    turns = responses_turns(req.input, req.instructions)
    count = count_prompt(turns, req.tools)
    tools_key = canonical_json(req.tools) if req.tools else b""
    cached = ex.state.prompt_cache.implicit(f"openai\x00{req.model}", turns, count, tools_key)
    limit = req.max_output_tokens
    seed = last_text(turns)

    tools = function_tools(req.tools)
    name = chosen_tool(tools, req.tool_choice, turns)
    call = tool_call_for(name, tools[name], seed) if name is not None else None
    fmt = req.text.format if req.text is not None and req.text.format is not None else None
    answer = answer_for(
        seed,
        call=call,
        json_mode=fmt is not None and fmt.type in ("json_object", "json_schema"),
        schema=fmt.schema if fmt is not None and fmt.type == "json_schema" else None,
        limit=limit,
        reasoning=reasoning,
        output_tokens=ex.settings.output_tokens,
    )
    output = answer.output_tokens + (call.output_tokens if call is not None else 0)
    usage = ResponseUsage(
        input_tokens=count.total,
        input_tokens_details=InputDetails(cached),
        output_tokens=output,
        output_tokens_details=OutputDetails(answer.reasoning_tokens),
        total_tokens=count.total + output,
    )
    status = "incomplete" if answer.truncated else "completed"
    items: list[OutputItem] = []
    if reasoning_tokens_for(req.model):
        items.append(ReasoningItem(id=new_id("rs_")))
    if call is not None:
        items.append(_function_item(call, "completed"))
    else:
        text = OutputText(text=answer.text)
        items.append(OutputMessage(id=new_id("msg_"), status=status, content=[text]))
    final = ResponseObject(
        id=new_id("resp_"),
        created_at=int(time.time()),
        status=status,
        incomplete_details=Incomplete("max_output_tokens") if answer.truncated else None,
        instructions=req.instructions,
        max_output_tokens=limit,
        model=req.model,
        output=items,
        reasoning={"effort": effort, "summary": None},
        text={"format": msgspec.to_builtins(fmt) if fmt is not None else {"type": "text"}},
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        tools=req.tools or [],
        usage=usage,
    )
    if req.stream:
        return await _stream(ex, final, answer, call)
    return await ex.reply(_encode(final), tokens=output)


def _function_item(call: ToolCall, status: str, item_id: str | None = None) -> FunctionCallItem:
    return FunctionCallItem(
        id=item_id or new_id("fc_"),
        call_id=new_id("call_"),
        name=call.name,
        arguments=call.arguments if status == "completed" else "",
        status=status,
    )


async def _stream(
    ex: Exchange[ResponsesRequest],
    final: ResponseObject,
    answer: Completion,
    call: ToolCall | None,
) -> web.StreamResponse:
    stream = await ex.stream()
    sequence = 0

    async def send(kind: str, *, paced: bool = False, **fields: Any) -> None:
        nonlocal sequence
        event = Event(type=kind, sequence_number=sequence, **fields)
        sequence += 1
        await stream.send(_encode(event), kind, paced=paced)

    opening = msgspec.structs.replace(final, status="in_progress", output=[], usage=None)
    opening = msgspec.structs.replace(opening, incomplete_details=None)
    await send("response.created", response=opening)
    await send("response.in_progress", response=opening)
    for index, item in enumerate(final.output):
        if isinstance(item, ReasoningItem):
            await send("response.output_item.added", output_index=index, item=item)
            await send("response.output_item.done", output_index=index, item=item)
        elif isinstance(item, FunctionCallItem) and call is not None:
            begun = msgspec.structs.replace(item, arguments="", status="in_progress")
            ids: dict[str, Any] = {"output_index": index, "item_id": item.id}
            await send("response.output_item.added", output_index=index, item=begun)
            for piece in call.arguments_pieces:
                await send("response.function_call_arguments.delta", paced=True, delta=piece, **ids)
            await send("response.function_call_arguments.done", arguments=item.arguments, **ids)
            await send("response.output_item.done", output_index=index, item=item)
        elif isinstance(item, OutputMessage):
            begun_message = msgspec.structs.replace(item, status="in_progress", content=[])
            at: dict[str, Any] = {"output_index": index, "item_id": item.id, "content_index": 0}
            await send("response.output_item.added", output_index=index, item=begun_message)
            await send("response.content_part.added", part=OutputText(text=""), **at)
            for piece in answer.pieces:
                await send("response.output_text.delta", paced=True, delta=piece, logprobs=[], **at)
            await send("response.output_text.done", text=answer.text, logprobs=[], **at)
            await send("response.content_part.done", part=item.content[0], **at)
            await send("response.output_item.done", output_index=index, item=item)
    closing = "response.incomplete" if final.status == "incomplete" else "response.completed"
    await send(closing, response=final)
    return await stream.finish()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create_response)
