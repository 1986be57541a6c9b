"""Helpers for the sidecar tests: policies from YAML, request contexts, a running sidecar.

A unique module name (no package here), like tests/policyd/policy_samples.py.
"""

from __future__ import annotations

import asyncio
import base64
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from nacl.signing import SigningKey
from nats.aio.msg import Msg

from collector.record import UsageRecord, record_decoder
from policyd.bundle import Bundle, encode_bundle, encode_envelope
from policyd.compiler import compile_dir
from policyd.signing import sign
from sidecar.app import STATE, create_app
from sidecar.bundles import PolicyState
from sidecar.context import Identity, RequestContext
from sidecar.errors import Reject
from sidecar.pipeline import Stage, Violation
from sidecar.policy import CompiledBundle
from sidecar.routes import CHAT, Route
from sidecar.settings import Settings
from sidecar.stages.access import ModelAccess
from sidecar.stages.identify import Identify
from sidecar.stages.parse import Parse
from sidecar.stages.route import ChooseDeployment
from sidegate.natsd import free_port

WORKLOAD = Identity(tenant="acme", app="billing", namespace="acme", environment="prod")

# The catalogue every test policy starts from; prices are negotiated overrides so the compiler
# never looks anything up. {base_url} is the fake provider, or a placeholder in unit tests.
CATALOGUE = """
providers:
  fake:
    kind: openai
    base_url: {base_url}
  fake-anthropic:
    kind: anthropic
    base_url: {anthropic_url}
models:
  gpt-4o-mini:
    tier: cheap
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  small-2:
    tier: cheap
    deployments: [{{provider: fake, model: small-2}}]
  gpt-4o:
    tier: premium
    deployments: [{{provider: fake, model: gpt-4o}}]
  text-embedding-3-small:
    kind: embedding
    deployments: [{{provider: fake, model: text-embedding-3-small}}]
  claude-haiku:
    deployments: [{{provider: fake-anthropic, model: claude-3-5-haiku-latest}}]
aliases:
  fast: gpt-4o-mini
prices:
  gpt-4o-mini: {{input_per_mtok: "0.15", output_per_mtok: "0.60"}}
  small-2: {{input_per_mtok: "0.10", output_per_mtok: "0.40"}}
  gpt-4o: {{input_per_mtok: "2.50", output_per_mtok: "10.00"}}
  text-embedding-3-small: {{input_per_mtok: "0.02", output_per_mtok: "0"}}
  claude-haiku: {{input_per_mtok: "0.80", output_per_mtok: "4.00"}}
"""


class Keys(msgspec.Struct):
    signing: SigningKey
    public: str  # base64, as sidecars are configured


def new_keys() -> Keys:
    key = SigningKey.generate()
    return Keys(signing=key, public=base64.b64encode(bytes(key.verify_key)).decode())


def signed(bundle: Bundle, keys: Keys) -> bytes:
    """The bytes policyd puts in the KV entry for `bundle`."""
    return encode_envelope(sign(encode_bundle(bundle), keys.signing))


def write_policy(folder: Path, rules: str, *, base_url: str = "http://fake.invalid/v1") -> Path:
    """A policy folder: the catalogue plus `rules` (YAML text, dedented)."""
    folder.mkdir(parents=True, exist_ok=True)
    anthropic_url = base_url.removesuffix("/v1")  # the Anthropic SDK adds /v1 itself
    (folder / "catalogue.yaml").write_text(
        CATALOGUE.format(base_url=base_url, anthropic_url=anthropic_url)
    )
    (folder / "rules.yaml").write_text(textwrap.dedent(rules).lstrip("\n"))
    return folder


def compile_policy(
    folder: Path, rules: str, *, revision: int = 1, base_url: str = "http://fake.invalid/v1"
) -> Bundle:
    """Compile through policyd, as a published bundle would be, with a revision stamped."""
    bundle = compile_dir(write_policy(folder, rules, base_url=base_url))
    assert isinstance(bundle, Bundle), bundle
    return msgspec.structs.replace(bundle, revision=revision)


def context(
    bundle: CompiledBundle,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    route: Route = CHAT,
    path: str = "/v1/chat/completions",
) -> RequestContext:
    request = make_mocked_request("POST", path, headers=headers or {})
    ctx = RequestContext(request, route, "rid-" + str(time.monotonic_ns()))
    ctx.body = msgspec.json.encode(body)
    ctx.bundle = bundle
    return ctx


def run(ctx: RequestContext, stages: Iterable[Stage]) -> Reject | Violation | None:
    """Run stages in order, stopping at the first result, without applying any mode."""
    for stage in stages:
        result = stage(ctx)
        if result is not None:
            return result
    return None


def routed(
    bundle: CompiledBundle,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    workload: Identity = WORKLOAD,
    route: Route = CHAT,
) -> RequestContext:
    """A context through parse, identify, models and route: ready for caps and limits."""
    ctx = context(bundle, body, headers, route=route)
    result = run(ctx, [Parse(), Identify(workload), ModelAccess(), ChooseDeployment()])
    assert result is None, result
    return ctx


def chat(model: str = "gpt-4o-mini", text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


class RunningSidecar:
    def __init__(self, app: web.Application, url: str) -> None:
        self.app = app
        self.url = url

    @property
    def state(self) -> PolicyState:
        return self.app[STATE]

    async def wait_for_revision(self, revision: int, *, timeout_s: float = 10.0) -> None:
        await wait_until(
            lambda: self.state.active is not None and self.state.active.revision == revision,
            timeout_s=timeout_s,
            what=f"revision {revision} to be active",
        )


@asynccontextmanager
async def running_sidecar(settings: Settings) -> AsyncIterator[RunningSidecar]:
    """The sidecar app on a real port, started and stopped as `sidegate sidecar` does."""
    port = free_port()
    settings = msgspec.structs.replace(settings, host="127.0.0.1", port=port)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield RunningSidecar(app, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def sidecar_settings(state_dir: Path, keys: Keys, nats_url: str | None = None) -> Settings:
    """Short intervals so distribution behaviour shows within a test's time."""
    return Settings(
        nats_url=nats_url or f"nats://127.0.0.1:{free_port()}",  # nothing listens: NATS down
        state_dir=state_dir,
        public_keys=(keys.public,),
        sidecar_id="sidecar-test-1",
        workload=WORKLOAD,
        resync_interval_s=0.3,
        status_interval_s=0.5,
        drain_timeout_s=0.5,
    )


class UsageTap:
    """Usage records as the collector would receive them from the JetStream stream."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    async def handle(self, msg: Msg) -> None:
        self.records.append(record_decoder.decode(msg.data))
