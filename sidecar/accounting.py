"""Turning a finished request into its one usage record, estimating what the provider didn't say."""

from __future__ import annotations

from collector.record import UsageRecord
from sidecar import tokens
from sidecar.context import RequestContext
from sidecar.policy import CompiledDeployment, CompiledModel
from sidecar.providers.bridge import streamed_text
from sidecar.relay import Outcome
from sidecar.stages.caps import input_tokens
from sidecar.usage import TokenUsage


def estimate_usage(ctx: RequestContext, outcome: Outcome) -> TokenUsage:
    """Tokens for a request the upstream processed but did not report (an aborted stream)."""
    # The caps stage may have counted the prompt already; it is counted at most once.
    prompt = input_tokens(ctx) if ctx.view is not None else 0
    output = 0
    if outcome.stream_text:
        output = tokens.count_text(streamed_text(ctx.route.wire, outcome.stream_text))
    return TokenUsage(input=prompt, output=output, source="estimated")


def build_record(
    ctx: RequestContext,
    outcome: Outcome,
    *,
    sidecar_id: str,
    sent_upstream: bool,
    record_id: str | None = None,
    deployment: CompiledDeployment | None = None,
    model: CompiledModel | None = None,
    mirror_of: str = "",
) -> UsageRecord:
    """The request's record; a mirrored copy passes its own id, deployment and model."""
    usage = outcome.usage
    if usage.source == "none" and sent_upstream and ctx.view is not None:
        usage = estimate_usage(ctx, outcome)
    identity = ctx.identity
    deployment = deployment or ctx.deployment
    model = model or ctx.model
    view = ctx.view
    error_class = outcome.error_class
    return UsageRecord(
        id=record_id or ctx.record_id,
        ts_ms=ctx.started_ms,
        tenant=identity.tenant,
        app=identity.app,
        namespace=identity.namespace,
        service_account=identity.service_account,
        pod=identity.pod,
        user=identity.user,
        virtual_key_id=identity.virtual_key_id,
        endpoint=identity.endpoint,
        prompt_version=identity.prompt_version,
        environment=identity.environment,
        data_mode=identity.data_mode,
        client_request_id=identity.client_request_id,
        operation=ctx.route.operation,
        ingress_format=ctx.route.ingress,
        stream=view.is_stream if view is not None and not mirror_of else False,
        model_requested=view.model if view is not None else "",
        model_resolved=model.name if model is not None else "",
        model_served=outcome.model_served,
        provider=deployment.provider_id if deployment else "",
        provider_kind=deployment.provider.kind if deployment else "",
        deployment=deployment.label if deployment else "",
        input_tokens=usage.input,
        output_tokens=usage.output,
        cached_input_tokens=usage.cached_input,
        cache_write_tokens=usage.cache_write,
        reasoning_tokens=usage.reasoning,
        token_source=usage.source,
        cost_usd=usage.cost(deployment.price) if deployment else None,
        price_source=deployment.price.source if deployment and deployment.price else "",
        status_code=outcome.status_code,
        outcome="ok" if error_class is None else ("denied" if outcome.denied else "error"),
        error_class=error_class,
        error_message=outcome.error_message,
        latency_ms=round(ctx.elapsed_ms(), 3),
        ttft_ms=round(outcome.ttft_ms, 3) if outcome.ttft_ms is not None else None,
        upstream_latency_ms=(
            round(outcome.upstream_latency_ms, 3) if outcome.upstream_latency_ms else None
        ),
        attempts=outcome.attempts,
        retries=outcome.retries,
        fallback_from=outcome.fallback_from,
        idempotent_replay=outcome.idempotent_replay,
        mirror_of=mirror_of,
        policy_revision=ctx.bundle.revision if ctx.bundle is not None else 0,
        decisions=[] if mirror_of else ctx.decisions,
        trace_id=identity.trace_id,
        sidecar_id=sidecar_id,
    )
