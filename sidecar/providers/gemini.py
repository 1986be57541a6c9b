"""Google Gemini (generateContent / streamGenerateContent) as an egress for hub requests.

`base_url` is the API root with its version (`https://generativelanguage.googleapis.com/v1beta`);
a root without one gets `/v1beta`. Streams are requested with `alt=sse`. Mapping notes: tool
results become functionResponse parts named after the call they answer (Gemini matches by
name, not id), so the call ids the hub needs are made up here; JSON mode and schemas map to
responseMimeType / responseJsonSchema; thinking parts are not carried across.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from sidecar.policy import CompiledDeployment
from sidecar.providers.base import (
    Event,
    FinishReason,
    Reply,
    SSEBuffer,
    TranslationError,
    error_message,
    new_id,
    parse_data_url,
    raise_stream_error,
)
from sidecar.providers.chat import (
    ChatRequest,
    FunctionCall,
    Message,
    NamedToolChoice,
    ToolCall,
    encode,
)
from sidecar.usage import GeminiUsage, TokenUsage

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_any = msgspec.json.Decoder()


class _Wire(msgspec.Struct, omit_defaults=True, rename="camel"):
    pass


class Blob(_Wire):
    mime_type: str
    data: str


class FileData(_Wire):
    file_uri: str
    mime_type: str | None = None


class FunctionCallPart(_Wire):
    name: str = ""
    args: dict[str, Any] | None = None


class FunctionResponsePart(_Wire):
    name: str
    response: dict[str, Any]


class Part(_Wire):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCallPart | None = None
    function_response: FunctionResponsePart | None = None
    thought: bool | None = None


class Content(_Wire):
    parts: list[Part]
    role: str | None = None


class FunctionDeclaration(_Wire):
    name: str
    description: str | None = None
    parameters_json_schema: dict[str, Any] | None = None


class GeminiTool(_Wire):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(_Wire):
    mode: str
    allowed_function_names: list[str] | None = None


class ToolConfig(_Wire):
    function_calling_config: FunctionCallingConfig


class GenerationConfig(_Wire):
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None


class GenerateRequest(_Wire):
    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[GeminiTool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None


class _Candidate(msgspec.Struct, rename="camel"):
    content: Content | None = None
    finish_reason: str | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    usage_metadata: GeminiUsage | None = None
    model_version: str = ""
    response_id: str = ""
    error: Any = None


_response_decoder = msgspec.json.Decoder(_Response)


@lru_cache(maxsize=256)
def _root(base_url: str) -> str:
    return base_url if base_url.rsplit("/", 1)[-1] in ("v1", "v1beta") else base_url + "/v1beta"


def _parts(m: Message) -> list[Part]:
    content = m.content
    if content is None:
        return []
    if isinstance(content, str):
        return [Part(text=content)]
    parts: list[Part] = []
    for p in content:
        if p.type == "text":
            parts.append(Part(text=p.text or ""))
        elif p.type == "image_url" and p.image_url is not None:
            data = parse_data_url(p.image_url.url)
            if data is None:
                parts.append(
                    Part(file_data=FileData(p.image_url.url, _guess_mime(p.image_url.url)))
                )
            else:
                parts.append(Part(inline_data=Blob(data.media_type, data.data)))
        else:
            raise TranslationError(f"Content parts of type `{p.type}` cannot be sent to Gemini.")
    return parts


def _guess_mime(url: str) -> str:
    ext = url.rsplit(".", 1)[-1].lower().split("?", 1)[0]
    return {"png": "image/png", "gif": "image/gif", "webp": "image/webp"}.get(ext, "image/jpeg")


def _response_object(text: str) -> dict[str, Any]:
    """Gemini wants an object as a function's response: a JSON object as is, else wrapped."""
    try:
        value = _any.decode(text) if text else None
    except msgspec.DecodeError:
        value = None
    return value if isinstance(value, dict) else {"result": text}


def to_gemini(request: ChatRequest) -> GenerateRequest:
    system: list[Part] = []
    contents: list[Content] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[Part]) -> None:
        if not parts:
            return
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)
        else:
            contents.append(Content(parts=parts, role=role))

    for m in request.messages:
        if m.role in ("system", "developer"):
            system.extend(_parts(m))
        elif m.role == "assistant":
            parts = [Part(text=m.text())] if m.text() else []
            for call in m.tool_calls or ():
                call_names[call.id] = call.function.name
                args = _response_object(call.function.arguments)
                parts.append(Part(function_call=FunctionCallPart(call.function.name, args)))
            add("model", parts)
        elif m.role == "tool":
            name = call_names.get(m.tool_call_id or "", m.name or "")
            response = FunctionResponsePart(name, _response_object(m.text()))
            add("user", [Part(function_response=response)])
        else:
            add("user", _parts(m))
    fmt = request.response_format
    json_mode = fmt is not None and fmt.type != "text"
    schema = fmt.json_schema.schema if fmt and fmt.json_schema else None
    config = GenerationConfig(
        max_output_tokens=request.output_limit,
        temperature=request.temperature,
        top_p=request.top_p,
        stop_sequences=request.stop_list or None,
        seed=request.seed,
        response_mime_type="application/json" if json_mode else None,
        response_json_schema=schema if json_mode else None,
    )
    tools = None
    tool_config = None
    if request.tools:
        declarations = [
            FunctionDeclaration(t.function.name, t.function.description, t.function.parameters)
            for t in request.tools
        ]
        tools = [GeminiTool(declarations)]
        tool_config = _tool_config(request.tool_choice)
    return GenerateRequest(
        contents=contents,
        system_instruction=Content(parts=system) if system else None,
        tools=tools,
        tool_config=tool_config,
        generation_config=config if config != GenerationConfig() else None,
    )


def _tool_config(choice: str | NamedToolChoice | None) -> ToolConfig | None:
    if isinstance(choice, NamedToolChoice):
        return ToolConfig(FunctionCallingConfig("ANY", [choice.function.name]))
    mode = {"required": "ANY", "none": "NONE", "auto": "AUTO"}.get(choice or "")
    return ToolConfig(FunctionCallingConfig(mode)) if mode else None


def _finish(reason: str | None, calls: bool) -> FinishReason:
    finish = _FINISH.get(reason or "STOP", "stop")
    return "tool_calls" if calls and finish == "stop" else finish


def _call(part: FunctionCallPart) -> ToolCall:
    return ToolCall(new_id("call_"), FunctionCall(part.name, encode(part.args or {}).decode()))


class GeminiEgress:
    kind = "gemini"
    native: frozenset[str] = frozenset()
    stream_content_types: tuple[str, ...] = ("text/event-stream",)

    def url(self, d: CompiledDeployment, wire: str, *, stream: bool) -> str:
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        return f"{_root(d.base_url)}/models/{d.model}{method}"

    def encode(self, request: ChatRequest, d: CompiledDeployment, *, stream: bool) -> bytes:
        return encode(to_gemini(request))

    def reply(self, body: bytes, d: CompiledDeployment) -> Reply:
        view = _response_decoder.decode(body)
        texts: list[str] = []
        calls: list[ToolCall] = []
        reason = None
        for candidate in view.candidates[:1]:
            reason = candidate.finish_reason
            for part in candidate.content.parts if candidate.content else ():
                if part.thought:
                    continue
                if part.text is not None:
                    texts.append(part.text)
                elif part.function_call is not None:
                    calls.append(_call(part.function_call))
        if not view.candidates:
            reason = "SAFETY"  # the prompt itself was blocked (promptFeedback.blockReason)
        return Reply(
            id=view.response_id or new_id("gen-"),
            model=view.model_version or d.model,
            content="".join(texts) if texts or not calls else None,
            tool_calls=calls,
            finish_reason=_finish(reason, bool(calls)),
            usage=view.usage_metadata.normalise() if view.usage_metadata else TokenUsage(),
        )

    def decoder(self, d: CompiledDeployment) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(d.model)

    def error_message(self, body: bytes) -> str:
        return error_message(body)


class GeminiStreamDecoder:
    """streamGenerateContent chunks → neutral events; each chunk's usage is the running total."""

    def __init__(self, model: str) -> None:
        self.id = ""
        self.model = model
        self.usage: TokenUsage | None = None
        self._sse = SSEBuffer()
        self._tools = 0

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for _, data in self._sse.feed(chunk):
            view = _response_decoder.decode(data)
            if view.error is not None:
                raise_stream_error(error_message(data))
            if not self.id:
                self.id = view.response_id
                self.model = view.model_version or self.model
            if view.usage_metadata is not None:
                self.usage = view.usage_metadata.normalise()
            for candidate in view.candidates[:1]:
                for part in candidate.content.parts if candidate.content else ():
                    if part.thought:
                        continue
                    if part.text:
                        events.append(Event(text=part.text))
                    elif part.function_call is not None:
                        call = _call(part.function_call)
                        events.append(
                            Event(
                                tool_index=self._tools,
                                tool_id=call.id,
                                tool_name=call.function.name,
                                arguments=call.function.arguments,
                            )
                        )
                        self._tools += 1
                if candidate.finish_reason:
                    events.append(Event(finish=_finish(candidate.finish_reason, self._tools > 0)))
        return events


GEMINI = GeminiEgress()
