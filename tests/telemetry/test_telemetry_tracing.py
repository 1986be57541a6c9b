"""Spans from real requests, read with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
from telemetry_kit import chat, gateway

from fakeprovider.faults import Fault
from sidecar.tracing import from_environment, parse_traceparent

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the sidegate[otel] extra")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.otelspans import OtelSpans

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_each_request_is_a_client_span_with_genai_attributes(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        answer = await chat(gw)
        [record] = await gw.records()

    [span] = exporter.get_finished_spans()
    assert (span.name, span.kind) == ("chat gpt-4o-mini", SpanKind.CLIENT)
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == answer.model
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert attributes["sidegate.request.id"] == record.id
    assert span.start_time == record.ts_ms * 1_000_000
    assert span.end_time == span.start_time + int(record.latency_ms * 1_000_000)


async def test_the_span_is_a_child_of_the_incoming_traceparent_and_shares_the_records_trace_id(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        await chat(gw, extra_headers={"traceparent": TRACEPARENT})
        [record] = await gw.records()

    [span] = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert hex_ids(span)[0] == CALLER_TRACE == record.trace_id


async def test_the_traceparent_sent_upstream_names_the_sidecars_span_as_its_parent(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        await chat(gw, extra_headers={"traceparent": TRACEPARENT})
        upstream = parse_traceparent(gw.last_upstream_headers()["traceparent"])

    [span] = exporter.get_finished_spans()
    assert upstream is not None
    assert (upstream.trace_id, upstream.parent_id, upstream.flags) == (*hex_ids(span), "01")
    assert upstream.parent_id != CALLER_SPAN


async def test_without_a_traceparent_the_sidecar_starts_one_trace_for_record_span_and_upstream(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        await chat(gw)
        upstream = parse_traceparent(gw.last_upstream_headers()["traceparent"])
        [record] = await gw.records()

    [span] = exporter.get_finished_spans()
    assert span.parent is None
    assert upstream is not None and upstream.sampled
    assert record.trace_id == hex_ids(span)[0] == upstream.trace_id
    assert upstream.parent_id == hex_ids(span)[1]


async def test_a_request_refused_before_routing_still_gets_a_correlated_trace_id(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        headers = {"traceparent": TRACEPARENT, "content-type": "application/json"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{gw.url}/v1/chat/completions", data=b"{not json", headers=headers) as r,
        ):
            assert r.status == 400
        [record] = await gw.records()

    [span] = exporter.get_finished_spans()
    assert record.trace_id == CALLER_TRACE == hex_ids(span)[0]
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER_SPAN


async def test_a_failed_request_is_an_error_span_with_its_error_type(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        gw.fake.state.add_fault(Fault(kind="500", count=2))
        await chat(gw)

    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "upstream_error"


async def test_an_unsampled_caller_gets_no_span_but_its_flags_go_upstream(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with gateway(tmp_path, spans=OtelSpans.to(exporter)) as gw:
        await chat(gw, extra_headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})
        upstream = parse_traceparent(gw.last_upstream_headers()["traceparent"])

    assert exporter.get_finished_spans() == ()
    assert upstream is not None and not upstream.sampled and upstream.trace_id == CALLER_TRACE


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (TRACEPARENT, True),
        (TRACEPARENT.upper(), True),
        (f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-later-fields", True),
        (f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01", False),
        (f"00-{'0' * 32}-{CALLER_SPAN}-01", False),
        (f"00-{CALLER_TRACE}-{'0' * 16}-01", False),
        (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra", False),
        (f"00-{CALLER_TRACE[:-1]}x-{CALLER_SPAN}-01", False),
        ("garbage", False),
    ],
)
def test_only_valid_w3c_traceparents_are_continued(header: str, valid: bool) -> None:
    assert (parse_traceparent(header) is not None) is valid


def test_tracing_is_off_without_an_otlp_endpoint_or_when_the_sdk_is_disabled() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}

    assert from_environment({}) is None
    assert from_environment({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert from_environment({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_sidecar_without_tracing_never_loads_the_opentelemetry_sdk(tmp_path: Path) -> None:
    out = run_python(f"""
        import sys
        from pathlib import Path
        from sidecar.app import create_app
        from sidecar.settings import Settings
        from sidecar.tracing import from_environment
        create_app(Settings(state_dir=Path({str(tmp_path)!r})), spans=from_environment({{}}))
        print("opentelemetry.sdk" in sys.modules)
    """)
    assert out == "False"


def test_an_otlp_endpoint_without_the_otel_extra_degrades_to_no_tracing() -> None:
    out = run_python("""
        import sys
        sys.modules["opentelemetry.sdk"] = None  # as if sidegate[otel] were not installed
        from sidecar.tracing import from_environment
        print(from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}))
    """)
    assert out.splitlines()[-1] == "None"
