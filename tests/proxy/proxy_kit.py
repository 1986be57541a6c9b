"""A sidecar on a random port with a persisted bundle pointing at a fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from aiohttp import web

from collector.record import UsageRecord, record_decoder
from policyd.bundle import (
    Bundle,
    Deployment,
    Envelope,
    Model,
    ModelAccess,
    Price,
    Provider,
    Rule,
    content_hash,
    encode_bundle,
    encode_envelope,
)
from sidecar.app import EMITTER, create_app
from sidecar.settings import Settings
from sidegate.natsd import free_port

PRICE = Price(input_per_mtok="0.15", output_per_mtok="0.60")


def bundle_for(upstream_url: str, *, first_byte_timeout_ms: int = 60_000) -> Bundle:
    provider = Provider(
        kind="openai_compatible",
        base_url=f"{upstream_url}/v1",
        first_byte_timeout_ms=first_byte_timeout_ms,
    )
    chat = Model(deployments=(Deployment(provider="fake", model="gpt-4o-mini", price=PRICE),))
    draft = Bundle(
        revision=1,
        content_hash="",
        created_at=0,
        providers={"fake": provider},
        models={
            "gpt-4o-mini": chat,
            "gpt-4o": chat,
            "text-embedding-3-small": Model(
                kind="embedding",
                deployments=(Deployment(provider="fake", model="text-embedding-3-small"),),
            ),
        },
        aliases={"fast": "gpt-4o-mini"},
        rules=(Rule(name="default", models=ModelAccess(deny=("gpt-4o",))),),
    )
    return msgspec.structs.replace(draft, content_hash=content_hash(draft))


class RunningSidecar:
    def __init__(self, app: web.Application, url: str, state_dir: Path) -> None:
        self.app, self.url, self.state_dir = app, url, state_dir

    async def records(self) -> list[UsageRecord]:
        """Records emitted so far. NATS is unreachable here, so all of them reach the spool."""
        emitter = self.app[EMITTER]
        for _ in range(100):
            if not emitter.pending:
                break
            await asyncio.sleep(0.01)
        return [record_decoder.decode(data) for _, _, data in emitter.spool.read()]


@asynccontextmanager
async def running_sidecar(
    tmp: Path, bundle: Bundle, *, max_body_bytes: int = 8 * 1024 * 1024
) -> AsyncIterator[RunningSidecar]:
    state = tmp / "sidecar"
    state.mkdir(parents=True)
    (state / "bundle.json").write_bytes(encode_envelope(Envelope(payload=encode_bundle(bundle))))
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens: records spool to disk
        state_dir=state,
        allow_unsigned=True,
        max_body_bytes=max_body_bytes,
        drain_timeout_s=0.1,
    )
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield RunningSidecar(app, f"http://127.0.0.1:{port}", state)
    finally:
        await runner.cleanup()
