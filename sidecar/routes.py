"""The ingress routes the sidecar serves, each with its format, view and upstream path."""

from __future__ import annotations

from typing import Any

import msgspec

from sidecar.errors import IngressFormat
from sidecar.views import ChatView, CountTokensView, EmbeddingsView, MessagesView, ResponsesView


class Route(msgspec.Struct, frozen=True):
    operation: str  # gen_ai.operation.name
    ingress: IngressFormat
    upstream_path: str  # appended to an OpenAI-compatible provider's base_url
    decoder: Any  # msgspec.json.Decoder of the route's view
    model_kind: str  # the catalogue kind this route may reach
    # The wire format: a provider that speaks it natively gets the caller's bytes unchanged
    # (see sidecar/providers/bridge.py).
    wire: str = "chat"


CHAT = Route("chat", "openai", "/chat/completions", msgspec.json.Decoder(ChatView), "chat")
EMBEDDINGS = Route(
    "embeddings", "openai", "/embeddings", msgspec.json.Decoder(EmbeddingsView), "embedding",
    wire="embeddings",
)  # fmt: skip
RESPONSES = Route(
    "responses", "openai", "/responses", msgspec.json.Decoder(ResponsesView), "chat",
    wire="responses",
)  # fmt: skip
MESSAGES = Route(
    "messages", "anthropic", "/messages", msgspec.json.Decoder(MessagesView), "chat",
    wire="messages",
)  # fmt: skip
COUNT_TOKENS = Route(
    "count_tokens", "anthropic", "/messages/count_tokens", msgspec.json.Decoder(CountTokensView),
    "chat", wire="count_tokens",
)  # fmt: skip

MODEL_ROUTES = {
    "/v1/chat/completions": CHAT,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/v1/messages/count_tokens": COUNT_TOKENS,
}
"""Every model-call route by path, for the app to register."""


def models_page(names: list[str], *, anthropic: bool) -> dict[str, object]:
    """GET /v1/models in the caller's format: Anthropic SDKs send an anthropic-version header."""
    if anthropic:
        data: list[dict[str, object]] = [
            {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
            for n in names
        ]
        first, last = (names[0], names[-1]) if names else (None, None)
        return {"data": data, "has_more": False, "first_id": first, "last_id": last}
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "sidegate"} for n in names]
    return {"object": "list", "data": data}
