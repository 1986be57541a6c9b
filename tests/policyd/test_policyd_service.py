"""The policyd service on real NATS: re-applies on change and on SIGHUP, keeps good bundles."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from policy_samples import BASE, WriteFiles
from structlog.testing import capture_logs

from policyd.errors import SigningKeyError
from policyd.publisher import PolicyStore
from policyd.service import ServiceOptions, serve
from sidegate.natsd import NatsServer, free_port

Start = Callable[..., Awaitable[None]]


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s}s")
        await asyncio.sleep(0.02)


def at_revision(store: PolicyStore, revision: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        latest = await store.latest()
        return latest is not None and latest.revision == revision

    return check


@pytest.fixture
async def start_service(key_dir: Path, nats_server: NatsServer) -> AsyncIterator[Start]:
    """start_service(policy_dir, poll_interval_s=…, nats_url=…) runs `serve` until the test ends.

    It depends on `nats_server` so the service stops before the server does.
    """
    stop = asyncio.Event()
    tasks: list[asyncio.Task[int]] = []

    async def start(
        policy_dir: Path, *, poll_interval_s: float = 0.05, nats_url: str | None = None
    ) -> None:
        options = ServiceOptions(
            policy_dir=policy_dir,
            nats_url=nats_url or nats_server.url,
            signing_key=key_dir / "signing.key",
            poll_interval_s=poll_interval_s,
        )
        tasks.append(asyncio.create_task(serve(options, stop)))

    yield start
    stop.set()
    for task in tasks:
        assert await asyncio.wait_for(task, 10) == 0


async def test_service_publishes_on_start_and_again_when_a_file_changes(
    start_service: Start, store: PolicyStore, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    await start_service(folder)
    await eventually(at_revision(store, 1))
    write_files(**{"b.yaml": "aliases: {fast: gpt-4o-mini}\n"})
    await eventually(at_revision(store, 2))


async def test_bad_edit_keeps_the_previous_bundle_and_logs_every_error(
    start_service: Start, store: PolicyStore, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    with capture_logs() as logs:
        await start_service(folder)
        await eventually(at_revision(store, 1))
        bad = "aliases: {fast: gpt-5}\nrules: [{name: default, match: {app: x}}]\n"
        write_files(**{"b.yaml": bad})

        async def invalid_logged() -> bool:
            return any(e["event"] == "policy_invalid" for e in logs)

        await eventually(invalid_logged)
    [event] = [e for e in logs if e["event"] == "policy_invalid"]
    assert event["log_level"] == "error"
    assert event["error_count"] == 2
    assert event["errors"][0] == f"{folder}/b.yaml:1: aliases.fast: unknown model or alias 'gpt-5'"
    assert event["errors"][1].startswith(f"{folder}/b.yaml:2: rules[0].name: duplicate rule name")
    assert [e["revision"] for e in logs if e["event"] == "policy_published"] == [1]
    assert await at_revision(store, 1)()


async def test_sighup_reapplies_without_waiting_for_the_next_poll(
    start_service: Start, store: PolicyStore, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    await start_service(folder, poll_interval_s=3600)
    await eventually(at_revision(store, 1))
    write_files(**{"b.yaml": "aliases: {fast: gpt-4o-mini}\n"})
    await asyncio.sleep(0.2)
    assert await at_revision(store, 1)()
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(at_revision(store, 2))


async def test_configmap_symlink_swap_is_applied(
    start_service: Start, store: PolicyStore, tmp_path: Path
) -> None:
    # The layout the kubelet writes: real files in a timestamped folder, `..data` pointing at
    # it, and top-level symlinks through `..data`; an update swaps `..data` atomically.
    mount = tmp_path / "mount"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "policy.yaml").write_text(BASE)
    os.symlink("..v1", mount / "..data")
    os.symlink("..data/policy.yaml", mount / "policy.yaml")
    await start_service(mount)
    await eventually(at_revision(store, 1))
    (mount / "..v2").mkdir()
    (mount / "..v2" / "policy.yaml").write_text(BASE.replace("tier: cheap", "tier: budget"))
    os.symlink("..v2", mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    await eventually(at_revision(store, 2))


async def test_service_started_before_nats_publishes_once_nats_is_up(
    start_service: Start, write_files: WriteFiles, tmp_path: Path
) -> None:
    port = free_port()
    await start_service(write_files(**{"a.yaml": BASE}), nats_url=f"nats://127.0.0.1:{port}")
    await asyncio.sleep(0.3)
    with NatsServer(tmp_path / "late-nats", port=port) as server:
        import nats

        nc = await nats.connect(server.url)
        try:

            async def published() -> bool:
                try:
                    kv = await nc.jetstream().key_value("sidegate_policy")
                    return (await kv.get("bundle")).revision is not None
                except nats.js.errors.Error:
                    return False

            await eventually(published, timeout_s=15)
        finally:
            await nc.close()


async def test_service_refuses_to_start_without_a_signing_key(
    nats_server: NatsServer, write_files: WriteFiles
) -> None:
    options = ServiceOptions(policy_dir=write_files(**{"a.yaml": BASE}), nats_url=nats_server.url)
    with pytest.raises(SigningKeyError):
        await serve(options, asyncio.Event())


async def test_service_stops_cleanly_while_nats_is_down(
    key_dir: Path, write_files: WriteFiles, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "doomed-nats").start()
    stop = asyncio.Event()
    options = ServiceOptions(
        policy_dir=write_files(**{"a.yaml": BASE}),
        nats_url=server.url,
        signing_key=key_dir / "signing.key",
        poll_interval_s=0.05,
    )
    with capture_logs() as logs:
        task = asyncio.create_task(serve(options, stop))

        async def published() -> bool:
            return any(e["event"] == "policy_published" for e in logs)

        await eventually(published)
        server.stop()
        await asyncio.sleep(0.3)
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0


async def test_change_made_while_nats_is_down_is_published_after_it_returns(
    key_dir: Path, write_files: WriteFiles, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats-restarting").start()
    stop = asyncio.Event()
    folder = write_files(**{"a.yaml": BASE})
    options = ServiceOptions(
        policy_dir=folder,
        nats_url=server.url,
        signing_key=key_dir / "signing.key",
        poll_interval_s=0.05,
    )
    task = asyncio.create_task(serve(options, stop))
    try:
        with capture_logs() as logs:

            def published(revision: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return any(
                        e["event"] == "policy_published" and e["revision"] == revision for e in logs
                    )

                return check

            await eventually(published(1))
            server.stop()
            write_files(**{"b.yaml": "aliases: {fast: gpt-4o-mini}\n"})
            await asyncio.sleep(0.5)
            server.start()
            await eventually(published(2), timeout_s=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        server.stop()
