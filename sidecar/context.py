"""Per-request state that flows through the stage pipeline: one plain object, no I/O."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from collector.record import Decision

if TYPE_CHECKING:
    from aiohttp import web

    from sidecar.policy import CompiledBundle, CompiledDeployment, CompiledModel, ResolvedPolicy
    from sidecar.routes import Route
    from sidecar.views import RequestView


class Identity(msgspec.Struct):
    """Who is calling: workload facts from the environment, refined by key and headers."""

    tenant: str = ""
    app: str = ""
    namespace: str = ""
    service_account: str = ""
    pod: str = ""
    user: str = ""
    virtual_key_id: str = ""
    key_scopes: tuple[str, ...] = ()
    endpoint: str = ""
    prompt_version: str = ""
    environment: str = ""
    data_mode: str = "real"
    client_request_id: str = ""
    trace_id: str = ""
    traceparent: str = ""


class RequestContext:
    """Mutable state of one request; stages read and annotate it, the runner owns flow."""

    __slots__ = (
        "body",
        "body_patch",
        "bundle",
        "deadline_at",
        "decisions",
        "deployment",
        "estimated_input_tokens",
        "identity",
        "model",
        "policy",
        "record_id",
        "request",
        "response_headers",
        "route",
        "started_ms",
        "started_ns",
        "strip_usage_chunk",
        "view",
    )

    def __init__(self, request: web.Request, route: Route, record_id: str) -> None:
        self.request = request
        self.route = route
        self.record_id = record_id
        self.started_ns = time.perf_counter_ns()
        self.started_ms = time.time_ns() // 1_000_000
        self.body = b""
        self.view: RequestView | None = None
        self.bundle: CompiledBundle | None = None
        self.identity = Identity()
        self.policy: ResolvedPolicy | None = None
        self.model: CompiledModel | None = None
        self.deployment: CompiledDeployment | None = None
        self.decisions: list[Decision] = []
        # Top-level JSON fields a stage rewrote; non-empty means the body is re-encoded once.
        self.body_patch: dict[str, Any] = {}
        self.response_headers: dict[str, str] = {}
        self.estimated_input_tokens: int | None = None
        # time.monotonic() by which the whole request (all attempts) must finish, if capped.
        self.deadline_at: float | None = None
        # The sidecar asked for stream usage the client did not: keep that chunk to ourselves.
        self.strip_usage_chunk = False

    def elapsed_ms(self) -> float:
        return (time.perf_counter_ns() - self.started_ns) / 1e6
