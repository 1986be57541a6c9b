"""The sidecar's error taxonomy, and its one translation into each caller's wire format.

A policy denial or a bad request is a `Reject` value returned by a stage; the HTTP response is
produced here and nowhere else, in OpenAI error JSON for OpenAI routes and Anthropic error JSON
for `/v1/messages`. Exceptions below are for the upstream call, which fails by raising.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from aiohttp import web

from collector.record import ErrorClass

IngressFormat = Literal["openai", "anthropic"]

# One row per class: HTTP status, OpenAI `type`, Anthropic `type`.
_TABLE: dict[str, tuple[int, str, str]] = {
    "invalid_request": (400, "invalid_request_error", "invalid_request_error"),
    "authentication": (401, "authentication_error", "authentication_error"),
    "permission": (403, "permission_error", "permission_error"),
    "not_found": (404, "invalid_request_error", "not_found_error"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota", "rate_limit_error"),
    "policy_violation": (400, "invalid_request_error", "invalid_request_error"),
    "policy_unavailable": (503, "policy_unavailable", "overloaded_error"),
    "client_closed": (499, "client_closed", "api_error"),
    "upstream_timeout": (504, "timeout", "timeout_error"),
    "upstream_unavailable": (502, "upstream_unavailable", "api_error"),
    "upstream_error": (502, "upstream_error", "api_error"),
    "internal": (500, "server_error", "api_error"),
}


class Reject(msgspec.Struct, frozen=True):
    """A request the sidecar will not forward: a value, so stages stay plain functions."""

    error_class: ErrorClass | Literal["request_too_large"]
    message: str
    code: str | None = None  # machine-readable reason, e.g. "model_not_allowed"
    param: str | None = None
    retry_after_s: float | None = None
    headers: dict[str, str] = {}

    @property
    def status(self) -> int:
        return _TABLE[self.error_class][0]

    @property
    def record_class(self) -> ErrorClass:
        """The usage-record class: an oversized body is an invalid request."""
        return "invalid_request" if self.error_class == "request_too_large" else self.error_class


class _OpenAIError(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _OpenAIBody(msgspec.Struct):
    error: _OpenAIError


class _AnthropicError(msgspec.Struct):
    type: str
    message: str


class _AnthropicBody(msgspec.Struct):
    error: _AnthropicError
    type: str = "error"


_encode = msgspec.json.Encoder().encode


def error_body(reject: Reject, fmt: IngressFormat) -> bytes:
    _, openai_type, anthropic_type = _TABLE[reject.error_class]
    if fmt == "anthropic":
        return _encode(_AnthropicBody(_AnthropicError(anthropic_type, reject.message)))
    return _encode(
        _OpenAIBody(_OpenAIError(reject.message, openai_type, reject.param, reject.code))
    )


def error_response(
    reject: Reject, fmt: IngressFormat, extra_headers: dict[str, str] | None = None
) -> web.Response:
    headers = dict(reject.headers)
    if reject.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(reject.retry_after_s)))
    if extra_headers:
        headers.update(extra_headers)
    return web.Response(
        body=error_body(reject, fmt),
        status=reject.status,
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(reject: Reject, fmt: IngressFormat) -> bytes:
    """An error reported inside an already-started stream, as each provider does it."""
    body = error_body(reject, fmt)
    if fmt == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


# --- upstream failures: raised by the forwarder, turned into a Reject at one boundary -------


class UpstreamFailure(Exception):
    """The upstream call failed without an HTTP response we can pass through."""

    error_class: ErrorClass = "upstream_error"

    def __init__(self, message: str, *, deployment: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.deployment = deployment

    def to_reject(self) -> Reject:
        return Reject(self.error_class, self.message, code=self.error_class)


class UpstreamTimeout(UpstreamFailure):
    error_class = "upstream_timeout"


class UpstreamUnavailable(UpstreamFailure):
    error_class = "upstream_unavailable"


class UpstreamStreamBroken(UpstreamFailure):
    """The upstream dropped the connection after the stream had started."""

    error_class = "upstream_error"


def class_for_status(status: int) -> ErrorClass:
    """Normalise a provider's HTTP status into the taxonomy (by status, never by message text)."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "authentication"
    if status == 404:
        return "not_found"
    if status in (408, 504):
        return "upstream_timeout"
    if status in (502, 503):
        return "upstream_unavailable"
    if 400 <= status < 500:
        return "invalid_request"
    return "upstream_error"
