"""AWS Bedrock through the Converse API as an egress for hub requests, SigV4-signed by botocore.

`base_url` is the runtime endpoint (`https://bedrock-runtime.<region>.amazonaws.com`); a
deployment's `model` is the model or inference-profile id. A provider with a `credential`
sends it as a Bedrock API key (bearer); without one, requests are signed with SigV4 using
botocore's credential chain (environment, shared files, web identity as on EKS, instance
roles), resolved once off the event loop and refreshed by botocore when it expires.

Converse streams are AWS event-stream frames, not SSE; botocore's parser cuts them.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import msgspec
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]  # ships no type information
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]
from botocore.session import get_session  # type: ignore[import-untyped]

from sidecar.errors import UpstreamUnavailable
from sidecar.policy import CompiledDeployment
from sidecar.providers.anthropic import Block as AnthropicBlock
from sidecar.providers.anthropic import to_messages
from sidecar.providers.base import (
    Event,
    FinishReason,
    Reply,
    TranslationError,
    check_base64,
    new_id,
    raise_stream_error,
)
from sidecar.providers.chat import ChatRequest, FunctionCall, NamedToolChoice, ToolCall, encode
from sidecar.usage import BedrockUsage, TokenUsage

_REGION = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


class _Wire(msgspec.Struct, omit_defaults=True, rename="camel"):
    pass


class ImageBytes(_Wire):
    bytes: str  # base64 in Converse's JSON form


class Image(_Wire):
    format: str
    source: ImageBytes


class ToolUse(_Wire):
    tool_use_id: str = ""
    name: str = ""
    input: Any = None


class ToolResultContent(_Wire):
    text: str


class ToolResult(_Wire):
    tool_use_id: str
    content: list[ToolResultContent]


class Block(_Wire):
    text: str | None = None
    image: Image | None = None
    tool_use: ToolUse | None = None
    tool_result: ToolResult | None = None


class Turn(_Wire):
    role: str
    content: list[Block]


class SystemText(_Wire):
    text: str


class InferenceConfig(_Wire):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None


class ToolSpec(_Wire):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None


class ToolEntry(_Wire):
    tool_spec: ToolSpec


class ToolConfig(_Wire):
    tools: list[ToolEntry]
    tool_choice: dict[str, Any] | None = None


class ConverseRequest(_Wire):
    messages: list[Turn]
    system: list[SystemText] | None = None
    inference_config: InferenceConfig | None = None
    tool_config: ToolConfig | None = None


class _OutMessage(msgspec.Struct):
    content: list[Block] = []


class _Output(msgspec.Struct):
    message: _OutMessage | None = None


class _ConverseResponse(msgspec.Struct, rename="camel"):
    output: _Output | None = None
    stop_reason: str | None = None
    usage: BedrockUsage | None = None


class _ToolStart(msgspec.Struct, rename="camel"):
    tool_use: ToolUse | None = None


class _ToolDelta(msgspec.Struct):
    input: str = ""


class _Delta(msgspec.Struct, rename="camel"):
    text: str | None = None
    tool_use: _ToolDelta | None = None


class _StreamPayload(msgspec.Struct, rename="camel"):
    content_block_index: int = 0
    start: _ToolStart | None = None
    delta: _Delta | None = None
    stop_reason: str | None = None
    usage: BedrockUsage | None = None
    message: str | None = None  # on exception frames


class _ErrorView(msgspec.Struct):
    message: str = ""
    Message: str = ""  # some Bedrock errors capitalise it


_response_decoder = msgspec.json.Decoder(_ConverseResponse)
_payload_decoder = msgspec.json.Decoder(_StreamPayload)
_error_decoder = msgspec.json.Decoder(_ErrorView)


def error_message(body: bytes) -> str:
    try:
        view = _error_decoder.decode(body)
    except msgspec.DecodeError:
        return body[:300].decode(errors="replace")
    return view.message or view.Message or body[:300].decode(errors="replace")


def _block(b: AnthropicBlock) -> Block:
    """An Anthropic-shaped block (from the shared turn builder) as a Converse block."""
    if b.type == "text":
        return Block(text=b.text or " ")  # Converse rejects empty text blocks
    if b.type == "tool_use":
        use = ToolUse(b.id or "", b.name or "", b.input if b.input is not None else {})
        return Block(tool_use=use)
    if b.type == "tool_result":
        text = b.content if isinstance(b.content, str) else ""
        result = ToolResult(b.tool_use_id or "", [ToolResultContent(text or " ")])
        return Block(tool_result=result)
    if b.type == "image" and b.source is not None and b.source.type == "base64":
        fmt = _IMAGE_FORMATS.get(b.source.media_type or "")
        if fmt is None:
            raise TranslationError(f"Bedrock does not take images of type {b.source.media_type}.")
        check_base64(b.source.data or "")
        return Block(image=Image(fmt, ImageBytes(b.source.data or "")))
    raise TranslationError("Bedrock takes images as base64 data URLs only, not links.")


def to_converse(request: ChatRequest) -> ConverseRequest:
    # Converse's turn rules (alternating roles, results in user turns) are Anthropic's.
    system, turns = to_messages(request)
    messages = [
        Turn(t.role, [_block(b) for b in t.content] if isinstance(t.content, list) else [])
        for t in turns
    ]
    config = InferenceConfig(
        max_tokens=request.output_limit,
        temperature=request.temperature,
        top_p=request.top_p,
        stop_sequences=request.stop_list or None,
    )
    tool_config = None
    if request.tools:
        tools = [
            ToolEntry(
                ToolSpec(
                    t.function.name,
                    {"json": t.function.parameters or {"type": "object", "properties": {}}},
                    t.function.description,
                )
            )
            for t in request.tools
        ]
        tool_config = ToolConfig(tools, _tool_choice(request.tool_choice))
    return ConverseRequest(
        messages=messages,
        system=[SystemText(s) for s in system if s] or None,
        inference_config=config if config != InferenceConfig() else None,
        tool_config=tool_config,
    )


def _tool_choice(choice: str | NamedToolChoice | None) -> dict[str, Any] | None:
    if isinstance(choice, NamedToolChoice):
        return {"tool": {"name": choice.function.name}}
    # Converse has no "none": the tools stay declared (earlier turns may use them).
    return {"required": {"any": {}}, "auto": {"auto": {}}}.get(choice or "")


def region_of(d: CompiledDeployment) -> str:
    if d.provider.region:
        return d.provider.region
    found = _REGION.search(d.base_url)
    return found.group(1) if found else "us-east-1"


class SigV4Signer:
    """Signs Converse calls with the sidecar's AWS credentials (botocore's default chain)."""

    def __init__(self) -> None:
        self._credentials: Any = None
        self._lock = asyncio.Lock()

    async def _frozen(self) -> Any:
        credentials = self._credentials
        if credentials is None:
            async with self._lock:
                if self._credentials is None:
                    # The chain may read files or ask the instance metadata service.
                    self._credentials = await asyncio.to_thread(get_session().get_credentials)
                credentials = self._credentials
            if credentials is None:
                raise UpstreamUnavailable(
                    "No AWS credentials found in this sidecar for signing Bedrock requests."
                )
        refresh = getattr(credentials, "refresh_needed", None)
        if refresh is not None and refresh():
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        return credentials.get_frozen_credentials()

    async def sign(self, d: CompiledDeployment, url: str, body: bytes) -> dict[str, str]:
        """The SigV4 headers (authorization, x-amz-date, token) for this exact request."""
        credentials = await self._frozen()
        request = AWSRequest(
            method="POST", url=url, data=body, headers={"content-type": "application/json"}
        )
        SigV4Auth(credentials, "bedrock", region_of(d)).add_auth(request)
        return {k.lower(): v for k, v in request.headers.items()}


class BedrockEgress:
    kind = "bedrock"
    native: frozenset[str] = frozenset()
    stream_content_types: tuple[str, ...] = ("application/vnd.amazon.eventstream",)

    def __init__(self) -> None:
        self.signer = SigV4Signer()

    def url(self, d: CompiledDeployment, wire: str, *, stream: bool) -> str:
        action = "converse-stream" if stream else "converse"
        return f"{d.base_url}/model/{quote(d.model, safe='')}/{action}"

    def encode(self, request: ChatRequest, d: CompiledDeployment, *, stream: bool) -> bytes:
        return encode(to_converse(request))

    def reply(self, body: bytes, d: CompiledDeployment) -> Reply:
        view = _response_decoder.decode(body)
        blocks = view.output.message.content if view.output and view.output.message else []
        texts = [b.text for b in blocks if b.text]
        calls = [_call(b.tool_use) for b in blocks if b.tool_use is not None]
        return Reply(
            id=new_id("msg_bdrk_"),
            model=d.model,
            content="".join(texts) if texts or not calls else None,
            tool_calls=calls,
            finish_reason=_FINISH.get(view.stop_reason or "end_turn", "stop"),
            usage=view.usage.normalise() if view.usage else TokenUsage(),
        )

    def decoder(self, d: CompiledDeployment) -> ConverseStreamDecoder:
        return ConverseStreamDecoder(d.model)

    def error_message(self, body: bytes) -> str:
        return error_message(body)


def _call(use: ToolUse) -> ToolCall:
    arguments = encode(use.input if use.input is not None else {}).decode()
    return ToolCall(use.tool_use_id or new_id("tooluse_"), FunctionCall(use.name, arguments))


class ConverseStreamDecoder:
    """converse-stream event-stream frames → neutral events."""

    def __init__(self, model: str) -> None:
        self.id = new_id("msg_bdrk_")
        self.model = model
        self.usage: TokenUsage | None = None
        self._buffer = EventStreamBuffer()
        self._tools: dict[int, int] = {}  # content block index → tool call index

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer.add_data(chunk)
        events: list[Event] = []
        for frame in self._buffer:
            headers = frame.headers
            payload = _payload_decoder.decode(frame.payload or b"{}")
            if headers.get(":message-type") == "exception":
                kind = headers.get(":exception-type", "exception")
                raise_stream_error(f"{kind}: {payload.message or ''}")
            kind = headers.get(":event-type")
            if kind == "contentBlockDelta" and payload.delta is not None:
                if payload.delta.text:
                    events.append(Event(text=payload.delta.text))
                elif payload.delta.tool_use is not None and payload.delta.tool_use.input:
                    tool = self._tools.get(payload.content_block_index, 0)
                    events.append(Event(tool_index=tool, arguments=payload.delta.tool_use.input))
            elif kind == "contentBlockStart" and payload.start and payload.start.tool_use:
                use = payload.start.tool_use
                tool = self._tools[payload.content_block_index] = len(self._tools)
                events.append(Event(tool_index=tool, tool_id=use.tool_use_id, tool_name=use.name))
            elif kind == "messageStop":
                events.append(Event(finish=_FINISH.get(payload.stop_reason or "", "stop")))
            elif kind == "metadata" and payload.usage is not None:
                self.usage = payload.usage.normalise()
        return events


BEDROCK = BedrockEgress()
