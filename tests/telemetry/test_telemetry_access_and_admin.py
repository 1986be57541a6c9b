"""The access log of real requests, and the admin listener the kubelet and Prometheus dial."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from openai.types.chat import ChatCompletionMessageParam
from structlog.testing import capture_logs
from telemetry_kit import chat, gateway, stream

from sidecar.accesslog import EVENT
from sidecar.settings import from_env
from sidecar.telemetry import split_listen
from sidegate.natsd import free_port

ACCESS_KEYS = {
    "event", "log_level", "request_id", "client_request_id", "trace_id", "tenant", "app",
    "endpoint", "operation", "stream", "model_requested", "model_resolved", "model_served",
    "provider", "deployment", "status", "outcome", "error_class", "error_message", "latency_ms",
    "ttft_ms", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
    "token_source", "cost_usd", "attempts", "retries", "fallback_from", "cache",
    "policy_revision", "decisions",
}  # fmt: skip
SECRET_PROMPT = "the launch code is purple-elephant-4471"


async def test_each_request_writes_one_access_line_with_the_expected_fields(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        async with gateway(tmp_path) as gw:
            await chat(gw, extra_headers={"x-request-id": "app-1", "x-sidegate-endpoint": "faq"})
            await chat(gw, "gpt-4o")
            records = {r.id: r for r in await gw.records()}

    lines = [entry for entry in logs if entry["event"] == EVENT]
    assert len(lines) == 2
    assert all(set(line) == ACCESS_KEYS for line in lines)
    ok, denied = lines
    assert ok["request_id"] in records and denied["request_id"] in records
    assert (ok["client_request_id"], ok["endpoint"], ok["status"]) == ("app-1", "faq", 200)
    assert ok["cost_usd"] == str(records[ok["request_id"]].cost_usd)
    assert (denied["status"], denied["error_class"]) == (403, "permission")
    assert denied["decisions"] == [
        {"stage": "models", "rule": "default", "mode": "enforce", "outcome": "denied"}
    ]


async def test_access_lines_never_hold_the_prompt_or_the_answer(tmp_path: Path) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": SECRET_PROMPT}]
    with capture_logs() as logs:
        async with gateway(tmp_path) as gw:
            answer = await gw.client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            streamed = await stream(gw)

    text = json.dumps([entry for entry in logs if entry["event"] == EVENT], default=str)
    reply = answer.choices[0].message.content
    assert reply and streamed
    assert "purple-elephant" not in text
    assert reply not in text and streamed not in text


async def test_the_admin_listener_serves_health_readiness_and_metrics_and_nothing_else(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with gateway(tmp_path, admin_listen=f"127.0.0.1:{port}") as gw:
        await chat(gw)
        admin = f"http://127.0.0.1:{port}"
        metrics = await gw.scrape(admin)
        async with aiohttp.ClientSession() as session:
            statuses = {}
            for method, path in [
                ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/models"),
                ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"),
            ]:  # fmt: skip
                async with session.request(method, f"{admin}{path}", json={}) as response:
                    statuses[path] = response.status

    assert "sidegate_requests" in metrics
    assert statuses == {
        "/healthz": 200,
        "/readyz": 200,
        "/v1/models": 404,
        "/v1/chat/completions": 404,
        "/v1/embeddings": 404,
    }


async def test_the_proxy_port_serves_metrics_too_without_an_admin_listener(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        await chat(gw)
        metrics = await gw.scrape()

    assert "gen_ai_client_operation_duration_seconds" in metrics


def test_the_admin_listener_is_read_from_the_environment_and_off_by_default() -> None:
    assert from_env({}).admin_listen == ""
    assert from_env({"SIDEGATE_ADMIN_LISTEN": "0.0.0.0:4001"}).admin_listen == "0.0.0.0:4001"
    assert split_listen("[::]:4001") == ("::", 4001)


def test_a_malformed_admin_address_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="'4001'"):
        split_listen("4001")
