"""The sidecar's aiohttp application: routes, start-up order and graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from sidecar import tokens
from sidecar.bundles import PolicyState, PolicyWatcher, Verifier
from sidecar.context import RequestContext
from sidecar.emitter import Spool, UsageEmitter
from sidecar.errors import Reject, error_response
from sidecar.natslink import NatsLink
from sidecar.pipeline import Pipeline
from sidecar.proxy import NO_BUNDLE, Proxy, new_record_id
from sidecar.routes import CHAT, EMBEDDINGS
from sidecar.settings import Settings
from sidecar.stages.access import ModelAccess, RequireKey
from sidecar.stages.identify import Identify
from sidecar.stages.parse import Parse
from sidecar.stages.route import ChooseDeployment
from sidecar.upstream import UpstreamClient

log = structlog.get_logger("sidegate.sidecar")

STATE = web.AppKey("state", PolicyState)
EMITTER = web.AppKey("emitter", UsageEmitter)
PIPELINE = web.AppKey("pipeline", Pipeline)
SETTINGS = web.AppKey("settings", Settings)


def build_pipeline(settings: Settings) -> Pipeline:
    """The request stages, in order (ARCHITECTURE.md, "The request path")."""
    return Pipeline(
        [Parse(), Identify(settings.workload), RequireKey(), ModelAccess(), ChooseDeployment()]
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.active is None:
        reason = state.rejection.reason if state.rejection else "no verified bundle yet"
        return web.json_response({"ready": False, "reason": reason}, status=503)
    return web.json_response({"ready": True, "revision": state.active.revision})


def models_handler(
    pipeline: Pipeline,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    identify = next(s for s in pipeline.stages if isinstance(s, Identify))

    async def list_models(request: web.Request) -> web.Response:
        """The models the caller's policy allows, in OpenAI's list format."""
        bundle = request.app[STATE].active
        if bundle is None:
            return error_response(NO_BUNDLE, "openai")
        ctx = RequestContext(request, CHAT, new_record_id())
        ctx.bundle = bundle
        reject = identify(ctx)
        if reject is not None:
            return error_response(reject, "openai")
        assert ctx.policy is not None
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "sidegate"}
            for name in bundle.allowed_models(ctx.policy)
        ]
        return web.json_response({"object": "list", "data": data})

    return list_models


async def not_found(request: web.Request) -> web.Response:
    return error_response(
        Reject("not_found", f"Unknown route: {request.method} {request.path}", code="unknown_url"),
        "anthropic" if request.path.startswith("/v1/messages") else "openai",
    )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    state = PolicyState(
        Verifier(settings.public_keys, allow_unsigned=settings.allow_unsigned),
        settings.bundle_path,
    )
    link = NatsLink(settings.nats_url)
    emitter = UsageEmitter(link, Spool(settings.spool_path, max_bytes=settings.spool_max_bytes))
    watcher = PolicyWatcher(state, link, resync_interval_s=settings.resync_interval_s)
    upstream = UpstreamClient()
    pipeline = build_pipeline(settings)
    proxy = Proxy(
        state=state, pipeline=pipeline, upstream=upstream,
        observers=[lambda ctx, record: emitter.emit(record)],
        sidecar_id=settings.sidecar_id, max_body_bytes=settings.max_body_bytes,
    )  # fmt: skip
    app[STATE], app[EMITTER], app[PIPELINE], app[SETTINGS] = state, emitter, pipeline, settings

    app.router.add_post("/v1/chat/completions", proxy.handler(CHAT))
    app.router.add_post("/v1/embeddings", proxy.handler(EMBEDDINGS))
    app.router.add_get("/v1/models", models_handler(pipeline))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", not_found)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Fail-static: the persisted bundle is enforced before NATS is even tried.
        state.load_persisted()
        await asyncio.to_thread(tokens.warm_up)
        await upstream.start()
        link.start()
        watcher.start()
        emitter.start()
        yield
        await watcher.stop()
        drained = await emitter.drain(settings.drain_timeout_s)
        log.info("sidecar_stopped", usage_drained=drained, published=emitter.published)
        await emitter.stop()
        await link.close()
        await upstream.close()

    app.cleanup_ctx.append(lifecycle)
    return app
