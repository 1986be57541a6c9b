"""Helpers for the budget tests: policies, request contexts, a clock, policyd and sidecars running.

A unique module name (no package here), like tests/sidecar/sidecar_kit.py, whose patterns it
follows for the parts the budget tests need.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from openai.types.chat import ChatCompletionMessageParam

from collector.record import UsageRecord, record_decoder
from policyd.bundle import Bundle
from policyd.compiler import compile_dir
from policyd.quota_wire import LeaseReply
from policyd.service import ServiceOptions, serve
from policyd.signing import generate_keypair
from sidecar.app import create_app
from sidecar.budgets import Account, BudgetLedger
from sidecar.context import Identity, RequestContext
from sidecar.policy import CompiledBundle
from sidecar.routes import CHAT
from sidecar.settings import Settings
from sidecar.stages.access import ModelAccess
from sidecar.stages.caps import Caps
from sidecar.stages.identify import Identify
from sidecar.stages.parse import Parse
from sidecar.stages.route import ChooseDeployment
from sidegate.natsd import free_port

WORKLOAD = Identity(tenant="acme", app="billing", namespace="acme", environment="prod")
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the team"}]
# 2026-11-22T12:00:00Z: well inside a day and a month, so rollovers happen only on purpose.
NOON = 1_795_348_800.0

# gpt-4o: $2.50 in and $10 out per million tokens, so a request of a dozen prompt tokens
# and max_tokens 50 reserves about $0.0005 and, at the fake provider's 20 output tokens,
# costs about $0.00023.
CATALOGUE = """
providers:
  fake:
    kind: openai
    base_url: {base_url}
models:
  gpt-4o:
    deployments: [{{provider: fake, model: gpt-4o}}]
  unpriced:
    deployments: [{{provider: fake, model: mystery-model-x}}]
prices:
  gpt-4o: {{input_per_mtok: "2.50", output_per_mtok: "10.00"}}
"""


Connect = Callable[[], Awaitable[NATS]]


class UsageTap:
    """Usage records as the collector would receive them from the JetStream stream."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    async def handle(self, msg: Msg) -> None:
        self.records.append(record_decoder.decode(msg.data))


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_policy(folder: Path, rules: str, *, base_url: str = "http://fake.invalid/v1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalogue.yaml").write_text(CATALOGUE.format(base_url=base_url))
    (folder / "rules.yaml").write_text(textwrap.dedent(rules).lstrip("\n"))
    return folder


def compiled(
    folder: Path, rules: str, *, base_url: str = "http://fake.invalid/v1"
) -> CompiledBundle:
    bundle = compile_dir(write_policy(folder, rules, base_url=base_url))
    assert isinstance(bundle, Bundle), bundle
    return CompiledBundle(msgspec.structs.replace(bundle, revision=1))


def routed(
    bundle: CompiledBundle, body: dict[str, Any], headers: dict[str, str] | None = None
) -> RequestContext:
    """A context through every stage before `budget`: ready for the budget stage."""
    request = make_mocked_request("POST", "/v1/chat/completions", headers=headers or {})
    ctx = RequestContext(request, CHAT, "rid-" + str(time.monotonic_ns()))
    ctx.body = msgspec.json.encode(body)
    ctx.bundle = bundle
    for stage in (Parse(), Identify(WORKLOAD), ModelAccess(), ChooseDeployment(), Caps()):
        assert stage(ctx) is None
    return ctx


def chat(model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, **extra}


def grant(ledger: BudgetLedger, account: Account, amount: str, *, ttl_s: float = 60) -> None:
    """Answer the account's next lease request as an owner with `amount` left would."""
    now = ledger.now()
    request = ledger.request(account, now)
    given = min(request.want_usd, Decimal(amount))
    reply = LeaseReply(
        granted_usd=request.granted_usd + given,
        grant_usd=given,
        remaining_usd=Decimal(amount) - given,
        ttl_ms=round(ttl_s * 1000),
    )
    ledger.answered(account, request, reply, now)


def fail(ledger: BudgetLedger, account: Account) -> None:
    """The account's next lease request gets no answer."""
    request = ledger.request(account, ledger.now())
    ledger.answered(account, request, None, ledger.now())


def policyd_options(folder: Path, nats_url: str, **extra: Any) -> ServiceOptions:
    keys = generate_keypair(folder.parent / "keys")
    return ServiceOptions(
        policy_dir=folder, nats_url=nats_url, signing_key=keys.signing_key,
        poll_interval_s=0.05, status_refresh_s=0.5, **extra,
    )  # fmt: skip


@asynccontextmanager
async def running_policyd(options: ServiceOptions) -> AsyncIterator[None]:
    """`sidegate policyd` in this process: publishes the folder and serves budget leases."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(options, stop))
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0


def sidecar_settings(state_dir: Path, public_key: str, nats_url: str, sidecar_id: str) -> Settings:
    return Settings(
        host="127.0.0.1", port=free_port(), nats_url=nats_url, state_dir=state_dir,
        public_keys=(public_key,), sidecar_id=sidecar_id, workload=WORKLOAD,
        resync_interval_s=0.3, status_interval_s=0.5, drain_timeout_s=2.0,
    )  # fmt: skip


class RunningSidecar:
    def __init__(self, app: web.Application, url: str) -> None:
        self.app = app
        self.url = url


@asynccontextmanager
async def running_sidecar(settings: Settings) -> AsyncIterator[RunningSidecar]:
    """The sidecar app on a real port, started and stopped as `sidegate sidecar` does."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        yield RunningSidecar(app, f"http://{settings.host}:{settings.port}")
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
