"""Request views: msgspec structs holding only the fields policy needs, decoded once."""

from __future__ import annotations

from typing import Protocol

import msgspec


class RequestView(Protocol):
    model: str

    @property
    def is_stream(self) -> bool: ...

    @property
    def max_output_tokens(self) -> int | None: ...

    def prompt_texts(self) -> list[str]: ...


class _Part(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = ""
    content: str | list[_Part] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatView(msgspec.Struct):
    """OpenAI chat completions."""

    model: str
    messages: list[_Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    user: str | None = None  # OpenAI's end-user field, used when no user header is sent

    @property
    def is_stream(self) -> bool:
        return self.stream

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_texts(self) -> list[str]:
        texts: list[str] = []
        for message in self.messages:
            content = message.content
            if isinstance(content, str):
                texts.append(content)
            elif content:
                texts.extend(part.text for part in content if part.text)
        return texts


class EmbeddingsView(msgspec.Struct):
    """OpenAI embeddings; token-array inputs are counted directly."""

    model: str
    # str, list of str, a token array, or a list of token arrays (msgspec allows one array type)
    input: str | list[str | int | list[int]]

    @property
    def is_stream(self) -> bool:
        return False

    @property
    def max_output_tokens(self) -> int | None:
        return 0

    def prompt_texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        return [item for item in self.input if isinstance(item, str)]

    def token_array_count(self) -> int:
        if isinstance(self.input, str):
            return 0
        return sum(
            len(item) if isinstance(item, list) else (1 if isinstance(item, int) else 0)
            for item in self.input
        )


# --- Anthropic Messages -------------------------------------------------------------------------


class _Block(msgspec.Struct):
    type: str = "text"
    text: str | None = None
    content: str | list[_Part] | None = None  # a tool_result's content


class _AnthropicMessage(msgspec.Struct):
    role: str = ""
    content: str | list[_Block] = ""


def _block_texts(content: str | list[_Block] | None, into: list[str]) -> None:
    if isinstance(content, str):
        into.append(content)
        return
    for block in content or ():
        if block.text:
            into.append(block.text)
        elif isinstance(block.content, str):
            into.append(block.content)
        elif block.content:
            into.extend(part.text for part in block.content if part.text)


class _Metadata(msgspec.Struct):
    user_id: str | None = None


class CountTokensView(msgspec.Struct):
    """Anthropic `/v1/messages/count_tokens`: a prompt without generation."""

    model: str
    messages: list[_AnthropicMessage]
    system: str | list[_Block] | None = None
    output_limit_field = "max_tokens"

    @property
    def is_stream(self) -> bool:
        return False

    @property
    def max_output_tokens(self) -> int | None:
        return 0

    def prompt_texts(self) -> list[str]:
        texts: list[str] = []
        _block_texts(self.system, texts)
        for message in self.messages:
            _block_texts(message.content, texts)
        return texts


class MessagesView(CountTokensView, kw_only=True):
    """Anthropic Messages; `max_tokens` is required by the API, so it is here too."""

    max_tokens: int
    stream: bool = False
    metadata: _Metadata | None = None

    @property
    def is_stream(self) -> bool:
        return self.stream

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_tokens


# --- OpenAI Responses ---------------------------------------------------------------------------


class _InputItem(msgspec.Struct):
    type: str | None = None
    content: str | list[_Part] | None = None
    output: str | list[_Part] | None = None


class ResponsesView(msgspec.Struct):
    """OpenAI Responses: `input` is a string or a list of items."""

    model: str
    input: str | list[_InputItem] = ""
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    output_limit_field = "max_output_tokens"

    @property
    def is_stream(self) -> bool:
        return self.stream

    def prompt_texts(self) -> list[str]:
        texts = [self.instructions] if self.instructions else []
        if isinstance(self.input, str):
            return [*texts, self.input]
        for item in self.input:
            for value in (item.content, item.output):
                if isinstance(value, str):
                    texts.append(value)
                elif value:
                    texts.extend(part.text for part in value if part.text)
        return texts
