"""The ingress routes the sidecar serves, each with its format, view and upstream path."""

from __future__ import annotations

from typing import Any

import msgspec

from sidecar.errors import IngressFormat
from sidecar.views import ChatView, EmbeddingsView


class Route(msgspec.Struct, frozen=True):
    operation: str  # gen_ai.operation.name
    ingress: IngressFormat
    upstream_path: str  # appended to an OpenAI-compatible provider's base_url
    decoder: Any  # msgspec.json.Decoder of the route's view
    model_kind: str  # the catalogue kind this route may reach


CHAT = Route("chat", "openai", "/chat/completions", msgspec.json.Decoder(ChatView), "chat")
EMBEDDINGS = Route(
    "embeddings", "openai", "/embeddings", msgspec.json.Decoder(EmbeddingsView), "embedding"
)
