"""The Gemini API (`/v1beta/models/{model}:generateContent` and friends) in Google's format.

Rules (text and tokens: content.py; JSON and tools: structured.py; caching: caching.py):
- The key comes in `x-goog-api-key` or `?key=`. The model is the one in the path.
- `systemInstruction` counts as a system message; parts count text as text, inlineData and
  fileData as media, functionCall / functionResponse as the name and the JSON of args /
  response. Parts marked `thought` are skipped.
- The answer is a functionCall part when tools declare functions and
  toolConfig.functionCallingConfig.mode is "ANY" (first allowed function), or when it is
  "AUTO"/absent and the last content is a user turn whose text names a function.
  responseMimeType "application/json" makes the text JSON (responseJsonSchema or
  responseSchema when given).
- gemini-2.5* models think 64 tokens, or thinkingConfig.thinkingBudget when smaller (0 turns
  thinking off); thoughts are spent first out of maxOutputTokens, as reasoning is elsewhere.
- usageMetadata: promptTokenCount includes cachedContentTokenCount (implicit caching),
  candidatesTokenCount excludes thoughtsTokenCount, totalTokenCount sums prompt, candidates
  and thoughts. Zero counts are left out, as the real API's JSON does.
- :streamGenerateContent sends one chunk per token with running usage; the last chunk has
  finishReason (STOP or MAX_TOKENS) and the final usage. With `?alt=sse` chunks are SSE
  `data:` events ended by CRLF CRLF; without it, one JSON array streamed element by element.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from fakeprovider.content import (
    Completion,
    PromptCount,
    Turn,
    canonical_json,
    count_prompt,
    is_reasoning_model,
    last_text,
    reasoning_tokens_for,
)
from fakeprovider.dialects import GEMINI
from fakeprovider.exchange import Exchange, admit
from fakeprovider.state import new_id
from fakeprovider.structured import ToolCall, answer_for, mentioned_tool, tool_call_for

_encode = msgspec.json.Encoder().encode


class FunctionCallPart(msgspec.Struct):
    name: str = ""
    args: Any = None


class FunctionResponsePart(msgspec.Struct):
    name: str = ""
    response: Any = None


class Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    inline_data: Any = None
    file_data: Any = None
    function_call: FunctionCallPart | None = None
    function_response: FunctionResponsePart | None = None
    thought: bool | None = None


class Content(msgspec.Struct):
    role: str = "user"
    parts: list[Part] = []


class ThinkingConfig(msgspec.Struct, rename="camel"):
    thinking_budget: int | None = None


class GenerationConfig(msgspec.Struct, rename="camel"):
    max_output_tokens: int | None = None
    response_mime_type: str | None = None
    response_schema: Any = None
    response_json_schema: Any = None
    thinking_config: ThinkingConfig | None = None


class FunctionCallingConfig(msgspec.Struct, rename="camel"):
    mode: str = "AUTO"
    allowed_function_names: list[str] | None = None


class ToolConfig(msgspec.Struct, rename="camel"):
    function_calling_config: FunctionCallingConfig | None = None


class GenerateRequest(msgspec.Struct, rename="camel"):
    contents: list[Content] = []
    system_instruction: Content | None = None
    tools: list[dict[str, Any]] | None = None  # counted exactly as sent
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None


_decoder = msgspec.json.Decoder(GenerateRequest)


def gemini_turns(contents: list[Content], system_instruction: Content | None = None) -> list[Turn]:
    turns = []
    sources = ([system_instruction] if system_instruction else []) + contents
    for index, content in enumerate(sources):
        texts: list[str] = []
        media = 0
        for part in content.parts:
            if part.thought:
                continue
            if part.text is not None:
                texts.append(part.text)
            elif part.function_call is not None:
                call = part.function_call
                texts += (call.name, canonical_json(call.args or {}).decode())
            elif part.function_response is not None:
                result = part.function_response
                texts += (result.name, canonical_json(result.response or {}).decode())
            else:
                media += 1
        role = "system" if system_instruction and index == 0 else content.role
        turns.append(Turn(role, "\n".join(texts), media))
    return turns


def count_gemini_prompt_tokens(
    contents: list[dict[str, Any]],
    system_instruction: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> int:
    """usageMetadata.promptTokenCount the server reports for this request."""
    views = msgspec.convert(contents, list[Content])
    system = msgspec.convert(system_instruction, Content | None)
    return count_prompt(gemini_turns(views, system), tools).total


def thoughts_for(model: str, config: GenerationConfig | None) -> int:
    if not is_reasoning_model(model):
        return 0
    spent = reasoning_tokens_for(model)
    thinking = config.thinking_config if config is not None else None
    budget = thinking.thinking_budget if thinking is not None else None
    if budget is not None and budget >= 0:
        return min(spent, budget)
    return spent


def _chosen_tool(req: GenerateRequest) -> tuple[str, Any] | None:
    declared: dict[str, Any] = {}
    for tool in req.tools or ():
        for spec in tool.get("functionDeclarations") or tool.get("function_declarations") or ():
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                declared[spec["name"]] = spec.get("parametersJsonSchema", spec.get("parameters"))
    config = req.tool_config.function_calling_config if req.tool_config else None
    mode = (config.mode if config else "AUTO").upper()
    names = (config.allowed_function_names if config else None) or list(declared)
    allowed = [name for name in names if name in declared]
    if not allowed or mode == "NONE":
        return None
    name: str | None = None
    if mode == "ANY":
        name = allowed[0]
    elif req.contents and req.contents[-1].role == "user":
        own = "\n".join(p.text for p in req.contents[-1].parts if p.text and not p.thought)
        name = mentioned_tool(allowed, own)
    return (name, declared[name]) if name is not None else None


class FunctionCallOut(msgspec.Struct):
    name: str
    args: Any


class PartOut(msgspec.Struct, rename="camel", omit_defaults=True):
    text: str | None = None
    function_call: FunctionCallOut | None = None


class ContentOut(msgspec.Struct, omit_defaults=True):
    role: str
    parts: list[PartOut] = []


class Candidate(msgspec.Struct, rename="camel", omit_defaults=True):
    content: ContentOut
    finish_reason: str | None = None
    index: int = 0


class ModalityCount(msgspec.Struct, rename="camel"):
    modality: str
    token_count: int


class UsageMetadata(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    prompt_token_count: int
    candidates_token_count: int = 0
    total_token_count: int
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    prompt_tokens_details: list[ModalityCount] = []


class GenerateResponse(msgspec.Struct, rename="camel"):
    candidates: list[Candidate]
    usage_metadata: UsageMetadata
    model_version: str
    response_id: str


def _usage(count: PromptCount, cached: int, candidates: int, thoughts: int) -> UsageMetadata:
    return UsageMetadata(
        prompt_token_count=count.total,
        candidates_token_count=candidates,
        total_token_count=count.total + candidates + thoughts,
        cached_content_token_count=cached,
        thoughts_token_count=thoughts,
        prompt_tokens_details=[ModalityCount("TEXT", count.total)],
    )


_METHODS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})
"""The methods served under /v1beta/models/{model}:…; each is also its route name."""


async def generate(request: web.Request) -> web.StreamResponse:
    model, _, route = request.match_info["target"].rpartition(":")
    if route not in _METHODS or not model:
        return GEMINI.error(404, f"Method not found: {route or request.match_info['target']}")
    ex = await admit(request, GEMINI, route, _decoder, model=model)
    if not isinstance(ex, Exchange):
        return ex
    req = ex.body
    turns = gemini_turns(req.contents, req.system_instruction)
    count = count_prompt(turns, req.tools)
    if route == "countTokens":
        details = [ModalityCount("TEXT", count.total)]
        body = {"totalTokens": count.total, "promptTokensDetails": details}
        return await ex.reply(_encode(body))
    if not req.contents:
        return GEMINI.error(400, "* GenerateContentRequest.contents: contents is not specified")
    tools_key = canonical_json(req.tools) if req.tools else b""
    cached = ex.state.prompt_cache.implicit(f"gemini\x00{model}", turns, count, tools_key)
    config = req.generation_config
    limit = config.max_output_tokens if config is not None else None
    thoughts = thoughts_for(model, config)
    seed = last_text(turns)
    chosen = _chosen_tool(req)
    call = tool_call_for(chosen[0], chosen[1], seed) if chosen is not None else None
    answer = answer_for(
        seed,
        call=call,
        json_mode=config is not None and config.response_mime_type == "application/json",
        schema=(config.response_json_schema or config.response_schema) if config else None,
        limit=limit,
        reasoning=thoughts,
        output_tokens=ex.settings.output_tokens,
    )
    visible = call.output_tokens if call is not None else answer.visible_tokens
    finish = "MAX_TOKENS" if answer.truncated else "STOP"
    usage = _usage(count, cached, visible, answer.reasoning_tokens)
    response_id = new_id("")
    if route == "streamGenerateContent":
        return await _stream(ex, response_id, answer, call, finish, usage)
    if call is not None:
        parts = [
            PartOut(function_call=FunctionCallOut(call.name, msgspec.json.decode(call.arguments)))
        ]
    else:
        parts = [PartOut(text=answer.text)] if answer.pieces else []
    candidate = Candidate(ContentOut("model", parts), finish)
    body_out = GenerateResponse([candidate], usage, model, response_id)
    return await ex.reply(_encode(body_out), tokens=visible + answer.reasoning_tokens)


async def _stream(
    ex: Exchange[GenerateRequest],
    response_id: str,
    answer: Completion,
    call: ToolCall | None,
    finish: str,
    usage: UsageMetadata,
) -> web.StreamResponse:
    if ex.request.query.get("alt") == "sse":
        stream = await ex.stream(content_type="text/event-stream", event_end=b"\r\n\r\n")
    else:
        stream = await ex.stream(
            content_type="application/json; charset=UTF-8", framing="json_array"
        )
    thoughts = usage.thoughts_token_count
    if call is not None:
        chunks = [
            [PartOut(function_call=FunctionCallOut(call.name, msgspec.json.decode(call.arguments)))]
        ]
    else:
        chunks = [[PartOut(text=piece)] for piece in answer.pieces] or [[]]
    for index, parts in enumerate(chunks):
        last = index == len(chunks) - 1
        if last:
            running = usage
        else:
            so_far = index + 1
            running = msgspec.structs.replace(
                usage,
                candidates_token_count=so_far,
                total_token_count=usage.prompt_token_count + so_far + thoughts,
            )
        candidate = Candidate(ContentOut("model", parts), finish if last else None)
        chunk = GenerateResponse([candidate], running, ex.model, response_id)
        await stream.send(_encode(chunk), paced=True)
    return await stream.finish()


class ModelInfo(msgspec.Struct, rename="camel"):
    name: str
    display_name: str
    input_token_limit: int = 1_048_576
    output_token_limit: int = 65_536
    supported_generation_methods: tuple[str, ...] = ("generateContent", "countTokens")


MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash", "gemini-2.0-flash-lite")
"""Listed by GET /v1beta/models; any other name is served too."""

_MODEL_LIST = _encode({"models": [ModelInfo(f"models/{m}", m) for m in MODELS]})


async def list_models(request: web.Request) -> web.StreamResponse:
    ex = await admit(request, GEMINI, "gemini.models", None)
    if not isinstance(ex, Exchange):
        return ex
    return await ex.reply(_MODEL_LIST)


async def get_model(request: web.Request) -> web.StreamResponse:
    name = request.match_info["target"]
    ex = await admit(request, GEMINI, "gemini.models", None, model=name)
    if not isinstance(ex, Exchange):
        return ex
    return await ex.reply(_encode(ModelInfo(f"models/{name}", name)))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1beta/models/{target}", generate)
    app.router.add_get("/v1beta/models", list_models)
    app.router.add_get("/v1beta/models/{target}", get_model)
