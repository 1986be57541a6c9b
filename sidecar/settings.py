"""Sidecar settings: read once at start from flags and the container's environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import msgspec

from policyd.status import HEARTBEAT_S
from sidecar.context import Identity


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 4000
    # host:port serving only /healthz, /readyz and /metrics to the kubelet and Prometheus,
    # which dial the pod IP; "" (the default) serves them on the loopback port alone.
    admin_listen: str = ""
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
    status_interval_s: float = HEARTBEAT_S  # convergence heartbeat into the status bucket
    # Rate-limit buckets kept in memory; idle full buckets go first, then the least recent.
    rate_limit_max_buckets: int = 100_000

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
        admin_listen=env.get("SIDEGATE_ADMIN_LISTEN", ""),
        nats_url=env.get("SIDEGATE_NATS_URL", "nats://127.0.0.1:4222"),
        state_dir=Path(env.get("SIDEGATE_STATE_DIR", ".sidegate/sidecar")),
        public_keys=_public_keys(env),
        allow_unsigned=env.get("SIDEGATE_ALLOW_UNSIGNED", "") in ("1", "true", "yes"),
        max_body_bytes=int(env.get("SIDEGATE_MAX_BODY_BYTES", 8 * 1024 * 1024)),
        sidecar_id=env.get("SIDEGATE_SIDECAR_ID") or f"{pod or socket.gethostname()}-{os.getpid()}",
        resync_interval_s=float(env.get("SIDEGATE_RESYNC_INTERVAL_S", 30.0)),
        status_interval_s=float(env.get("SIDEGATE_STATUS_INTERVAL_S", HEARTBEAT_S)),
        rate_limit_max_buckets=int(env.get("SIDEGATE_RATE_LIMIT_MAX_BUCKETS", 100_000)),
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
