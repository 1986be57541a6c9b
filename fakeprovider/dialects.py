"""How each API family spells errors, credentials and request ids: one place per wire format.

Errors use the family's own JSON: OpenAI `{"error": {"message", "type", "param", "code"}}`,
Anthropic `{"type": "error", "error": {"type", "message"}, "request_id"}`, Gemini
`{"error": {"code", "message", "status", "details"}}`. A 429 carries `retry-after` (whole
seconds, rounded up) and `retry-after-ms`, plus x-ratelimit-* on OpenAI, an
anthropic-ratelimit-* header on Anthropic and a RetryInfo detail on Gemini. Credentials:
`Authorization: Bearer` (OpenAI), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from fakeprovider.state import new_id

_encode = msgspec.json.Encoder().encode


class Dialect(abc.ABC):
    """How one API family spells errors, credentials and request ids."""

    family: ClassVar[str]
    request_id_header: ClassVar[str | None] = None
    malformed_json: ClassVar[str] = "The request body is not valid JSON."

    @abc.abstractmethod
    def error(
        self, status: int, message: str | None = None, *, retry_after_s: float | None = None
    ) -> web.Response:
        """An error response in this family's format; None picks the usual message."""

    @abc.abstractmethod
    def credential(self, request: web.Request) -> str | None:
        """The API key the request presents, wherever this family carries it."""

    def precheck(self, request: web.Request) -> web.Response | None:
        """A family's own request requirement (e.g. a version header); None when met."""
        return None


def retry_after_headers(retry_after_s: float) -> dict[str, str]:
    whole = int(retry_after_s) + (0 if retry_after_s == int(retry_after_s) else 1)
    return {"retry-after": str(whole), "retry-after-ms": str(round(retry_after_s * 1000))}


# ---------------------------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM). Please try again later.",
    ),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    529: ("server_error", None, "The server is overloaded."),
}


class _OpenAIErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _OpenAIError(msgspec.Struct):
    error: _OpenAIErrorBody


class OpenAIDialect(Dialect):
    family = "openai"
    request_id_header = "x-request-id"
    malformed_json = (
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
    )

    def error(
        self, status: int, message: str | None = None, *, retry_after_s: float | None = None
    ) -> web.Response:
        return self.detailed_error(status, message, retry_after_s=retry_after_s)

    def detailed_error(
        self,
        status: int,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> web.Response:
        kind, default_code, default_message = _OPENAI_ERRORS.get(status, _OPENAI_ERRORS[500])
        body = _OpenAIError(
            _OpenAIErrorBody(message or default_message, kind, param, code or default_code)
        )
        headers = {"x-request-id": new_id("req_")}
        if retry_after_s is not None:
            headers |= retry_after_headers(retry_after_s)
            reset = f"{retry_after_s:g}s"
            headers |= {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": reset,
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": reset,
            }
        return web.Response(
            status=status, body=_encode(body), content_type="application/json", headers=headers
        )

    def credential(self, request: web.Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else None


OPENAI = OpenAIDialect()


# ---------------------------------------------------------------------------------------------
# Anthropic
# ---------------------------------------------------------------------------------------------

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    404: ("not_found_error", "Not found."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    503: ("overloaded_error", "Overloaded"),
    529: ("overloaded_error", "Overloaded"),
}


class _AnthropicErrorBody(msgspec.Struct):
    type: str
    message: str


class _AnthropicError(msgspec.Struct):
    error: _AnthropicErrorBody
    request_id: str
    type: str = "error"


class AnthropicDialect(Dialect):
    family = "anthropic"
    request_id_header = "request-id"

    def error(
        self, status: int, message: str | None = None, *, retry_after_s: float | None = None
    ) -> web.Response:
        kind, default_message = _ANTHROPIC_ERRORS.get(status, _ANTHROPIC_ERRORS[500])
        request_id = new_id("req_")
        headers = {"request-id": request_id}
        if retry_after_s is not None:
            headers |= retry_after_headers(retry_after_s)
            headers["anthropic-ratelimit-requests-remaining"] = "0"
        body = _AnthropicError(_AnthropicErrorBody(kind, message or default_message), request_id)
        return web.Response(
            status=status, body=_encode(body), content_type="application/json", headers=headers
        )

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key")

    def precheck(self, request: web.Request) -> web.Response | None:
        if "anthropic-version" in request.headers:
            return None
        return self.error(400, "anthropic-version: header is required")


ANTHROPIC = AnthropicDialect()


# ---------------------------------------------------------------------------------------------
# Gemini
# ---------------------------------------------------------------------------------------------

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    529: "UNAVAILABLE",
}
_GEMINI_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "API key not valid. Please pass a valid API key.",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in the troubleshooting guide.",
    503: "The model is overloaded. Please try again later.",
    529: "The model is overloaded. Please try again later.",
}


class _GeminiErrorBody(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    status: str
    details: list[dict[str, Any]] = []


class _GeminiError(msgspec.Struct):
    error: _GeminiErrorBody


class GeminiDialect(Dialect):
    family = "gemini"

    def error(
        self, status: int, message: str | None = None, *, retry_after_s: float | None = None
    ) -> web.Response:
        details: list[dict[str, Any]] = []
        headers: dict[str, str] = {}
        if retry_after_s is not None:
            headers = retry_after_headers(retry_after_s)
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{retry_after_s:g}s",
                }
            )
        body = _GeminiErrorBody(
            status,
            message or _GEMINI_MESSAGES.get(status, _GEMINI_MESSAGES[500]),
            _GEMINI_STATUS.get(status, "INTERNAL"),
            details,
        )
        return web.Response(
            status=status, body=_encode(_GeminiError(body)), content_type="application/json",
            headers=headers,
        )  # fmt: skip

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")


GEMINI = GeminiDialect()
