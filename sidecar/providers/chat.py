"""The hub: OpenAI Chat Completions request structs, and its response and chunk shapes.

Wire structs, so unknown fields are skipped on decode (a newer SDK's extra field never fails a
translated request) and None fields are left out on encode (an absent field and a null one are
not the same to every OpenAI-compatible server).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sidecar.usage import TokenUsage


class _Wire(msgspec.Struct, omit_defaults=True):
    pass


class ImageURL(_Wire):
    url: str
    detail: str | None = None


class ContentPart(_Wire):
    type: str = "text"
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class ToolCall(msgspec.Struct):
    """Always encoded whole: OpenAI clients need `type` even where it is the default."""

    id: str
    function: FunctionCall
    type: str = "function"


class Message(_Wire):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text parts joined (images and other media left out)."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if p.text is not None)


class FunctionDef(_Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    function: FunctionDef
    type: str = "function"


class FunctionName(_Wire):
    name: str


class NamedToolChoice(_Wire):
    function: FunctionName
    type: str = "function"


class JsonSchemaFormat(_Wire):
    name: str = "response"
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: str = "text"  # text | json_object | json_schema
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatRequest(_Wire, kw_only=True):
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: str | NamedToolChoice | None = None  # "none" | "auto" | "required" | named
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    user: str | None = None
    seed: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def json_instruction(self) -> str | None:
        """For providers without a JSON mode: the instruction that asks for one, else None."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema" and fmt.json_schema is not None:
            schema = msgspec.json.encode(fmt.json_schema.schema or {}).decode()
            return f"Respond only with a JSON value that matches this JSON Schema: {schema}"
        return "Respond only with a valid JSON object."


chat_request_decoder = msgspec.json.Decoder(ChatRequest)
encode = msgspec.json.Encoder().encode


# --- responses ----------------------------------------------------------------------------------


class PromptDetails(msgspec.Struct):
    cached_tokens: int = 0


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails
    completion_tokens_details: CompletionDetails

    @classmethod
    def of(cls, usage: TokenUsage) -> Usage:
        return cls(
            prompt_tokens=usage.input,
            completion_tokens=usage.output,
            total_tokens=usage.input + usage.output,
            prompt_tokens_details=PromptDetails(usage.cached_input),
            completion_tokens_details=CompletionDetails(usage.reasoning),
        )


class ReplyMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None = None
    refusal: None = None
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: ReplyMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = []
    usage: Usage | None = None


class ChunkFunction(_Wire):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(_Wire):
    index: int  # required, so always encoded: clients group fragments by it
    id: str | None = None
    type: str | None = None
    function: ChunkFunction | None = None


class Delta(_Wire):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: Usage | msgspec.UnsetType | None = msgspec.UNSET
