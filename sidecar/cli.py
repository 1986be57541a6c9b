"""`sidegate sidecar`: run the data plane on loopback beside an app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sidecar",
        help="run the sidecar proxy (configured by SIDEGATE_* environment variables)",
        description="Flags override the SIDEGATE_* environment variables the injector sets.",
    )
    p.add_argument("--listen", help="host:port (default 127.0.0.1:4000, SIDEGATE_LISTEN)")
    p.add_argument(
        "--admin-listen",
        help="host:port for /healthz, /readyz and /metrics only, e.g. 0.0.0.0:4001 "
        "(default off, SIDEGATE_ADMIN_LISTEN)",
    )
    p.add_argument("--nats-url", help="NATS server (SIDEGATE_NATS_URL)")
    p.add_argument("--state-dir", type=Path, help="persisted bundle and usage spool")
    p.add_argument("--public-key", action="append", default=[], help="base64 Ed25519 key")
    p.add_argument("--allow-unsigned", action="store_true", help="accept unsigned bundles (dev)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msgspec
    from aiohttp import web

    from sidecar import settings as settings_mod
    from sidecar import tracing
    from sidecar.app import create_app
    from sidegate import logs

    env = dict(os.environ)
    if args.listen:
        env["SIDEGATE_LISTEN"] = args.listen
    if args.admin_listen:
        env["SIDEGATE_ADMIN_LISTEN"] = args.admin_listen
    settings = settings_mod.from_env(env)
    overrides: dict[str, object] = {}
    if args.nats_url:
        overrides["nats_url"] = args.nats_url
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    if args.public_key:
        overrides["public_keys"] = (*settings.public_keys, *args.public_key)
    if args.allow_unsigned:
        overrides["allow_unsigned"] = True
    settings = msgspec.structs.replace(settings, **overrides)
    logs.configure(level=args.log_level)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    import asyncio

    # run_app makes a plain asyncio loop unless handed one: pass uvloop's explicitly.
    loop = (loop_factory or asyncio.new_event_loop)()
    asyncio.set_event_loop(loop)
    workload = settings.workload
    resource = {
        "service.instance.id": settings.sidecar_id,
        "k8s.namespace.name": workload.namespace,
        "k8s.pod.name": workload.pod,
        "sidegate.app": workload.app,
    }
    spans = tracing.from_environment(env, resource={k: v for k, v in resource.items() if v})
    web.run_app(
        create_app(settings, spans=spans),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=settings.drain_timeout_s,
        loop=loop,
    )
    return 0
