"""Sidecar settings: read once at start from flags and the container's environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import msgspec

from sidecar.context import Identity


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 4000
    nats_url: str = "nats://127.0.0.1:4222"
    state_dir: Path = Path(".sidegate/sidecar")
    public_keys: tuple[str, ...] = ()  # base64 Ed25519 public keys; several allow rotation
    allow_unsigned: bool = False  # local development only: accept bundles without signature
    max_body_bytes: int = 8 * 1024 * 1024
    sidecar_id: str = ""
    workload: Identity = msgspec.field(default_factory=Identity)
    spool_max_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 20.0
    resync_interval_s: float = 30.0  # the slow re-read that covers a lagging watch

    @property
    def bundle_path(self) -> Path:
        return self.state_dir / "bundle.json"

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "usage-spool.jsonl"


def _public_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys = [k.strip() for k in env.get("SIDEGATE_PUBLIC_KEYS", "").split(",") if k.strip()]
    path = env.get("SIDEGATE_PUBLIC_KEYS_FILE")
    if path:
        keys += [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return tuple(keys)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from SIDEGATE_* variables, as the injector sets them in a pod."""
    env = os.environ if env is None else env
    listen = env.get("SIDEGATE_LISTEN", "127.0.0.1:4000")
    host, _, port = listen.rpartition(":")
    pod = env.get("SIDEGATE_POD", "")
    namespace = env.get("SIDEGATE_NAMESPACE", "")
    return Settings(
        host=host or "127.0.0.1",
        port=int(port),
        nats_url=env.get("SIDEGATE_NATS_URL", "nats://127.0.0.1:4222"),
        state_dir=Path(env.get("SIDEGATE_STATE_DIR", ".sidegate/sidecar")),
        public_keys=_public_keys(env),
        allow_unsigned=env.get("SIDEGATE_ALLOW_UNSIGNED", "") in ("1", "true", "yes"),
        max_body_bytes=int(env.get("SIDEGATE_MAX_BODY_BYTES", 8 * 1024 * 1024)),
        sidecar_id=env.get("SIDEGATE_SIDECAR_ID") or f"{pod or socket.gethostname()}-{os.getpid()}",
        workload=Identity(
            tenant=env.get("SIDEGATE_TENANT", namespace),
            app=env.get("SIDEGATE_APP", ""),
            namespace=namespace,
            service_account=env.get("SIDEGATE_SERVICE_ACCOUNT", ""),
            pod=pod,
            environment=env.get("SIDEGATE_ENVIRONMENT", ""),
            data_mode=env.get("SIDEGATE_DATA_MODE", "real"),
        ),
    )
