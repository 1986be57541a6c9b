"""Fixtures for the Kubernetes tests: TLS material and live webhooks on random ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from k8s_admission import Webhook, injector_config
from k8s_tls import Tls

from policyd.webhook import InjectorConfig, start_webhook


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return Tls(tmp_path / "tls")


@pytest.fixture
async def start(tls: Tls) -> AsyncIterator[Callable[..., Any]]:
    """Start webhooks over TLS on random ports; every one is stopped after the test."""
    runners: list[Any] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context()))

    async def _start(config: InjectorConfig | None = None, **options: Any) -> Webhook:
        config = config or injector_config()
        runner = await start_webhook(
            host="127.0.0.1",
            port=0,
            cert_file=str(tls.cert_file),
            key_file=str(tls.key_file),
            config=config,
            **options,
        )
        runners.append(runner)
        port = runner.addresses[0][1]
        return Webhook(f"https://127.0.0.1:{port}", session, config)

    try:
        yield _start
    finally:
        await session.close()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def webhook(start: Callable[..., Any]) -> Webhook:
    hook: Webhook = await start()
    return hook
