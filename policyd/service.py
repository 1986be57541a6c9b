"""The policyd service: publish the policy folder on start, then on every change and on SIGHUP.

Changes are found by polling a hash of the files' bytes rather than watching inotify events:
a Kubernetes ConfigMap update swaps a `..data` symlink, which many watchers miss, and a hash
also ignores touches that change nothing. A folder that fails validation is logged with every
problem and not published, so the previous bundle stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
import structlog
from aiohttp import web
from nacl.signing import SigningKey
from nats.aio.client import Client as NATS

from policyd.compiler import compile_dir
from policyd.errors import PolicydError, SigningKeyError
from policyd.metrics import PolicydMetrics, start_metrics_server
from policyd.problems import Invalid
from policyd.publisher import PolicyStore, Published, Unchanged, connect
from policyd.quota import serve_leases
from policyd.signing import load_signing_key
from policyd.source import fingerprint
from sidegate.logs import configure as configure_logging

log = structlog.get_logger("sidegate.policyd")

_RETRY_S = 1.0

T = TypeVar("T")


class ServiceOptions(msgspec.Struct, frozen=True, kw_only=True):
    policy_dir: Path
    nats_url: str
    signing_key: Path | None = None
    insecure_unsigned: bool = False
    poll_interval_s: float = 1.0
    webhook_host: str = "0.0.0.0"  # the API server reaches the webhook through a Service
    webhook_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    injector_config: str | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = None  # plain-HTTP /metrics; the webhook port serves it as well
    status_refresh_s: float = 15.0  # how often sidecar convergence is re-read for /metrics
    budget_lease_ttl_s: float = 60.0  # how long a budget slice lives without renewal
    budget_reclaim_grace_s: float = 60.0  # past its expiry, before a silent slice is reclaimed


class PolicyApplier:
    """Re-applies the folder whenever its bytes change or a reload is asked for."""

    def __init__(
        self,
        store: PolicyStore,
        policy_dir: Path,
        *,
        poll_interval_s: float,
        metrics: PolicydMetrics | None = None,
    ) -> None:
        self._store = store
        self._dir = policy_dir
        self._poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._applied: str | None = None  # fingerprint of the folder last handled
        self._reload = asyncio.Event()

    def reload(self) -> None:
        """Re-apply now, changed or not (SIGHUP)."""
        self._reload.set()

    async def apply(self) -> Published | Unchanged | Invalid | None:
        """Compile and publish once; None when NATS failed and the next tick should retry."""
        started = time.perf_counter()
        result = await self._apply()
        if self._metrics is not None:
            self._metrics.applied(result, time.perf_counter() - started)
        return result

    async def _apply(self) -> Published | Unchanged | Invalid | None:
        seen = await asyncio.to_thread(fingerprint, self._dir)
        compiled = await asyncio.to_thread(compile_dir, self._dir)
        if isinstance(compiled, Invalid):
            self._applied = seen
            log.error(
                "policy_invalid",
                policy_dir=str(self._dir),
                error_count=len(compiled.problems),
                errors=[str(p) for p in compiled.problems],
            )
            return compiled
        try:
            result = await self._store.publish_bundle(compiled)
        except (nats.errors.Error, PolicydError) as exc:
            # Boundary: NATS is down or the CAS kept losing. Leaving the fingerprint unapplied
            # makes the next tick try again; the sidecars keep their bundle meanwhile.
            log.warning("policy_publish_failed", error=str(exc) or type(exc).__name__)
            return None
        self._applied = seen
        if isinstance(result, Published):
            log.info(
                "policy_published",
                revision=result.revision,
                content_hash=result.content_hash,
                kv_revision=result.kv_revision,
            )
        else:
            log.info("policy_unchanged", revision=result.revision, content_hash=result.content_hash)
        return result

    async def run(self, stop: asyncio.Event) -> None:
        await self.apply()
        while not stop.is_set():
            await _wait_any(stop, self._reload, timeout_s=self._poll_interval_s)
            if stop.is_set():
                return
            forced = self._reload.is_set()
            self._reload.clear()
            if forced or await asyncio.to_thread(fingerprint, self._dir) != self._applied:
                await self.apply()


async def serve(options: ServiceOptions, stop: asyncio.Event) -> int:
    """Run until `stop` is set: the webhook (if configured) and the policy applier."""
    signing_key = load_signing_key(options.signing_key) if options.signing_key else None
    if signing_key is None and not options.insecure_unsigned:
        # Refused at start, not at the first publish: an unsigned policyd would otherwise run
        # "healthy" while every sidecar rejects what it writes.
        raise SigningKeyError(None, "a signing key is required (or --insecure-unsigned)")
    metrics = PolicydMetrics()
    runners: list[web.AppRunner] = []
    try:
        if options.webhook_port is not None:
            runners.append(await _start_webhook(options, options.webhook_port, metrics))
        if options.metrics_port is not None:
            host, port = options.metrics_host, options.metrics_port
            runners.append(await start_metrics_server(host, port, metrics))
            log.info("metrics_listening", host=host, port=port)
        return await _serve(options, stop, signing_key, metrics)
    finally:
        for runner in runners:
            await runner.cleanup()


async def _serve(
    options: ServiceOptions,
    stop: asyncio.Event,
    signing_key: SigningKey | None,
    metrics: PolicydMetrics,
) -> int:
    """Connect, open the store and apply the folder until `stop` is set."""
    nc = await _unless_stopped(connect(options.nats_url, persistent=True), stop)
    if nc is None:
        return 0
    try:
        store = await _open_store(nc, options, signing_key, stop)
        if store is None:
            return 0
        applier = PolicyApplier(
            store, options.policy_dir, poll_interval_s=options.poll_interval_s, metrics=metrics
        )
        follower = asyncio.create_task(
            metrics.follow(store, interval_s=options.status_refresh_s), name="policy-metrics"
        )
        leases = asyncio.create_task(
            serve_leases(
                nc, lease_ttl_s=options.budget_lease_ttl_s,
                reclaim_grace_s=options.budget_reclaim_grace_s, registry=metrics.registry,
            ),
            name="budget-leases",
        )  # fmt: skip
        try:
            with _signal(signal.SIGHUP, applier.reload):
                await applier.run(stop)
        finally:
            for task in (follower, leases):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await nc.close()
    return 0


async def _open_store(
    nc: NATS, options: ServiceOptions, signing_key: SigningKey | None, stop: asyncio.Event
) -> PolicyStore | None:
    js = nc.jetstream()
    while not stop.is_set():
        try:
            return await PolicyStore.open(
                js, signing_key=signing_key, insecure_unsigned=options.insecure_unsigned
            )
        except nats.errors.Error as exc:
            # Boundary: JetStream may still be starting or electing a leader; keep trying.
            log.warning("policy_bucket_unavailable", error=str(exc) or type(exc).__name__)
            await _wait_any(stop, timeout_s=_RETRY_S)
    return None


async def _start_webhook(
    options: ServiceOptions, port: int, metrics: PolicydMetrics
) -> web.AppRunner:
    # Imported here: the webhook pulls in TLS and metrics code a policy-only policyd skips.
    from policyd.webhook import load_injector_config, start_webhook

    if not (options.tls_cert and options.tls_key and options.injector_config):
        raise PolicydError("--webhook-port needs --tls-cert, --tls-key and --injector-config")
    runner = await start_webhook(
        host=options.webhook_host,
        port=port,
        cert_file=options.tls_cert,
        key_file=options.tls_key,
        config=load_injector_config(options.injector_config),
        metrics=metrics.registry,
    )
    log.info("webhook_listening", host=options.webhook_host, port=options.webhook_port)
    return runner


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None (with `work` cancelled) if `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _wait_any(*events: asyncio.Event, timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@contextlib.contextmanager
def _signal(signum: signal.Signals, handler: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signum, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        # No signals off the main thread or on Windows; polling still picks up every change.
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signum)


def run(options: ServiceOptions) -> int:
    """The `sidegate policyd` entry point: SIGTERM and SIGINT stop it cleanly."""
    configure_logging()  # JSON lines unless on a terminal, shared by every sidegate process

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await serve(options, stop)

    return asyncio.run(main())
