"""Sidecar overhead against direct calls to the same upstream, measured in one run, as a table."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import phases
from phases import Plan, Target
from processes import (
    Child,
    bundle_envelope,
    find_litellm,
    memory_mib,
    prepare_nats,
    start_litellm,
    start_sidecar,
    start_upstream,
    usage_stream_count,
)
from results import Row, Tally, render, write_json

from sidegate.natsd import NatsServer, free_port

HERE = Path(__file__).resolve().parent
Tallies = dict[str, dict[str, Tally]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per timed step (5)")
    p.add_argument("--requests", type=int, default=2000, help="requests per sequential round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per step (3)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per target (3)")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop requests/s (500)")
    p.add_argument("--rate-connections", type=int, default=16, help="open-loop connections")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections (32)")
    p.add_argument("--sidecar-cpu", type=int, default=None, help="core for the sidecar")
    p.add_argument("--no-peer", action="store_true", help="skip the peer gateway (LiteLLM)")
    p.add_argument("--litellm", type=Path, default=None, help="LiteLLM console script to use")
    p.add_argument(
        "--candidate", type=Path, default=None, metavar="CHECKOUT",
        help="also measure the sidecar of another source checkout, in the same rounds",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a fast smoke run; numbers are rough")
    p.add_argument("--out", type=Path, default=None, help="JSON copy (default results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.requests, args.rounds, args.warmup = 1.0, 200, 1, 0.5
    return args


def cpu_layout(choice: int | None) -> tuple[set[int], set[int], str]:
    """The sidecar gets one core to itself; the generator, upstream and NATS share the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus), "one core only: nothing pinned, numbers include contention"
    sidecar = choice if choice in cpus else cpus[0]
    others = set(cpus) - {sidecar}
    note = f"gateway pinned to core {sidecar}; load generator, upstream, NATS on {sorted(others)}"
    return {sidecar}, others, note


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    try:
        commit = subprocess.run(
            # "-dirty": the sidecar measured includes uncommitted changes.
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "commit": commit,
        "load_average_before": os.getloadavg(),
    }


def run_async(coro: Coroutine[Any, Any, Any]) -> tuple[Any, str]:
    """Run the generator on uvloop where installed: it raises the generator's own ceiling."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro), "asyncio"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro), "uvloop"


async def measure(targets: list[Target], plan: Plan) -> Tallies:
    await phases.warm_up(targets, plan)
    return {
        "sequential": await phases.sequential(targets, plan),
        "stream": await phases.streaming(targets, plan),
        "fixed_rate": await phases.fixed_rate(targets, plan),
        "saturation": await phases.saturation(targets, plan),
    }


def build_rows(
    t: Tallies, memory: dict[str, dict[str, float]], targets: list[Target], plan: Plan
) -> list[Row]:
    """One row per number the issue asks for; `direct` is the upstream alone, for reference."""
    extras = [x.name for x in targets[2:]]
    under_load = {x.name: x.under_load_mib for x in targets}

    def row(metric: str, unit: str, value: Callable[[str], float | None], **kw: Any) -> Row:
        return Row(metric, unit, value("direct"), value("sidecar"),
                   extras={name: value(name) for name in extras}, **kw)  # fmt: skip

    def lat(phase: str, q: float, what: str = "latency") -> Callable[[str], float]:
        if what == "ttfb":
            return lambda name: t[phase][name].ttfb_ms(q)
        return lambda name: t[phase][name].latency_ms(q)

    rate = f"{plan.rate_per_s:.0f} req/s over {plan.rate_connections} conns"
    added_1ms = "added <= 1 ms"
    return [
        row("CPU per request, 1 connection", "us",
            lambda n: t["sequential"][n].cpu_us_per_request, compare="ratio", digits=0),
        row(f"CPU per request, {rate}", "us",
            lambda n: t["fixed_rate"][n].cpu_us_per_request, compare="ratio", digits=0,
            target="<= 600", check=lambda d, s: s <= 600),
        row("CPU per request, saturated", "us",
            lambda n: t["saturation"][n].cpu_us_per_request, compare="ratio", digits=0),
        row(f"max throughput, {plan.concurrency} conns", "req/s",
            lambda n: t["saturation"][n].rate, compare="ratio", digits=0,
            target=">= 1500", check=lambda d, s: s >= 1500),
        row("max throughput from CPU time, 1 core", "req/s",
            lambda n: 1e6 / t["saturation"][n].cpu_us_per_request, compare="ratio", digits=0),
        row("CPU busy at max throughput", "cores",
            lambda n: t["saturation"][n].busy, compare="", digits=2),
        row("latency p50, 1 connection", "ms", lat("sequential", 50),
            target=added_1ms, check=lambda d, s: s - d <= 1.0),
        row("latency p99, 1 connection", "ms", lat("sequential", 99)),
        row(f"latency p50, {rate}", "ms", lat("fixed_rate", 50)),
        row(f"latency p99, {rate}", "ms", lat("fixed_rate", 99)),
        row("stream TTFB p50, 1 connection", "ms", lat("stream", 50, "ttfb")),
        row("stream TTFB p99, 1 connection", "ms", lat("stream", 99, "ttfb")),
        row("stream complete p50, 1 connection", "ms", lat("stream", 50)),
        row("RSS idle", "MiB", lambda n: memory[n]["idle"], compare="", digits=1),
        row("RSS under load", "MiB", lambda n: under_load[n], compare="", digits=1),
        row("RSS peak (VmHWM)", "MiB", lambda n: memory[n]["peak"], compare="", digits=1,
            target="<= 60", check=lambda d, s: s <= 60),
    ]  # fmt: skip


def start_peer(
    binary: Path | None, work: Path, upstream_v1: str, cpus: set[int]
) -> tuple[Target | None, Child | None, str]:
    """LiteLLM's proxy when it is installed (it is never a dependency), else why not."""
    found, missing = find_litellm(binary)
    if found is None:
        return None, None, f"peer gateway skipped: {missing}"
    key = "sk-" + os.urandom(24).hex()
    try:
        child = start_litellm(
            found, free_port(), master_key=key, upstream_v1=upstream_v1, work_dir=work, cpus=cpus
        )
    except (RuntimeError, TimeoutError) as exc:
        return None, None, f"peer gateway skipped: LiteLLM did not start ({str(exc)[-300:]})"
    target = Target(child.name, child.port, child.pid, api_key=key)
    return target, child, f"peer gateway: LiteLLM proxy ({found}), one worker, same core"


def run_stack(args: argparse.Namespace, plan: Plan, work: Path) -> dict[str, Any]:
    """Start every process, measure, stop them all; returns what the report needs."""
    sidecar_cpus = os.sched_getaffinity(0) if args.one_core else args.sidecar_cpus
    children: list[Child] = []
    nats_server = NatsServer(work / "nats").start()
    try:
        upstream = start_upstream(free_port(), work)
        children.append(upstream)
        upstream_v1 = f"http://127.0.0.1:{upstream.port}/v1"
        envelope = bundle_envelope(upstream_v1)
        asyncio.run(prepare_nats(nats_server.url, envelope))
        sidecar = start_sidecar(
            free_port(), nats_url=nats_server.url, state_dir=work / "sidecar",
            envelope=envelope, log_dir=work, cpus=sidecar_cpus,
        )  # fmt: skip
        children.append(sidecar)
        targets = [Target("direct", upstream.port, upstream.pid)]
        targets.append(Target("sidecar", sidecar.port, sidecar.pid))
        if args.candidate is not None:
            candidate = start_sidecar(
                free_port(), nats_url=nats_server.url, state_dir=work / "candidate",
                envelope=envelope, log_dir=work, cpus=sidecar_cpus, name="candidate",
                source=args.candidate.resolve(),
            )  # fmt: skip
            children.append(candidate)
            targets.append(Target(candidate.name, candidate.port, candidate.pid))
        peer_note = "peer gateway skipped: --no-peer"
        if not args.no_peer:
            peer, child, peer_note = start_peer(args.litellm, work, upstream_v1, sidecar_cpus)
            if peer is not None and child is not None:
                children.append(child)
                targets.append(peer)
        time.sleep(0.5 if args.quick else 2.0)  # let start-up work settle before "idle"
        idle = {x.name: memory_mib(x.pid)["VmRSS"] for x in targets}
        tallies, loop_name = run_async(measure(targets, plan))
        memory = {
            x.name: {"idle": idle[x.name], "peak": memory_mib(x.pid)["VmHWM"]} for x in targets
        }
        time.sleep(0.5)  # the emitter publishes off the request path; let it catch up
        published = asyncio.run(usage_stream_count(nats_server.url))
        spools = [work / x.name / "usage-spool.jsonl" for x in targets[1:]]
    finally:
        for child in reversed(children):
            child.stop()
        nats_server.stop()
    return {
        "targets": targets, "tallies": tallies, "memory": memory, "peer": peer_note,
        "generator": f"raw HTTP/1.1 keep-alive, one process, {loop_name}",
        "usage_records_published": published,
        "usage_spool_bytes": sum(p.stat().st_size for p in spools if p.exists()),
    }  # fmt: skip


def report(meta: dict[str, Any], rows: list[Row], tallies: Tallies, extras: list[str]) -> None:
    fixed = tallies["fixed_rate"]
    sat = tallies["saturation"]
    low, high = sat["sidecar"].rate_spread
    print(f"\nSidegate sidecar benchmark ({meta['commit'] or 'uncommitted'})")
    print(f"machine: {meta['cpu']}, {meta['cores']} cores; python {meta['python']}")
    print(f"placement: {meta['placement']}")
    print(f"load generator: {meta['generator']}")
    print(f"{meta['peer']}")
    before, after = meta["load_average_before"][0], meta["load_average_after"][0]
    print(f"load average (1 min) before/after: {before:.2f} / {after:.2f}")
    print()
    print(render(rows, extras=extras))
    print()
    print(
        f"rounds interleaved per step: {len(sat['sidecar'].runs)}; sidecar max throughput "
        f"across rounds {low:.0f}..{high:.0f} req/s"
    )
    print(
        "direct max throughput is the generator's own ceiling against the upstream, sharing "
        "the non-gateway cores"
    )
    if sat["sidecar"].rate > 0.8 * sat["direct"].rate:
        print("WARNING: sidecar throughput is near the generator ceiling; it may be the limit")
    if sat["sidecar"].busy < 0.9:
        print(
            f"WARNING: the sidecar used only {sat['sidecar'].busy:.2f} of its core at max "
            "throughput (other processes on that core, or the generator's side was the limit): "
            "the measured rate understates it; the CPU-time row estimates a quiet core"
        )
    cores = ", ".join(
        f"core {c} {busy:.0%} busy ({steal:.0%} stolen)"
        for c, (busy, steal) in sat["sidecar"].core_load().items()
    )
    print(f"all processes during the sidecar's max-throughput rounds: {cores}")
    achieved = ", ".join(
        f"{name} {tally.rate:.0f}" + (f" ({tally.late} cut off late)" if tally.late else "")
        for name, tally in fixed.items()
    )
    print(
        f"open loop achieved req/s: {achieved}; generator send lag p99 "
        f"{fixed['sidecar'].send_lag_ms(99):.3f} ms (excluded from latency; time waiting for "
        "a busy connection is included)"
    )
    print(
        f"usage records acknowledged by the stream: {meta['usage_records_published']}; "
        f"spooled to disk: {meta['usage_spool_bytes']} bytes"
    )
    print("Closed-loop latency at saturation is queueing, so it is reported as throughput only.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.sidecar_cpus, other_cpus, placement = cpu_layout(args.sidecar_cpu)
    args.one_core = args.sidecar_cpus == other_cpus
    os.sched_setaffinity(0, other_cpus)  # children inherit it; the gateways are moved off
    plan = Plan(
        rounds=args.rounds, duration_s=args.duration, requests=args.requests,
        warmup_s=args.warmup, rate_per_s=args.rate, rate_connections=args.rate_connections,
        concurrency=args.concurrency,
        progress=lambda line: print(f"  .. {line}", file=sys.stderr, flush=True),
    )  # fmt: skip
    meta: dict[str, Any] = machine()
    with tempfile.TemporaryDirectory(prefix="sidegate-bench-") as tmp:
        outcome = run_stack(args, plan, Path(tmp))
    targets: list[Target] = outcome.pop("targets")
    tallies: Tallies = outcome.pop("tallies")
    memory = outcome.pop("memory")
    meta.update(outcome, placement=placement, load_average_after=os.getloadavg())
    meta["options"] = {k: str(v) for k, v in vars(args).items()}
    rows = build_rows(tallies, memory, targets, plan)
    report(meta, rows, tallies, [x.name for x in targets[2:]])
    out = args.out or HERE / "results" / f"bench_sidecar-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(out, meta, rows)
    print(f"JSON copy: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
