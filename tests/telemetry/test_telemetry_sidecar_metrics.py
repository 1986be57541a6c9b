"""The sidecar's /metrics from a real app beside the fake provider, read by a real parser."""

from __future__ import annotations

from pathlib import Path

import openai
from telemetry_kit import chat, gateway, stream, value

from fakeprovider.faults import Fault
from sidecar.metrics import DURATION_BUCKETS, OTHER, TOKEN_BUCKETS, Bounded

GENAI_LABELS = {
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
}


async def test_requests_are_counted_by_outcome_status_and_error_class(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        await chat(gw)
        denied = await chat(gw, "gpt-4o")
        gw.fake.state.add_fault(Fault(kind="500", count=2))
        failed = await chat(gw)
        metrics = await gw.scrape()

    assert isinstance(denied, openai.PermissionDeniedError)
    assert isinstance(failed, openai.InternalServerError)
    requests = metrics["sidegate_requests"]
    ok = {"outcome": "ok", "status_code": "200", "error_class": ""}
    assert value(requests, "sidegate_requests_total", **ok) == 1
    denial = {"outcome": "denied", "status_code": "403", "error_class": "permission"}
    assert value(requests, "sidegate_requests_total", **denial) == 1
    error = {"outcome": "error", "status_code": "500", "error_class": "upstream_error"}
    assert value(requests, "sidegate_requests_total", provider="fake", **error) == 1


async def test_duration_and_token_histograms_follow_the_genai_conventions(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        answer = await chat(gw)
        metrics = await gw.scrape()

    duration = metrics["gen_ai_client_operation_duration_seconds"]
    counted = [s for s in duration if s.name.endswith("_count")]
    assert [s.labels for s in counted] == [
        {
            "gen_ai_operation_name": "chat",
            "gen_ai_provider_name": "openai",
            "gen_ai_request_model": "gpt-4o-mini",
            "gen_ai_response_model": answer.model,
            "error_type": "",
        }
    ]
    bounds = [float(s.labels["le"]) for s in duration if s.name.endswith("_bucket")]
    assert bounds[:-1] == list(DURATION_BUCKETS)
    tokens = metrics["gen_ai_client_token_usage"]
    sums = {s.labels["gen_ai_token_type"]: s.value for s in tokens if s.name.endswith("_sum")}
    assert sums == {"input": answer.usage.prompt_tokens, "output": answer.usage.completion_tokens}
    assert all(set(s.labels) > GENAI_LABELS for s in tokens)
    bounds = [float(s.labels["le"]) for s in tokens if s.name.endswith("_bucket")][:15]
    assert bounds[:-1] == list(TOKEN_BUCKETS)


async def test_time_to_first_chunk_is_observed_for_streams_only(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        await chat(gw)
        await stream(gw)
        metrics = await gw.scrape()

    first_chunk = metrics["gen_ai_client_operation_time_to_first_chunk_seconds"]
    assert value(first_chunk, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 1
    duration = metrics["gen_ai_client_operation_duration_seconds"]
    assert value(duration, "gen_ai_client_operation_duration_seconds_count") == 2


async def test_tokens_and_spend_are_counted_per_catalogue_model(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        answer = await chat(gw)
        metrics = await gw.scrape()
        [record] = await gw.records()

    tokens = metrics["sidegate_tokens"]
    labels = {"provider": "fake", "model": "gpt-4o-mini"}
    input_tokens = value(tokens, "sidegate_tokens_total", token_type="input", **labels)
    assert input_tokens == answer.usage.prompt_tokens
    assert record.cost_usd is not None
    cost = value(metrics["sidegate_cost_usd"], "sidegate_cost_usd_total", **labels)
    assert cost == float(record.cost_usd)


async def test_policy_denials_are_counted_by_stage_mode_and_outcome(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        await chat(gw, "gpt-4o")
        await chat(gw, "gpt-4o")
        metrics = await gw.scrape()

    decisions = metrics["sidegate_policy_decisions"]
    labels = {"stage": "models", "mode": "enforce", "outcome": "denied"}
    assert value(decisions, "sidegate_policy_decisions_total", **labels) == 2


async def test_retries_are_counted_from_the_usage_record(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        gw.fake.state.add_fault(Fault(kind="503", count=1))
        await chat(gw)
        metrics = await gw.scrape()
        [record] = await gw.records()

    assert (record.attempts, record.retries) == (2, 1)
    labels = {"provider": "fake", "model": "gpt-4o-mini"}
    assert value(metrics["sidegate_upstream_retries"], "sidegate_upstream_retries_total") == 1
    attempts = metrics["sidegate_upstream_attempts"]
    assert value(attempts, "sidegate_upstream_attempts_total", **labels) == 2


async def test_an_open_circuit_shows_in_the_circuit_state_gauge(tmp_path: Path) -> None:
    async with gateway(tmp_path, breaker_failures=1) as gw:
        gw.fake.state.add_fault(Fault(kind="500", count=1))
        await chat(gw)
        metrics = await gw.scrape()

    circuit = metrics["sidegate_circuit_state"]
    states = {s.labels["state"]: s.value for s in circuit}
    assert states == {"closed": 0, "open": 1, "half_open": 0}
    assert {s.labels["deployment"] for s in circuit} == {"fake/gpt-4o-mini"}


async def test_many_users_tenants_and_unknown_models_add_no_series(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:

        async def round_of(n: int) -> int:
            for i in range(n):
                headers = {
                    "x-sidegate-user": f"user-{i}",
                    "x-sidegate-tenant": f"tenant-{i}",
                    "x-sidegate-endpoint": f"endpoint-{i}",
                    "x-request-id": f"client-{i}",
                }
                await chat(gw, extra_headers=headers)
                await chat(gw, f"no-such-model-{i}", extra_headers=headers)
            metrics = await gw.scrape()
            text = repr(metrics)
            assert "user-" not in text and "tenant-" not in text and "no-such-model" not in text
            return sum(len(samples) for samples in metrics.values())

        first = await round_of(1)
        assert await round_of(25) == first


async def test_state_gauges_show_the_bundle_and_the_usage_spool(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        await chat(gw)
        await chat(gw)
        assert len(await gw.records()) == 2  # spooled: NATS is unreachable
        metrics = await gw.scrape()

    def gauge(name: str) -> float:
        return value(metrics[name], name)

    assert gauge("sidegate_bundle_revision") == 1
    assert gauge("sidegate_bundle_created_timestamp_seconds") > 0
    assert gauge("sidegate_bundle_rejected") == 0
    assert gauge("sidegate_nats_connected") == 0
    assert gauge("sidegate_usage_spool_bytes") > 0
    assert gauge("sidegate_usage_publish_lag_seconds") > 0
    assert value(metrics["sidegate_usage_spooled"], "sidegate_usage_spooled_total") == 2
    assert value(metrics["sidegate_usage_published"], "sidegate_usage_published_total") == 0


def test_a_bounded_label_folds_newcomers_past_its_limit_into_other() -> None:
    bounded = Bounded(limit=2)

    assert [bounded(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
