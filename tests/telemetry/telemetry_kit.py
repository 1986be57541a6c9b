"""Helpers for the telemetry tests: a policy, a running sidecar beside the fake provider, scrapes.

A unique module name (no package here), like tests/sidecar/sidecar_kit.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import openai
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from collector.record import UsageRecord, record_decoder
from fakeprovider.app import FakeProvider
from policyd.bundle import Bundle, Envelope, encode_bundle, encode_envelope
from policyd.compiler import compile_dir
from sidecar.app import EMITTER, create_app
from sidecar.context import Identity
from sidecar.settings import Settings
from sidecar.tracing import SpanSink
from sidegate.natsd import free_port

WORKLOAD = Identity(tenant="acme", app="billing", namespace="acme", environment="prod")

PROVIDERS = """
providers:
  fake:
    kind: openai
    base_url: {base_url}/v1
    retry: {{max_attempts: 2, base_backoff_ms: 1, max_backoff_ms: 2}}
    breaker: {{consecutive_failures: {breaker_failures}}}
models:
  gpt-4o-mini:
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  gpt-4o:
    deployments: [{{provider: fake, model: gpt-4o}}]
prices:
  gpt-4o-mini: {{input_per_mtok: "0.15", output_per_mtok: "0.60"}}
  gpt-4o: {{input_per_mtok: "2.50", output_per_mtok: "10.00"}}
"""
RULES = """
rules:
  - name: default
    models: {deny: [gpt-4o]}
"""


def policy_folder(folder: Path, base_url: str, *, breaker_failures: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    providers = PROVIDERS.format(base_url=base_url, breaker_failures=breaker_failures)
    (folder / "providers.yaml").write_text(providers)
    (folder / "rules.yaml").write_text(RULES)
    return folder


def compiled(folder: Path) -> Bundle:
    bundle = compile_dir(folder)
    assert isinstance(bundle, Bundle), bundle
    return msgspec.structs.replace(bundle, revision=1)


@dataclass
class Gateway:
    app: web.Application
    url: str
    fake: FakeProvider
    client: openai.AsyncOpenAI

    async def scrape(self, url: str | None = None) -> dict[str, list[Sample]]:
        """GET /metrics, parsed by prometheus-client's own parser: family name -> samples."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url or self.url}/metrics") as response,
        ):
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    async def records(self) -> list[UsageRecord]:
        """Records emitted so far: NATS is unreachable here, so all of them reach the spool."""
        emitter = self.app[EMITTER]
        await wait_until(lambda: not emitter.pending, what="the usage queue to drain")
        return [record_decoder.decode(data) for _, _, data in emitter.spool.read()]

    def last_upstream_headers(self) -> dict[str, str]:
        return self.fake.state.stats.last["chat.completions"].headers


@asynccontextmanager
async def gateway(
    tmp_path: Path,
    *,
    spans: SpanSink | None = None,
    admin_listen: str = "",
    breaker_failures: int = 5,
) -> AsyncIterator[Gateway]:
    """The sidecar app on a real port with a persisted (unsigned) bundle, the fake behind it."""
    async with FakeProvider() as fake:
        folder = policy_folder(tmp_path / "policy", fake.url, breaker_failures=breaker_failures)
        state = tmp_path / "sidecar"
        state.mkdir(parents=True)
        envelope = Envelope(payload=encode_bundle(compiled(folder)))
        (state / "bundle.json").write_bytes(encode_envelope(envelope))
        settings = Settings(
            nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens: records spool
            state_dir=state,
            allow_unsigned=True,
            sidecar_id="sidecar-telemetry",
            workload=WORKLOAD,
            drain_timeout_s=0.1,
            admin_listen=admin_listen,
        )
        app = create_app(settings, spans=spans)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-app", max_retries=0)
        try:
            yield Gateway(app, url, fake, client)
        finally:
            await client.close()
            await runner.cleanup()


HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the team"}]


async def chat(gw: Gateway, model: str = "gpt-4o-mini", **options: Any) -> Any:
    """A chat call through the SDK; API errors are returned, not raised (the test reads them)."""
    try:
        return await gw.client.chat.completions.create(model=model, messages=HELLO, **options)
    except openai.APIStatusError as exc:
        return exc


async def stream(gw: Gateway, model: str = "gpt-4o-mini") -> str:
    chunks = await gw.client.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text = [
        chunk.choices[0].delta.content or ""
        async for chunk in chunks
        if chunk.choices and chunk.choices[0].delta.content
    ]
    return "".join(text)


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels`."""
    found = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
