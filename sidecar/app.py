"""The sidecar's aiohttp application: routes, start-up order and graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from sidecar import tokens
from sidecar.budgets import BudgetLedger
from sidecar.bundles import BundleRejected, PolicyState, PolicyWatcher, Verifier
from sidecar.context import RequestContext
from sidecar.emitter import Spool, UsageEmitter
from sidecar.errors import IngressFormat, Reject, error_response
from sidecar.leases import LeaseClient
from sidecar.limits import Limiter
from sidecar.metrics import BudgetCollector
from sidecar.natslink import NatsLink
from sidecar.pipeline import Pipeline
from sidecar.policy import CompiledBundle
from sidecar.proxy import NO_BUNDLE, Proxy, new_record_id
from sidecar.routes import CHAT, MODEL_ROUTES, models_page
from sidecar.routing.health import HealthBook
from sidecar.settings import Settings
from sidecar.stages.access import ModelAccess, RequireKey
from sidecar.stages.budget import Budget
from sidecar.stages.caps import Caps
from sidecar.stages.identify import Identify
from sidecar.stages.metadata import RequiredMetadata
from sidecar.stages.parse import Parse
from sidecar.stages.ratelimit import RateLimit
from sidecar.stages.route import ChooseDeployment
from sidecar.status import StatusReporter
from sidecar.telemetry import AdminListener, Telemetry
from sidecar.tracing import SpanSink, TraceContext
from sidecar.upstream import UpstreamClient

log = structlog.get_logger("sidegate.sidecar")

STATE = web.AppKey("state", PolicyState)
EMITTER = web.AppKey("emitter", UsageEmitter)
PIPELINE = web.AppKey("pipeline", Pipeline)
SETTINGS = web.AppKey("settings", Settings)
PROXY = web.AppKey("proxy", Proxy)
TELEMETRY = web.AppKey("telemetry", Telemetry)
BUDGETS = web.AppKey("budgets", BudgetLedger)


def build_pipeline(
    settings: Settings, limiter: Limiter, budgets: BudgetLedger | None = None
) -> Pipeline:
    """The request stages, in order (ARCHITECTURE.md, "The request path").

    Caps run after the route so the cost cap prices the chosen deployment; budgets after caps
    so they reserve the capped worst case. Rate limits run last because they charge buckets,
    and a later denial would charge a request never sent (a budget reservation is settled
    for every request, denied or not, so it may come before them).
    """
    return Pipeline(
        [
            Parse(),
            Identify(settings.workload),
            TraceContext(),
            RequireKey(),
            RequiredMetadata(),
            ModelAccess(),
            ChooseDeployment(),
            Caps(),
            Budget(budgets if budgets is not None else BudgetLedger(holder=settings.sidecar_id)),
            RateLimit(limiter),
        ]
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
        """The models the caller's policy allows, in the caller's list format."""
        anthropic = "anthropic-version" in request.headers  # sent by every Anthropic SDK
        fmt: IngressFormat = "anthropic" if anthropic else "openai"
        bundle = request.app[STATE].active
        if bundle is None:
            return error_response(NO_BUNDLE, fmt)
        ctx = RequestContext(request, CHAT, new_record_id())
        ctx.bundle = bundle
        reject = identify(ctx)
        if reject is not None:
            return error_response(reject, fmt)
        assert ctx.policy is not None
        names = bundle.allowed_models(ctx.policy)
        return web.json_response(models_page(names, anthropic=anthropic))

    return list_models


async def not_found(request: web.Request) -> web.Response:
    return error_response(
        Reject("not_found", f"Unknown route: {request.method} {request.path}", code="unknown_url"),
        "anthropic" if request.path.startswith("/v1/messages") else "openai",
    )


async def _load_tokenizer_when_needed(state: PolicyState) -> None:
    """Load tiktoken (about 40 MiB) once a bundle estimates tokens before calls, not before."""
    events: asyncio.Queue[CompiledBundle | BundleRejected] = asyncio.Queue()
    state.listeners.append(events)
    event: CompiledBundle | BundleRejected | None = state.active
    while True:
        if isinstance(event, CompiledBundle) and event.estimates_tokens:
            tokens.load_in_background()
            state.listeners.remove(events)
            return
        event = await events.get()


def create_app(settings: Settings, *, spans: SpanSink | None = None) -> web.Application:
    """The sidecar; `spans` exports one span per request (see sidecar.tracing)."""
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    state = PolicyState(
        Verifier(settings.public_keys, allow_unsigned=settings.allow_unsigned),
        settings.bundle_path,
    )
    link = NatsLink(settings.nats_url)
    emitter = UsageEmitter(link, Spool(settings.spool_path, max_bytes=settings.spool_max_bytes))
    watcher = PolicyWatcher(state, link, resync_interval_s=settings.resync_interval_s)
    upstream = UpstreamClient()
    limiter = Limiter(max_buckets=settings.rate_limit_max_buckets)
    reporter = StatusReporter(
        state, link, sidecar_id=settings.sidecar_id, workload=settings.workload,
        interval_s=settings.status_interval_s,
    )  # fmt: skip
    ledger = BudgetLedger(holder=settings.sidecar_id)
    leases = LeaseClient(ledger, link)
    pipeline = build_pipeline(settings, limiter, ledger)
    health = HealthBook()
    telemetry = Telemetry(state=state, emitter=emitter, circuits=health.states, spans=spans)
    proxy = Proxy(
        state=state, pipeline=pipeline, upstream=upstream, health=health,
        # Telemetry before the emitter: it fills in the trace id of a request refused early.
        observers=[
            limiter.settle_record, ledger.settle_record, telemetry.observe,
            lambda ctx, record: emitter.emit(record),
        ],
        sidecar_id=settings.sidecar_id, max_body_bytes=settings.max_body_bytes,
        mirror_sink=lambda record: emitter.emit(record),
    )  # fmt: skip
    app[STATE], app[EMITTER], app[PIPELINE], app[SETTINGS] = state, emitter, pipeline, settings
    app[PROXY], app[TELEMETRY], app[BUDGETS] = proxy, telemetry, ledger
    telemetry.metrics.registry.register(BudgetCollector(ledger))

    for path, route in MODEL_ROUTES.items():
        app.router.add_post(path, proxy.handler(route))
    app.router.add_get("/v1/models", models_handler(pipeline))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", telemetry.metrics.handle)
    app.router.add_route("*", "/{tail:.*}", not_found)
    admin = None
    if settings.admin_listen:
        admin = AdminListener(
            settings.admin_listen,
            {"/healthz": healthz, "/readyz": readyz, "/metrics": telemetry.metrics.handle},
        )
        admin.app[STATE] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Fail-static: the persisted bundle is enforced before NATS is even tried.
        state.load_persisted()
        estimates = asyncio.create_task(_load_tokenizer_when_needed(state), name="tokenizer")
        await upstream.start()
        link.start()
        watcher.start()
        reporter.start()
        leases.start()
        emitter.start()
        if admin is not None:
            # Last: once the kubelet sees /healthz, the proxy port is about to listen.
            await admin.start()
        yield
        await proxy.close()  # mirrors still running end first, so their records drain too
        await leases.stop()  # every request has settled: hand unspent slices back
        await watcher.stop()
        await state.close()  # the last activated bundle is on disk for a restart without NATS
        await reporter.stop()
        drained = await emitter.drain(settings.drain_timeout_s)
        log.info("sidecar_stopped", usage_drained=drained, published=emitter.published)
        await emitter.stop()
        await link.close()
        await upstream.close()
        await telemetry.close()
        if admin is not None:
            await admin.stop()
        estimates.cancel()

    app.cleanup_ctx.append(lifecycle)
    return app
