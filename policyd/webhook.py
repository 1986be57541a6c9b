"""The mutating admission webhook policyd serves: AdmissionReview v1 over TLS in, JSONPatch out.

The HTTP shell around `policyd.injection`, and the injector config it loads from the file the
chart mounts. Per Kubernetes convention a review the webhook cannot patch is still allowed, with
a warning: sidegate must never be the reason a pod fails to start (the chart also sets
failurePolicy: Ignore). Only a request that is not an AdmissionReview at all gets an HTTP 400,
with a message naming what is wrong; nothing a caller sends yields a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from policyd.errors import PolicydError
from policyd.injection import Decision, Injector, pod_decoder
from policyd.metrics import exposition

__all__ = [
    "InjectorConfig",
    "InjectorConfigError",
    "build_app",
    "load_injector_config",
    "start_webhook",
]

API_VERSION = "admission.k8s.io/v1"
MUTATE_PATH = "/mutate"
MAX_REVIEW_BYTES = 4 * 1024 * 1024  # a pod is far below etcd's 1.5 MiB object limit
MAX_WARNING_CHARS = 120

log = structlog.get_logger("sidegate.webhook")

REVIEWS = Counter(
    "sidegate_webhook_reviews_total", "Admission reviews answered, by outcome.", ["outcome"]
)
REVIEW_SECONDS = Histogram(
    "sidegate_webhook_review_seconds",
    "Time to decide one admission review.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


# --- Injector config: decoded from the file the chart mounts; unknown fields are typos ---

_ED25519_KEY_BYTES = 32
Quantity = str | int | float  # Kubernetes takes "500m", "1Gi" or a bare number


class _Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base for injector config structs."""


class Resources(_Config, frozen=True):
    """Kubernetes resource quantities for the sidecar container."""

    requests: dict[str, Quantity] = msgspec.field(
        default_factory=lambda: {"cpu": "50m", "memory": "96Mi"}
    )
    limits: dict[str, Quantity] = msgspec.field(default_factory=lambda: {"memory": "256Mi"})


class PublicKeys(_Config, frozen=True):
    """Where the sidecar reads the bundle public keys: exactly one source is set.

    `keys` travel inside the pod itself (an annotation projected by a downward-API volume), so
    they reach every namespace with no per-namespace object. `config_map` and `secret` name an
    object that must exist in each injected pod's own namespace, since volumes never cross one.
    """

    keys: tuple[str, ...] = ()
    config_map: str | None = None
    secret: str | None = None
    item: str = "public-keys"  # the key inside the ConfigMap or Secret

    def __post_init__(self) -> None:
        sources = sum((bool(self.keys), self.config_map is not None, self.secret is not None))
        if sources != 1:
            raise ValueError("set exactly one of `keys`, `config_map` or `secret`")
        for key in self.keys:
            try:
                raw = base64.b64decode(key, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) != _ED25519_KEY_BYTES:
                raise ValueError(f"{key!r} is not a base64 Ed25519 public key (signing.pub)")


class Annotations(_Config, frozen=True):
    """Pod annotation names the injector reads and writes."""

    inject: str = "sidegate.io/inject"  # "false" opts a pod out
    status: str = "sidegate.io/status"  # written: "injected"
    environment: str = "sidegate.io/environment"
    tenant: str = "sidegate.io/tenant"
    public_keys: str = "sidegate.io/public-keys"  # written when keys are inline


class InjectorConfig(_Config, frozen=True):
    """Everything the webhook needs to build the sidecar; the chart renders it from values."""

    image: str
    nats_url: str
    public_keys: PublicKeys
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # Native sidecars (restartable init containers) need Kubernetes >= 1.29; the webhook cannot
    # learn the server version from a review, so the chart decides from its capabilities.
    native_sidecars: bool = True
    container_name: str = "sidegate"
    port: int = 4000
    # The sidecar's admin listener on the pod IP (/healthz, /readyz, /metrics only): HTTP
    # probes and Prometheus use it. None keeps everything on loopback, probed by exec.
    admin_port: int | None = 4001
    resources: Resources = msgspec.field(default_factory=Resources)
    provider_secrets: tuple[str, ...] = ()  # Secrets in the pod's namespace, sidecar envFrom
    environments: dict[str, str] = {}  # namespace -> SIDEGATE_ENVIRONMENT
    annotations: Annotations = msgspec.field(default_factory=Annotations)
    state_size_limit: str = "256Mi"
    # The sidecar drains its usage spool for about 30 s after SIGTERM.
    termination_grace_seconds: int = 45
    run_as_user: int = 10001
    run_as_group: int = 10001
    extra_env: dict[str, str] = {}  # e.g. log level, passed to the sidecar only

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError("`port` must be between 1 and 65535")
        if self.admin_port is not None and not 1 <= self.admin_port <= 65535:
            raise ValueError("`admin_port` must be between 1 and 65535, or null")
        if self.admin_port == self.port:
            raise ValueError("`admin_port` must differ from `port`")
        if self.run_as_user <= 0:
            raise ValueError("`run_as_user` must be a non-root UID")
        if self.termination_grace_seconds < 0:
            raise ValueError("`termination_grace_seconds` must not be negative")


class InjectorConfigError(PolicydError):
    """The injector config file does not hold a valid `InjectorConfig`."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


def load_injector_config(path: str) -> InjectorConfig:
    """Read the injector config from a YAML or JSON file (JSON is YAML, so one decoder)."""
    data = Path(path).read_bytes()
    try:
        return msgspec.yaml.decode(data, type=InjectorConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InjectorConfigError(path, str(exc)) from exc


# --- AdmissionReview v1 wire types: unknown fields are skipped, the API server adds many ---


class _Wire(msgspec.Struct, frozen=True, rename="camel"):
    """Base for admission wire types."""


class GroupVersionKind(_Wire, frozen=True):
    group: str = ""
    version: str = ""
    kind: str = ""


class AdmissionRequest(_Wire, frozen=True):
    uid: str
    kind: GroupVersionKind = msgspec.field(default_factory=GroupVersionKind)
    operation: str = ""
    namespace: str = ""
    name: str = ""
    sub_resource: str = ""
    object: msgspec.Raw = msgspec.Raw()  # decoded by injection; empty when absent
    dry_run: bool = False


class AdmissionReview(_Wire, frozen=True):
    api_version: str = ""
    kind: str = ""
    request: AdmissionRequest | None = None


class AdmissionResponse(_Wire, frozen=True, omit_defaults=True):
    uid: str
    allowed: bool  # no default, so it is always on the wire as the API server requires
    patch_type: str | None = None
    patch: bytes | None = None  # msgspec writes bytes as base64, as the API expects
    warnings: tuple[str, ...] = ()


class ReviewReply(_Wire, frozen=True):
    response: AdmissionResponse
    api_version: str = API_VERSION
    kind: str = "AdmissionReview"


_review_decoder = msgspec.json.Decoder(AdmissionReview)
_encoder = msgspec.json.Encoder()


def parse_review(body: bytes) -> AdmissionRequest | str:
    """The review's request, or a message saying why the body is not an AdmissionReview v1."""
    try:
        review = _review_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return f"malformed AdmissionReview: {exc}"
    if review.kind != "AdmissionReview" or review.api_version != API_VERSION:
        got = f"{review.api_version or '<none>'} {review.kind or '<none>'}"
        return f"expected apiVersion {API_VERSION} kind AdmissionReview, got {got}"
    if review.request is None:
        return "malformed AdmissionReview: missing `request`"
    if not review.request.uid:
        return "malformed AdmissionReview: empty `request.uid`"
    return review.request


def decide(injector: Injector, request: AdmissionRequest) -> Decision | None:
    """The decision for one review; None when the review is not a pod creation to look at."""
    kind = request.kind
    if (kind.group, kind.kind) != ("", "Pod") or request.sub_resource:
        return None
    if request.operation != "CREATE" or bytes(request.object) in (b"", b"null"):
        return None
    return injector.review(pod_decoder.decode(request.object), namespace=request.namespace)


def answer(request: AdmissionRequest, decision: Decision | None) -> ReviewReply:
    # The API server may cut warnings longer than 120 characters; cut them where we choose.
    warnings = () if decision is None else tuple(w[:MAX_WARNING_CHARS] for w in decision.warnings)
    if decision is None or not decision.patch:
        return ReviewReply(AdmissionResponse(request.uid, True, warnings=warnings))
    patch = _encoder.encode(decision.patch)
    return ReviewReply(AdmissionResponse(request.uid, True, "JSONPatch", patch, warnings))


# --- HTTP ---

INJECTOR = web.AppKey("injector", Injector)
POLICYD_METRICS = web.AppKey("policyd_metrics", CollectorRegistry)


def _problem(status: int, message: str) -> web.Response:
    body = _encoder.encode({"error": {"type": "invalid_request", "message": message}})
    return web.Response(status=status, body=body, content_type="application/json")


async def _mutate(request: web.Request) -> web.Response:
    body = await request.read()
    started = time.perf_counter()
    parsed = parse_review(body)
    if isinstance(parsed, str):
        REVIEWS.labels("malformed").inc()
        log.warning("admission_review_rejected", error=parsed, remote=request.remote)
        return _problem(400, parsed)
    try:
        decision = decide(request.app[INJECTOR], parsed)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        decision = Decision("not understood", (), (f"sidegate: pod not understood: {exc}",))
    except Exception:
        # Boundary: a bug in patch building must degrade to "pod admitted without sidecar",
        # never to an error the API server would count against the pod's creation.
        log.exception("admission_review_failed", uid=parsed.uid, namespace=parsed.namespace)
        decision = Decision("internal error", (), ("sidegate: internal error, not injected",))
    outcome = "ignored" if decision is None else decision.reason
    reply = answer(parsed, decision)
    REVIEWS.labels(outcome).inc()
    REVIEW_SECONDS.observe(time.perf_counter() - started)
    log.info(
        "admission_review",
        uid=parsed.uid,
        namespace=parsed.namespace,
        outcome=outcome,
        operations=0 if decision is None else len(decision.patch),
        dry_run=parsed.dry_run,
    )
    return web.Response(body=_encoder.encode(reply), content_type="application/json")


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    body = exposition(request.app.get(POLICYD_METRICS))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    config: InjectorConfig, *, metrics: CollectorRegistry | None = None
) -> web.Application:
    """The webhook application: POST /mutate, GET /healthz, GET /metrics (with policyd's own
    `metrics` when the policy service runs in the same process)."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[INJECTOR] = Injector(config)
    if metrics is not None:
        app[POLICYD_METRICS] = metrics
    app.router.add_post(MUTATE_PATH, _mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


# --- TLS, with the certificate reloaded when cert-manager or the chart rotates it ---


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def _stamp(*paths: str) -> tuple[tuple[int, int, int], ...]:
    # The inode too: a Secret volume swaps files by symlink, which may keep mtime and size.
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, paths))


async def _reload_certificates(
    context: ssl.SSLContext, cert_file: str, key_file: str, *, interval_s: float
) -> None:
    """Swap the serving certificate in place when its files change (new handshakes only)."""
    seen = _stamp(cert_file, key_file)
    while True:
        await asyncio.sleep(interval_s)
        try:
            stamp = _stamp(cert_file, key_file)
            if stamp != seen:
                context.load_cert_chain(cert_file, key_file)
                seen = stamp
                log.info("webhook_certificate_reloaded", cert_file=cert_file)
        except (OSError, ssl.SSLError) as exc:
            # A rotation caught half-way (new cert, old key): keep serving, retry next tick.
            log.warning("webhook_certificate_reload_failed", error=str(exc))


async def start_webhook(
    *,
    host: str,
    port: int,
    cert_file: str,
    key_file: str,
    config: InjectorConfig,
    reload_interval_s: float = 30.0,
    metrics: CollectorRegistry | None = None,
) -> web.AppRunner:
    """Serve the webhook over TLS; the caller owns the runner and calls `cleanup()` to stop."""
    context = tls_context(cert_file, key_file)
    app = build_app(config, metrics=metrics)

    async def reloader(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            _reload_certificates(context, cert_file, key_file, interval_s=reload_interval_s)
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(reloader)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner
