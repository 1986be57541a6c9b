"""A running sidecar for the routing and provider tests: policy from YAML, records captured.

A unique module name (no package here), like tests/policyd/policy_samples.py. The sidecar is
the real aiohttp app on a random port; NATS is absent (usage records are taken from the
emitter instead of a stream), which the sidecar treats as an ordinary outage.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from types import TracebackType
from typing import Any

import anthropic
import msgspec
import openai
from aiohttp import web

from collector.record import UsageRecord
from policyd.bundle import Bundle, Envelope, encode_bundle, encode_envelope
from policyd.compiler import compile_dir
from sidecar.app import EMITTER, PROXY, create_app
from sidecar.context import Identity
from sidecar.proxy import Proxy
from sidecar.settings import Settings
from sidegate.natsd import free_port

WORKLOAD = Identity(tenant="acme", app="billing", namespace="acme", environment="prod")

# Fast resilience settings for tests: short backoffs, no waiting on long retry-afters.
FAST_RETRY = "{max_attempts: 3, base_backoff_ms: 5, max_backoff_ms: 20}"


def compile_policy(folder: Path, text: str) -> Bundle:
    """A policy folder with one file, compiled by policyd into a bundle (revision 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    bundle = compile_dir(folder)
    assert isinstance(bundle, Bundle), f"policy does not compile: {bundle}"
    return msgspec.structs.replace(bundle, revision=1)


class Gateway:
    """The sidecar, serving `policy` (YAML text), with every usage record kept in `records`."""

    def __init__(self, tmp_path: Path, policy: str) -> None:
        state_dir = tmp_path / "sidecar"
        state_dir.mkdir(parents=True, exist_ok=True)
        bundle = compile_policy(tmp_path / "policies", policy)
        envelope = Envelope(payload=encode_bundle(bundle))
        (state_dir / "bundle.json").write_bytes(encode_envelope(envelope))
        self.settings = Settings(
            nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens: NATS is down
            state_dir=state_dir,
            allow_unsigned=True,
            sidecar_id="sidecar-routing-test",
            workload=WORKLOAD,
            drain_timeout_s=0.2,
        )
        self.app = create_app(self.settings)
        self.records: list[UsageRecord] = []
        self.app[EMITTER].emit = self.records.append  # type: ignore[method-assign]
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY]

    def openai(self, **headers: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="sk-test", max_retries=0, default_headers=headers
        )

    def anthropic(self, **headers: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.url, api_key="sk-ant-test", max_retries=0, default_headers=headers
        )

    async def record(self, request_id: str | None = None, *, timeout_s: float = 2.0) -> UsageRecord:
        """The record of a request (by x-request-id), or the latest one; waits for it."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            found = [r for r in self.records if request_id is None or r.id == request_id]
            if found:
                return found[-1]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no usage record for {request_id}")
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Gateway:
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def last_body(fake: Any, route: str) -> Any:
    """The JSON body of the last request the fake provider received on `route`."""
    return fake.state.stats.last[route].body
