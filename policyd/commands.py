"""The bodies of `sidegate policy …` and `sidegate policyd`: calls, output and exit codes.

Results go to stdout (JSON or tables a script can read), problems to stderr. Exit codes: 0 done
(including "unchanged"), 1 failed (invalid policy, unknown revision, NATS unreachable, key
trouble), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import nats.errors

from policyd.compiler import compile_dir
from policyd.errors import PolicydError
from policyd.problems import Invalid
from policyd.publisher import (
    Convergence,
    NotFound,
    PolicyStore,
    Published,
    StoredBundle,
    connect,
    pretty,
)
from policyd.signing import generate_keypair, load_signing_key

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Work = Callable[[PolicyStore], Awaitable[int]]


def run(command: str, args: argparse.Namespace) -> int:
    """Run one command; the one place its expected failures become messages and exit codes."""
    try:
        return _COMMANDS[command](args)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        # Boundary: a NATS server that is down, slow or refusing, or a file we cannot read
        # or write. The user needs the reason, not a traceback.
        target = f" (NATS at {args.nats_url})" if hasattr(args, "nats_url") else ""
        _err(f"{_name(command)}{target}: {exc or type(exc).__name__}")
    except PolicydError as exc:
        _err(f"{_name(command)}: {exc}")
    return EXIT_FAILED


def _name(command: str) -> str:
    return "sidegate policyd" if command == "policyd" else f"sidegate policy {command}"


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _out(message: str) -> None:
    print(message)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(invalid: Invalid) -> int:
    _err(invalid.render())
    _err(f"{len(invalid.problems)} problem(s); nothing was published")
    return EXIT_FAILED


def _with_store(args: argparse.Namespace, work: Work, *, publishing: bool = False) -> int:
    signing_key = None
    insecure = False
    if publishing:
        insecure = bool(args.insecure_unsigned)
        if args.signing_key is None and not insecure:
            _err("a signing key is required: --signing-key PATH (or --insecure-unsigned)")
            return EXIT_USAGE
        signing_key = load_signing_key(args.signing_key) if args.signing_key else None

    async def main() -> int:
        nc = await connect(args.nats_url, persistent=False, name="sidegate-policy")
        try:
            store = await PolicyStore.open(
                nc.jetstream(), signing_key=signing_key, insecure_unsigned=insecure
            )
            return await work(store)
        finally:
            await nc.close()

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    compiled = compile_dir(args.dir)
    if isinstance(compiled, Invalid):
        return _invalid(compiled)
    _out(
        f"ok: {args.dir}: {len(compiled.providers)} providers, {len(compiled.models)} models, "
        f"{len(compiled.aliases)} aliases, {len(compiled.rules)} rules, "
        f"{len(compiled.virtual_keys)} virtual keys; content_hash {compiled.content_hash}"
    )
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    async def work(store: PolicyStore) -> int:
        result = await store.publish(args.dir)
        if isinstance(result, Invalid):
            return _invalid(result)
        state = "published" if isinstance(result, Published) else "unchanged"
        _out(f"{state} revision {result.revision} content_hash {result.content_hash}")
        return EXIT_OK

    return _with_store(args, work, publishing=True)


def _show(args: argparse.Namespace) -> int:
    async def work(store: PolicyStore) -> int:
        if args.revision is None:
            stored = await store.latest()
            missing = "no bundle has been published"
        else:
            stored = await store.find(args.revision)
            missing = f"revision {args.revision} is not in the history"
        if stored is None:
            _err(missing)
            return EXIT_FAILED
        sys.stdout.write(pretty(stored.envelope.payload))
        return EXIT_OK

    return _with_store(args, work)


def _history(args: argparse.Namespace) -> int:
    async def work(store: PolicyStore) -> int:
        entries = await store.history()
        if args.json:
            _out(msgspec.json.encode([_history_row(s) for s in entries]).decode())
            return EXIT_OK
        _out(f"{'REVISION':>8}  {'CREATED':20}  {'CONTENT_HASH':12}  {'KEY_ID':16}  KV_SEQ")
        for s in entries:
            key = s.envelope.key_id or "unsigned"
            _out(
                f"{s.revision:>8}  {_time(s.created_at):20}  {s.content_hash[:12]:12}  "
                f"{key:16}  {s.kv_revision}"
            )
        return EXIT_OK

    return _with_store(args, work)


def _history_row(s: StoredBundle) -> dict[str, object]:
    return {
        "revision": s.revision,
        "content_hash": s.content_hash,
        "created_at": s.created_at,
        "key_id": s.envelope.key_id,
        "kv_revision": s.kv_revision,
    }


def _rollback(args: argparse.Namespace) -> int:
    async def work(store: PolicyStore) -> int:
        result = await store.rollback(args.to_revision)
        if isinstance(result, NotFound):
            _err(f"revision {result.revision} is not in the history")
            return EXIT_FAILED
        if isinstance(result, Published):
            _out(
                f"published revision {result.revision} with the content of revision "
                f"{args.to_revision}; content_hash {result.content_hash}"
            )
        else:
            _out(f"unchanged revision {result.revision} already has that content")
        return EXIT_OK

    return _with_store(args, work, publishing=True)


def _diff(args: argparse.Namespace) -> int:
    async def work(store: PolicyStore) -> int:
        result = await store.diff(args.rev_a, args.rev_b)
        if isinstance(result, NotFound):
            _err(f"revision {result.revision} is not in the history")
            return EXIT_FAILED
        sys.stdout.write(result)
        return EXIT_OK

    return _with_store(args, work)


def _status(args: argparse.Namespace) -> int:
    async def work(store: PolicyStore) -> int:
        report = await store.status(stale_after_s=args.stale_after)
        if args.json:
            _out(msgspec.json.encode(report).decode())
        else:
            _print_status(report)
        return EXIT_OK

    return _with_store(args, work)


def _print_status(report: Convergence) -> None:
    if report.latest_revision is None:
        _out("no bundle has been published")
    else:
        _out(f"latest revision {report.latest_revision} content_hash {report.latest_hash}")
    current = sum(1 for v in report.sidecars if v.current and not v.stale)
    _out(f"{current}/{len(report.sidecars)} sidecars run the latest revision")
    if not report.sidecars:
        return
    _out(f"{'SIDECAR':30}  {'NAMESPACE':16}  {'APP':16}  {'REVISION':>8}  {'SEEN':20}  STATE")
    for view in report.sidecars:
        s = view.status
        state = "stale" if view.stale else ("current" if view.current else "behind")
        if s.rejected_revision is not None:
            state += f"; rejected {s.rejected_revision}: {s.rejected_reason}"
        _out(
            f"{s.sidecar_id:30}  {s.namespace:16}  {s.app:16}  {s.revision:>8}  "
            f"{_time(s.seen_at_ms):20}  {state}"
        )


def _keygen(args: argparse.Namespace) -> int:
    paths = generate_keypair(args.out)
    _out(f"wrote {paths.signing_key} (secret: give it to policyd only, mode 0600)")
    _out(f"wrote {paths.public_key} (mount it in every sidecar)")
    _out(f"key id {paths.key_id}")
    return EXIT_OK


def _policyd(args: argparse.Namespace) -> int:
    from policyd.service import ServiceOptions
    from policyd.service import run as run_service

    if args.signing_key is None and not args.insecure_unsigned:
        _err("a signing key is required: --signing-key PATH (or --insecure-unsigned)")
        return EXIT_USAGE
    options = ServiceOptions(
        policy_dir=args.policy_dir,
        nats_url=args.nats_url,
        signing_key=args.signing_key,
        insecure_unsigned=args.insecure_unsigned,
        poll_interval_s=args.poll_interval,
        webhook_host=args.webhook_host,
        webhook_port=args.webhook_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        injector_config=args.injector_config,
        metrics_port=args.metrics_port,
    )
    return run_service(options)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _validate,
    "apply": _apply,
    "show": _show,
    "history": _history,
    "rollback": _rollback,
    "diff": _diff,
    "status": _status,
    "keygen": _keygen,
    "policyd": _policyd,
}
