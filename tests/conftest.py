"""Shared fixtures: a real nats-server per test, temp folders for DuckDB and bundles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidegate.natsd import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a random port, stopped after the test."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()
