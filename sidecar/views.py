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
