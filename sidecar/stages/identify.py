"""Stage `identify`: who is calling, from the workload environment, a virtual key and headers."""

from __future__ import annotations

import hashlib
import time

from sidecar.context import Identity, RequestContext
from sidecar.errors import Reject
from sidecar.views import ChatView

# Metadata headers an app may set on each request (ARCHITECTURE.md, "identify").
H_TENANT = "x-sidegate-tenant"
H_USER = "x-sidegate-user"
H_ENDPOINT = "x-sidegate-endpoint"
H_PROMPT_VERSION = "x-sidegate-prompt-version"
H_DATA_MODE = "x-sidegate-data-mode"
DATA_MODES = ("real", "test")


def presented_key(headers: object) -> str | None:
    """The API key the app sent: OpenAI SDKs use Bearer, Anthropic SDKs use x-api-key."""
    get = headers.get  # type: ignore[attr-defined]
    auth: str | None = get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key: str | None = get("x-api-key")
    return key or None


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`), or "" if invalid."""
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return ""


class Identify:
    """Builds the request's identity. The workload part is fixed per sidecar, set at start."""

    name = "identify"

    def __init__(self, workload: Identity) -> None:
        self.workload = workload

    def __call__(self, ctx: RequestContext) -> Reject | None:
        w = self.workload
        headers = ctx.request.headers
        data_mode = headers.get(H_DATA_MODE)
        if data_mode is not None and data_mode not in DATA_MODES:
            # Test traffic is filtered out of reports by this value: a typo must not count
            # as real spend, so it is refused rather than guessed.
            return Reject(
                "invalid_request",
                f"The {H_DATA_MODE} header must be `real` or `test`, not {data_mode!r}.",
                code="invalid_data_mode",
            )
        identity = Identity(
            tenant=headers.get(H_TENANT) or w.tenant,
            app=w.app,
            namespace=w.namespace,
            service_account=w.service_account,
            pod=w.pod,
            user=headers.get(H_USER, ""),
            endpoint=headers.get(H_ENDPOINT, ""),
            prompt_version=headers.get(H_PROMPT_VERSION, ""),
            environment=w.environment,
            data_mode=data_mode or w.data_mode,
            client_request_id=headers.get("x-request-id", ""),
        )
        traceparent = headers.get("traceparent")
        if traceparent:
            identity.traceparent = traceparent
            identity.trace_id = trace_id_of(traceparent)
        if not identity.user and isinstance(ctx.view, ChatView) and ctx.view.user:
            identity.user = ctx.view.user
        assert ctx.bundle is not None
        key = presented_key(headers)
        if key is not None and ctx.bundle.virtual_keys:
            vk = ctx.bundle.virtual_keys.get(hashlib.sha256(key.encode()).hexdigest())
            if vk is not None:
                if vk.expires_at is not None and vk.expires_at <= time.time():
                    return Reject(
                        "authentication", f"The virtual key {vk.id!r} has expired.",
                        code="expired_api_key",
                    )  # fmt: skip
                # A key binds its tenant and user: headers cannot claim another one.
                identity.tenant = vk.tenant
                identity.user = vk.user or identity.user
                identity.virtual_key_id = vk.id
                identity.key_scopes = vk.scopes
        ctx.identity = identity
        ctx.policy = ctx.bundle.policy_for(identity.tenant, identity.app, identity.endpoint)
        return None
