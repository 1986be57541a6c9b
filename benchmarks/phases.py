"""The measured steps, each run in interleaved rounds against every target with its CPU time."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import loadgen
from processes import core_jiffies, cpu_seconds, memory_mib
from results import Tally

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
# What the openai SDK sends for a short chat call; the same bytes go to every target.
PROMPT = (
    b'"messages":[{"role":"system","content":"You are a concise assistant for a travel site. '
    b'Answer in one sentence."},{"role":"user","content":"What is the capital of France, '
    b'and what is it best known for?"}],"model":"gpt-4o-mini"'
)
CHAT_BODY = b"{" + PROMPT + b"}"
# No stream_options: like most SDK callers, so the sidecar adds and strips the usage chunk.
STREAM_BODY = b"{" + PROMPT + b',"stream":true}'


@dataclass
class Target:
    """Where requests go, and which process's CPU and memory they are charged to."""

    name: str
    port: int
    pid: int
    api_key: str = "bench"  # what the app would send as its key; the fake accepts any
    chat: bytes = b""
    stream: bytes = b""
    under_load_mib: float = 0.0

    def __post_init__(self) -> None:
        key = self.api_key
        self.chat = loadgen.build_request(HOST, self.port, PATH, CHAT_BODY, api_key=key)
        self.stream = loadgen.build_request(HOST, self.port, PATH, STREAM_BODY, api_key=key)

    def probe_memory(self) -> None:
        self.under_load_mib = max(self.under_load_mib, memory_mib(self.pid)["VmRSS"])


@dataclass
class Plan:
    rounds: int
    duration_s: float
    requests: int
    warmup_s: float
    rate_per_s: float
    rate_connections: int
    concurrency: int
    progress: Callable[[str], None] = field(default=print)


Step = Callable[[Target], Awaitable[loadgen.Run]]


async def interleaved(targets: list[Target], rounds: int, step: Step) -> dict[str, Tally]:
    """Round-robin over targets, so a noisy neighbour hits all of them, not one of them."""
    tallies = {t.name: Tally() for t in targets}
    for _ in range(rounds):
        for target in targets:
            before, cores_before = cpu_seconds(target.pid), core_jiffies()
            # A collection in the generator mid-step would show up as the target's latency;
            # the steps allocate only ints and lists, so nothing leaks meanwhile.
            gc.disable()
            try:
                run = await step(target)
            finally:
                gc.enable()
            tally = tallies[target.name]
            tally.cpu_s += cpu_seconds(target.pid) - before
            for core, after in core_jiffies().items():
                sums = tally.cores.setdefault(core, [0, 0, 0])
                for i in range(3):
                    sums[i] += after[i] - cores_before[core][i]
            tally.runs.append(run)
            if run.errors:
                raise RuntimeError(
                    f"{target.name}: {run.errors} failed requests, e.g. {run.error_samples}"
                )
    return tallies


async def warm_up(targets: list[Target], plan: Plan) -> None:
    """Fill connection pools, caches and allocator arenas before anything is counted."""
    for target in targets:
        for request in (target.chat, target.stream):
            await loadgen.closed_loop(
                HOST, target.port, request, connections=16, duration_s=plan.warmup_s / 2
            )


async def sequential(targets: list[Target], plan: Plan) -> dict[str, Tally]:
    plan.progress(f"latency at one connection: {plan.requests} requests x {plan.rounds} rounds")
    return await interleaved(
        targets, plan.rounds,
        lambda t: loadgen.closed_loop(HOST, t.port, t.chat, connections=1, requests=plan.requests),
    )  # fmt: skip


async def streaming(targets: list[Target], plan: Plan) -> dict[str, Tally]:
    count = max(20, plan.requests // 2)
    plan.progress(f"stream time to first byte: {count} streams x {plan.rounds} rounds")
    return await interleaved(
        targets, plan.rounds,
        lambda t: loadgen.closed_loop(HOST, t.port, t.stream, connections=1, requests=count),
    )  # fmt: skip


async def fixed_rate(targets: list[Target], plan: Plan) -> dict[str, Tally]:
    plan.progress(
        f"open loop: {plan.rate_per_s:.0f} req/s over {plan.rate_connections} connections, "
        f"{plan.duration_s:.0f} s x {plan.rounds} rounds"
    )
    return await interleaved(
        targets, plan.rounds,
        lambda t: loadgen.open_loop(
            HOST, t.port, t.chat, rate_per_s=plan.rate_per_s,
            connections=plan.rate_connections, duration_s=plan.duration_s,
        ),
    )  # fmt: skip


async def saturation(targets: list[Target], plan: Plan) -> dict[str, Tally]:
    plan.progress(
        f"closed loop: {plan.concurrency} connections, {plan.duration_s:.0f} s x {plan.rounds} "
        "rounds"
    )
    return await interleaved(
        targets, plan.rounds,
        lambda t: loadgen.closed_loop(
            HOST, t.port, t.chat, connections=plan.concurrency, duration_s=plan.duration_s,
            probe=t.probe_memory,
        ),
    )  # fmt: skip
