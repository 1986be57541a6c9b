"""Fixtures for the control-plane tests: policy folders on disk, keys, a store on real NATS."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nacl.signing import SigningKey
from nats.aio.client import Client as NATS
from policy_samples import WriteFiles

from policyd.publisher import PolicyStore
from policyd.signing import generate_keypair, load_signing_key
from sidegate.natsd import NatsServer


@pytest.fixture
def write_files(tmp_path: Path) -> WriteFiles:
    """write_files(**{"a.yaml": text}) → the policy folder, texts dedented."""
    folder = tmp_path / "policies"

    def write(**files: str) -> Path:
        folder.mkdir(exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))
        return folder

    return write


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def signing_key(key_dir: Path) -> SigningKey:
    return load_signing_key(key_dir / "signing.key")


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def store(nc: NATS, signing_key: SigningKey) -> PolicyStore:
    return await PolicyStore.open(nc.jetstream(), signing_key=signing_key)
