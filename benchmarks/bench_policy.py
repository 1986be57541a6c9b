"""Policy plane: apply-to-enforcement propagation across many sidecars, and per-request policy CPU.

Propagation. A real nats-server and policyd's own PolicyStore; each round changes the policy
folder and runs what `sidegate policy apply` runs (compile, sign, compare-and-swap publish),
timing from its start until every sidecar has verified and activated the new revision.

- `--watchers N` (default 120): lightweight watchers, each with its own NATS connection and
  the sidecar's own PolicyWatcher, Verifier and CompiledBundle code, spread over `--processes`
  worker processes. Activation time is taken in the watcher when the bundle becomes active.
- `--sidecars N` (default 0): real `sidegate sidecar` processes, each reporting its active
  revision into the status bucket; the time is that status write's `seen_at_ms`.

Pipeline CPU. The stage pipeline alone (no HTTP, no upstream) per request, in CPU time:
every policy type on (virtual key, required metadata, allow/deny with tiers, caps with cost,
four rate-limit buckets with reservation and settlement) against the minimal pipeline (parse,
identify, model lookup, route) as the baseline, with a short and a long prompt.

Run: `python benchmarks/bench_policy.py` (add `--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import nats
from aiohttp.test_utils import make_mocked_request
from nacl.signing import SigningKey

from policyd.bundle import STATUS_BUCKET, Bundle
from policyd.compiler import compile_dir
from policyd.publisher import PolicyStore, Published
from policyd.status import decode_status
from sidecar.bundles import BundleRejected, PolicyState, PolicyWatcher, Verifier
from sidecar.context import Identity, RequestContext
from sidecar.limits import Limiter
from sidecar.natslink import NatsLink
from sidecar.pipeline import Pipeline, Stage
from sidecar.policy import CompiledBundle
from sidecar.routes import CHAT
from sidecar.settings import Settings
from sidecar.stages.access import ModelAccess
from sidecar.stages.identify import Identify
from sidecar.stages.parse import Parse
from sidecar.stages.route import ChooseDeployment
from sidegate import logs
from sidegate.natsd import NatsServer, free_port

HERE = Path(__file__).resolve().parent
KEY = "sk-bench-team"
WORKLOAD = Identity(tenant="acme", app="billing", namespace="acme", environment="prod")

CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  gpt-4o-mini: {tier: cheap, deployments: [{provider: fake, model: gpt-4o-mini}]}
  small-2: {tier: cheap, deployments: [{provider: fake, model: small-2}]}
  gpt-4o: {tier: premium, deployments: [{provider: fake, model: gpt-4o}]}
aliases: {fast: gpt-4o-mini}
prices:
  gpt-4o-mini: {input_per_mtok: "0.15", output_per_mtok: "0.60"}
  small-2: {input_per_mtok: "0.10", output_per_mtok: "0.40"}
  gpt-4o: {input_per_mtok: "2.50", output_per_mtok: "10.00"}
"""

# Every policy type on, with limits high enough that the timed loop is never denied.
FULL_RULES = f"""
virtual_keys:
  - {{id: team, tenant: acme, user: ann, key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}
rules:
  - name: everyone
    auth: {{require_key: true}}
    required_metadata: {{fields: [endpoint, user], environments: [prod]}}
    models: {{allow: ["tier:cheap", fast], deny: [gpt-4o]}}
    caps: {{max_tokens: 256, max_input_tokens: 8000, max_cost_usd: "1.00", deadline_ms: 30000}}
    rate_limits:
      - {{scope: tenant, rpm: 1000000000, tpm: 1000000000}}
      - {{scope: user, rpm: 1000000000, tpm: 1000000000}}
      - {{scope: key, rpm: 1000000000, burst: 2}}
  - name: acme-summaries
    match: {{tenant: acme, endpoint: summarize}}
    caps: {{max_tokens: 256, max_input_tokens: 8000, max_cost_usd: "0.50", deadline_ms: 20000}}
"""
MINIMAL_RULES = "rules: []\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--watchers", type=int, default=None, help="lightweight watchers (120)")
    p.add_argument("--processes", type=int, default=4, help="worker processes for them (4)")
    p.add_argument("--sidecars", type=int, default=0, help="real sidecar processes (0)")
    p.add_argument("--rounds", type=int, default=20, help="policy changes per mode (20)")
    p.add_argument("--pause", type=float, default=0.3, help="seconds between changes (0.3)")
    p.add_argument("--requests", type=int, default=20_000, help="pipeline iterations (20000)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run; numbers are rough")
    p.add_argument("--out", type=Path, default=None, help="JSON copy (default results/)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--nats-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--public-key", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.processes, args.rounds, args.requests = 2, 5, 2000
    if args.watchers is None:
        args.watchers = 100 if args.quick else 120
    return args


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def write_policy(folder: Path, rules: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalogue.yaml").write_text(CATALOGUE)
    (folder / "rules.yaml").write_text(rules)
    return folder


def compiled(rules: str) -> CompiledBundle:
    with tempfile.TemporaryDirectory() as tmp:
        bundle = compile_dir(write_policy(Path(tmp), rules))
    assert isinstance(bundle, Bundle), bundle
    return CompiledBundle(msgspec.structs.replace(bundle, revision=1))


# ---------------------------------------------------------------------------------------------
# Propagation: the worker side (one process, many watchers)
# ---------------------------------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """Run `--count` watchers; print `ACT <revision> <unix ns>` per activation; stop at EOF."""
    logs.configure(json=True, level="error")
    links: list[NatsLink] = []
    watchers: list[PolicyWatcher] = []
    reporters: list[asyncio.Task[None]] = []

    async def report(queue: asyncio.Queue[CompiledBundle | BundleRejected]) -> None:
        while True:
            event = await queue.get()
            if isinstance(event, CompiledBundle):
                sys.stdout.write(f"ACT {event.revision} {time.time_ns()}\n")
                sys.stdout.flush()

    for _ in range(args.count):
        state = PolicyState(Verifier((args.public_key,)), None)
        queue: asyncio.Queue[CompiledBundle | BundleRejected] = asyncio.Queue()
        state.listeners.append(queue)
        link = NatsLink(args.nats_url)
        # Only the watch is measured: the slow re-read would otherwise mask a lagging watch.
        watcher = PolicyWatcher(state, link, resync_interval_s=3600)
        link.start()
        watcher.start()
        links.append(link)
        watchers.append(watcher)
        reporters.append(asyncio.create_task(report(queue)))
    await asyncio.to_thread(sys.stdin.read)  # the parent closes stdin to stop us
    for w in watchers:
        await w.stop()
    for r in reporters:
        r.cancel()
    for link in links:
        await link.close()


# ---------------------------------------------------------------------------------------------
# Propagation: the parent side
# ---------------------------------------------------------------------------------------------


class Activations:
    """Arrival times (unix ns) per revision, from whichever observer reports them."""

    def __init__(self) -> None:
        self.at: dict[int, list[int]] = defaultdict(list)
        self.changed = asyncio.Event()

    def add(self, revision: int, at_ns: int) -> None:
        self.at[revision].append(at_ns)
        self.changed.set()

    async def wait_for(self, revision: int, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.at[revision]) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"revision {revision}: {len(self.at[revision])}/{count} activated"
                )
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def read_worker(process: asyncio.subprocess.Process, seen: Activations) -> None:
    assert process.stdout is not None
    async for line in process.stdout:
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"ACT":
            seen.add(int(parts[1]), int(parts[2]))


async def watch_statuses(nc: Any, seen: Activations, stop: asyncio.Event) -> None:
    """Real sidecars report activations into the status bucket; take the first per revision."""
    kv = await nc.jetstream().key_value(STATUS_BUCKET)
    watcher = await kv.watchall(ignore_deletes=True)
    reported: set[tuple[str, int]] = set()
    while not stop.is_set():
        try:
            entry = await watcher.updates(timeout=0.5)
        except nats.errors.TimeoutError:
            continue
        if entry is None or not entry.value:
            continue
        status = decode_status(entry.value)
        key = (status.sidecar_id, status.revision)
        if status.revision and key not in reported:
            reported.add(key)
            seen.add(status.revision, status.seen_at_ms * 1_000_000)
    await watcher.stop()


async def start_sidecars(count: int, tmp: Path, nats_url: str, public: str) -> list[Any]:
    processes = []
    for i in range(count):
        env = {
            **os.environ,
            "SIDEGATE_LISTEN": f"127.0.0.1:{free_port()}",
            "SIDEGATE_NATS_URL": nats_url,
            "SIDEGATE_STATE_DIR": str(tmp / f"sidecar-{i}"),
            "SIDEGATE_PUBLIC_KEYS": public,
            "SIDEGATE_SIDECAR_ID": f"bench-{i}",
            "SIDEGATE_RESYNC_INTERVAL_S": "3600",
            "SIDEGATE_STATUS_INTERVAL_S": "60",
            "SIDEGATE_APP": "bench",
        }
        command = [sys.executable, "-m", "sidegate.cli", "sidecar", "--log-level", "error"]
        quiet = asyncio.subprocess.DEVNULL
        processes.append(
            await asyncio.create_subprocess_exec(*command, env=env, stdout=quiet, stderr=quiet)
        )
    return processes


async def propagation(args: argparse.Namespace, mode: str, count: int) -> dict[str, Any]:
    """Apply `args.rounds` policy changes; the delay of every observer for every change."""
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp_name:
        tmp = Path(tmp_name)
        key = SigningKey.generate()
        public = base64.b64encode(bytes(key.verify_key)).decode()
        server = NatsServer(tmp / "nats").start()
        nc = await nats.connect(server.url)
        processes: list[Any] = []
        stop = asyncio.Event()
        readers: list[asyncio.Task[None]] = []
        try:
            store = await PolicyStore.open(nc.jetstream(), signing_key=key)
            folder = tmp / "policy"
            await store.publish(write_policy(folder, FULL_RULES))
            seen = Activations()
            if mode == "watchers":
                for n in split(count, args.processes):
                    process = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--worker", "--count", str(n),
                        "--nats-url", server.url, "--public-key", public,
                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    processes.append(process)
                    readers.append(asyncio.create_task(read_worker(process, seen)))
            else:
                readers.append(asyncio.create_task(watch_statuses(nc, seen, stop)))
                processes = await start_sidecars(count, tmp, server.url, public)
            await seen.wait_for(1, count, timeout_s=60 + count)
            delays_ms: list[float] = []
            slowest_ms: list[float] = []
            apply_ms: list[float] = []
            for round_no in range(args.rounds):
                rules = FULL_RULES.replace(
                    'max_cost_usd: "1.00"', f'max_cost_usd: "{round_no + 2}"'
                )
                write_policy(folder, rules)
                started = time.time_ns()
                result = await store.publish(folder)  # what `sidegate policy apply` runs
                apply_ms.append((time.time_ns() - started) / 1e6)
                assert isinstance(result, Published), result
                await seen.wait_for(result.revision, count, timeout_s=30)
                round_delays = [(t - started) / 1e6 for t in seen.at[result.revision]]
                delays_ms.extend(round_delays)
                slowest_ms.append(max(round_delays))
                await asyncio.sleep(args.pause)
        finally:
            stop.set()
            await shutdown(processes, mode)
            for reader in readers:
                reader.cancel()
            await nc.close()
            server.stop()
    return {
        "mode": mode,
        "observers": count,
        "processes": args.processes if mode == "watchers" else count,
        "rounds": args.rounds,
        "samples": len(delays_ms),
        "apply_p50_ms": percentile(apply_ms, 50),
        "p50_ms": percentile(delays_ms, 50),
        "p90_ms": percentile(delays_ms, 90),
        "p99_ms": percentile(delays_ms, 99),
        "max_ms": max(delays_ms),
        "last_sidecar_p50_ms": percentile(slowest_ms, 50),
    }


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base or i < extra]


async def shutdown(processes: list[Any], mode: str) -> None:
    for process in processes:
        if mode == "watchers" and process.stdin is not None:
            process.stdin.close()
        elif process.returncode is None:
            process.terminate()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------------------------------------
# Pipeline CPU
# ---------------------------------------------------------------------------------------------


def prompt(words: int) -> bytes:
    text = " ".join(["quarterly", "revenue", "grew", "in", "every", "region"] * (words // 6))
    body = {
        "model": "tier:cheap",
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You summarise reports for the board."},
            {"role": "user", "content": text},
        ],
    }
    return msgspec.json.encode(body)


HEADERS = {
    "authorization": f"Bearer {KEY}",
    "x-sidegate-user": "ann",
    "x-sidegate-endpoint": "summarize",
    "x-sidegate-prompt-version": "v7",
}


def run_pipeline(
    pipeline: Pipeline, bundle: CompiledBundle, body: bytes, limiter: Limiter | None, n: int
) -> tuple[float, dict[str, float]]:
    """CPU microseconds per request over `n` requests (after `n` to warm up), and the wall
    microseconds per stage of a further `n` requests timed stage by stage."""
    request = make_mocked_request("POST", "/v1/chat/completions", headers=HEADERS)
    per_stage = dict.fromkeys((s.name for s in pipeline.stages), 0.0)
    cpu_us = 0.0
    for phase in ("warm", "timed", "stages"):
        started = time.process_time_ns()
        for i in range(n):
            ctx = RequestContext(request, CHAT, f"{phase}{i}")
            ctx.body, ctx.bundle = body, bundle
            if phase != "stages":
                assert pipeline.run(ctx) is None
            else:
                for stage in pipeline.stages:
                    before = time.perf_counter_ns()
                    stage(ctx)
                    per_stage[stage.name] += (time.perf_counter_ns() - before) / n / 1000
            if limiter is not None:
                limiter.settle(ctx.record_id, (ctx.estimated_input_tokens or 0) + 100)
        if phase == "timed":
            cpu_us = (time.process_time_ns() - started) / n / 1000
    return cpu_us, per_stage


def pipeline_cost(args: argparse.Namespace) -> dict[str, Any]:
    from sidecar.app import build_pipeline

    full_bundle, minimal_bundle = compiled(FULL_RULES), compiled(MINIMAL_RULES)
    stages: list[Stage] = [Parse(), Identify(WORKLOAD), ModelAccess(), ChooseDeployment()]
    minimal = Pipeline(stages)
    rows: list[dict[str, Any]] = []
    breakdown: dict[str, float] = {}
    for label, words in (("short prompt (~40 tokens)", 30), ("long prompt (~1,000 tokens)", 1000)):
        body = prompt(words)
        limiter = Limiter()
        full = build_pipeline(Settings(workload=WORKLOAD), limiter)
        base, _ = run_pipeline(minimal, minimal_bundle, body, None, args.requests)
        every, per_stage = run_pipeline(full, full_bundle, body, limiter, args.requests)
        rows.append({"prompt": label, "minimal_us": base, "full_us": every})
        breakdown = breakdown or per_stage  # the short prompt's
    return {"rows": rows, "stages": list(breakdown.items())}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def print_propagation(results: list[dict[str, Any]]) -> None:
    print("\nPropagation: `policy apply` start -> new revision active in every observer")
    head = (
        f"{'observers':34} {'rounds':>6} {'apply p50':>10} {'p50':>8} {'p90':>8} "
        f"{'p99':>8} {'max':>8} {'last p50':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        who = (
            f"{r['observers']} watchers in {r['processes']} processes"
            if r["mode"] == "watchers"
            else f"{r['observers']} sidecar processes"
        )
        print(
            f"{who:34} {r['rounds']:>6} {r['apply_p50_ms']:>8.1f}ms {r['p50_ms']:>6.1f}ms "
            f"{r['p90_ms']:>6.1f}ms {r['p99_ms']:>6.1f}ms {r['max_ms']:>6.1f}ms "
            f"{r['last_sidecar_p50_ms']:>7.1f}ms"
        )
    print("target: p99 <= 250 ms. `apply` = compile + sign + compare-and-swap publish;")
    print("`last p50` = median over rounds of the time until the slowest observer had it.")


def print_pipeline(result: dict[str, Any], requests: int) -> None:
    print(f"\nPipeline CPU per request (process time, {requests} requests, no HTTP)")
    head = f"{'prompt':30} {'minimal (baseline)':>20} {'every policy on':>17} {'added':>10}"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        added = r["full_us"] - r["minimal_us"]
        print(
            f"{r['prompt']:30} {r['minimal_us']:>18.1f}us {r['full_us']:>15.1f}us {added:>8.1f}us"
        )
    print("\nFull pipeline by stage (wall time, short prompt)")
    for name, us in result["stages"]:
        print(f"  {name:12} {us:8.2f}us")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results = [await propagation(args, "watchers", args.watchers)] if args.watchers else []
    if args.sidecars:
        results.append(await propagation(args, "sidecars", args.sidecars))
    return {"propagation": results}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        asyncio.run(worker(args))
        return 0
    logs.configure(json=True, level="error")
    print(
        f"bench_policy on {platform.node()}: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    report = asyncio.run(main_async(args))
    if report["propagation"]:
        print_propagation(report["propagation"])
    report["pipeline"] = pipeline_cost(args)
    print_pipeline(report["pipeline"], args.requests)
    out = args.out or HERE / "results" / f"bench_policy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nJSON copy: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
