"""The fake model provider: app factory, routing, the /_fake control API, and `FakeProvider`.

One aiohttp app speaks OpenAI (/v1/chat/completions, /v1/responses, /v1/embeddings,
/v1/models), Anthropic (/v1/messages, /v1/messages/count_tokens, /v1/models with an
anthropic-version header) and Gemini (/v1beta/models/{model}:generateContent,
:streamGenerateContent, :countTokens). Unknown paths get a 404 in the format of the family.

Control API (never faulted, never behind the API key):
- POST /_fake/faults      a fault or a list of faults (see faults.py); 201 with the queue
- GET /_fake/faults       the queued faults with their remaining counts
- DELETE /_fake/faults    clear the queue
- GET /_fake/stats        requests per route and model, faults served, last request per route
- POST /_fake/reset       clear faults, stats and the prompt cache
- GET /_fake/health       readiness
"""

from __future__ import annotations

from types import TracebackType

import msgspec
from aiohttp import web

from fakeprovider import anthropic_api, gemini_api, openai_api, openai_embeddings, openai_responses
from fakeprovider.content import DEFAULT_OUTPUT_TOKENS
from fakeprovider.dialects import ANTHROPIC, GEMINI, OPENAI
from fakeprovider.faults import decode_faults
from fakeprovider.state import SETTINGS, STATE, FakeState, Settings

MAX_BODY_BYTES = 64 * 1024 * 1024  # long contexts and inline images exceed aiohttp's 1 MiB
SHUTDOWN_TIMEOUT_S = 1.0  # a hung request must not hold a test's teardown for a minute

_encode = msgspec.json.Encoder().encode


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(value), content_type="application/json")


async def _add_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        faults = decode_faults(await request.read())
    except msgspec.DecodeError as exc:  # ValidationError included: both are the caller's fault
        return _json({"error": str(exc)}, 400)
    for fault in faults:
        state.add_fault(fault)
    return _json({"faults": state.faults.pending()}, 201)


async def _list_faults(request: web.Request) -> web.Response:
    return _json({"faults": request.app[STATE].faults.pending()})


async def _clear_faults(request: web.Request) -> web.Response:
    return _json({"cleared": request.app[STATE].clear_faults()})


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats)


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"reset": True})


async def _health(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def _models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models is shared: the anthropic-version header says whose list to give."""
    if "anthropic-version" in request.headers:
        return await anthropic_api.list_models(request)
    return await openai_api.list_models(request)


async def _unknown_v1(request: web.Request) -> web.StreamResponse:
    message = f"Invalid URL ({request.method} {request.path})"
    if "anthropic-version" in request.headers:
        return ANTHROPIC.error(404, f"Not found: {request.path}")
    return OPENAI.error(404, message)


async def _unknown_v1beta(request: web.Request) -> web.StreamResponse:
    return GEMINI.error(404, f"Method not found: {request.path}")


def create_app(
    *,
    latency_ms: float = 0,
    token_delay_ms: float = 0,
    api_key: str | None = None,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> web.Application:
    """A fresh fake provider app with its own state."""
    settings = Settings(
        latency_ms=latency_ms,
        token_delay_ms=token_delay_ms,
        api_key=api_key,
        output_tokens=output_tokens,
    )
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[STATE] = FakeState()
    router = app.router
    openai_api.add_routes(app)
    openai_responses.add_routes(app)
    openai_embeddings.add_routes(app)
    anthropic_api.add_routes(app)
    gemini_api.add_routes(app)
    router.add_get("/v1/models", _models)
    router.add_post("/_fake/faults", _add_faults)
    router.add_get("/_fake/faults", _list_faults)
    router.add_delete("/_fake/faults", _clear_faults)
    router.add_get("/_fake/stats", _stats)
    router.add_post("/_fake/reset", _reset)
    router.add_get("/_fake/health", _health)
    # Registered last: the dispatcher tries resources in order, so these only catch leftovers.
    router.add_route("*", "/v1/{tail:.*}", _unknown_v1)
    router.add_route("*", "/v1beta/{tail:.*}", _unknown_v1beta)
    return app


class FakeProvider:
    """The fake provider on a local port, for tests and `sidegate up`.

    `url` has no trailing /v1: OpenAI SDKs take f"{url}/v1", Anthropic SDKs take `url`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0,
        token_delay_ms: float = 0,
        api_key: str | None = None,
        output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_app(
            latency_ms=latency_ms,
            token_delay_ms=token_delay_ms,
            api_key=api_key,
            output_tokens=output_tokens,
        )
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> FakeState:
        return self.app[STATE]

    @property
    def settings(self) -> Settings:
        return self.app[SETTINGS]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeProvider:
        # handler_cancellation: a hung request ends as soon as its client goes away.
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
