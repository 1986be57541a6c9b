"""How far a shared budget overshoots under load, against the bound the design promises, as a table.

Each simulated sidecar is the real budget ledger and lease client (sidecar/budgets.py,
sidecar/leases.py) on a NATS connection of its own, with callers that do what the `budget`
stage and its settle observer do around a model call: reserve the worst case, "call the
model" (a sleep of a few milliseconds), settle a real cost below the worst case. No HTTP, so
the numbers are about the lease protocol, not the proxy. The quota owner is policyd's own
(policyd/quota.py) in this process, on a real nats-server. Scenarios, in one run:

- shared: every sidecar spends one budget; the owner is up throughout.
- owner down at 90%: the owner stops answering once 90% of the limit is spent.
- crash at 50%: a third of the sidecars vanish without handing their slices back; the owner
  reclaims them after the lease expiry plus grace and grants them to the others.
- baseline, per-sidecar limits: each sidecar enforces the whole limit on its own (what
  per-pod counters give), measured the same way.

Bound: N x safe share, plus the slices the crashed sidecars held when they vanished.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from policyd.bundle import Budget
from policyd.quota import Account, QuotaOwner, open_bucket
from policyd.quota_wire import LeaseReply, LeaseRequest, period_key
from sidecar.budgets import BudgetLedger, BudgetSpec
from sidecar.leases import LeaseClient
from sidecar.natslink import NatsLink
from sidegate.logs import configure as configure_logging
from sidegate.natsd import NatsServer

D = Decimal
WORST_CASE = D("0.01")  # what every simulated request reserves
MICRO = D("0.000001")


class LocalLeases(LeaseClient):
    """The per-sidecar baseline: leases from a private account, as if each pod were alone."""

    def __init__(self, ledger: BudgetLedger, link: NatsLink) -> None:
        super().__init__(ledger, link)
        self.accounts: dict[str, Account] = {}

    async def _send(self, request: LeaseRequest) -> LeaseReply | None:
        account = self.accounts.setdefault(
            request.period_key,
            Account(budget=request.budget, scope=request.scope, value=request.value,
                    period_key=request.period_key, limit_usd=request.limit_usd),
        )  # fmt: skip
        return account.lease(request, now_ms=int(time.time() * 1000), ttl_ms=60_000, grace_ms=0)


class Sidecar:
    def __init__(self, name: str, nats_url: str, *, local: bool) -> None:
        self.ledger = BudgetLedger(holder=name, recheck_s=0.1)
        self.link = NatsLink(nats_url)
        kind = LocalLeases if local else LeaseClient
        self.leases = kind(self.ledger, self.link)
        self.spent = D(0)
        self.done = 0
        self.denied = 0
        self.alive = True

    def outstanding(self) -> Decimal:
        return sum((max(a.lease_left, D(0)) + a.reserved for a in self.ledger.accounts()), D(0))


async def caller(sidecar: Sidecar, spec: BudgetSpec, rng: random.Random) -> None:
    """The stage's reservation, the model call and the observer's settlement, in a loop."""
    ledger, n = sidecar.ledger, 0
    while sidecar.alive:
        now = ledger.now()
        account = ledger.account(spec, "acme", now)
        if account.available(now) < WORST_CASE:
            ledger.short(account, WORST_CASE)
            sidecar.denied += 1
            await asyncio.sleep(0.02)
            continue
        n += 1
        record_id = f"{id(sidecar)}-{id(rng)}-{n}"
        ledger.reserve(record_id, account, WORST_CASE, now)
        await asyncio.sleep(rng.uniform(0.002, 0.008))
        cost = (WORST_CASE * D(rng.randint(300, 1000)) / 1000).quantize(MICRO)
        ledger.settle(record_id, cost)
        sidecar.spent += cost
        sidecar.done += 1


@dataclass
class Result:
    scenario: str
    sidecars: int
    limit: Decimal
    spent: Decimal
    bound: Decimal | None  # None: the baseline promises nothing
    peak_outstanding: Decimal
    lease_rps: float
    requests_per_lease: float
    rps: float

    @property
    def overshoot(self) -> Decimal:
        return max(self.spent - self.limit, D(0))


async def scenario(
    name: str, args: argparse.Namespace, nats_url: str, *, event: str = "", local: bool = False
) -> Result:
    limit = D(args.limit)
    budget = Budget(name=f"b-{name}", scope="tenant", limit_usd=args.limit, period="month")
    spec = BudgetSpec.compile(budget)
    crash_ttl = event == "crash"
    owner_nc: NATS = await nats.connect(nats_url)
    owner = QuotaOwner(
        await open_bucket(owner_nc.jetstream()),
        lease_ttl_s=1.0 if crash_ttl else 60.0, reclaim_grace_s=0.5 if crash_ttl else 60.0,
    )  # fmt: skip
    await owner.start(owner_nc)
    sidecars = [Sidecar(f"sc-{i}", nats_url, local=local) for i in range(args.sidecars)]
    for sidecar in sidecars:
        sidecar.link.start()
        await sidecar.link.connected()
        sidecar.leases.start()
    rng = random.Random(7)
    callers = [
        asyncio.create_task(caller(s, spec, random.Random(rng.random())))
        for s in sidecars
        for _ in range(args.callers)
    ]
    started = time.monotonic()
    peak, crashed_slices, fired = D(0), D(0), False
    last_total, last_change = D(0), started
    quiet_s = 2.5 if crash_ttl else 1.0
    while time.monotonic() - started < args.max_seconds:
        await asyncio.sleep(0.01)
        total = sum((s.spent for s in sidecars), D(0))
        peak = max(peak, sum((s.outstanding() for s in sidecars if s.alive), D(0)))
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            break
        if fired or not event:
            continue
        if event == "outage" and total >= limit * D("0.9"):
            fired = True
            await owner.stop()
        elif event == "crash" and total >= limit / 2:
            fired = True
            crashed = sidecars[: max(1, args.sidecars // 3)]
            for sidecar in crashed:
                # Its callers finish the request in hand; its NATS connection goes, so it
                # neither reports that spend nor hands its slice back.
                sidecar.alive = False
                await sidecar.link.close()
            # What the owner will reclaim: the slices as the crashed sidecars last reported.
            month = period_key("month", time.time())
            book = await owner.account(spec.name, spec.scope, "acme", month)
            held = book.holders if book is not None else {}
            crashed_slices = sum(
                (held[s.ledger.holder].outstanding for s in crashed if s.ledger.holder in held),
                D(0),
            )
    elapsed = time.monotonic() - started
    for sidecar in sidecars:
        sidecar.alive = False
    await asyncio.gather(*callers)
    lease_requests = sum(sum(s.ledger.results.values()) for s in sidecars)
    for sidecar in sidecars:
        await sidecar.leases.stop(timeout_s=1.0)
        await sidecar.link.close()
    await owner.stop()
    await owner_nc.close()
    spent = sum((s.spent for s in sidecars), D(0))
    requests = sum(s.done for s in sidecars)
    return Result(
        scenario=name, sidecars=args.sidecars, limit=limit, spent=spent,
        bound=None if local else args.sidecars * spec.safe_share + crashed_slices,
        peak_outstanding=peak, lease_rps=lease_requests / elapsed,
        requests_per_lease=requests / max(lease_requests, 1), rps=requests / elapsed,
    )  # fmt: skip


def render(rows: list[Result]) -> str:
    header = [
        "scenario", "sidecars", "limit $", "spent $", "overshoot $", "overshoot %", "bound $",
        "slices out (peak) $", "lease req/s", "requests/lease", "requests/s",
    ]  # fmt: skip
    lines = [header] + [
        [
            r.scenario, str(r.sidecars), f"{r.limit:.2f}", f"{r.spent:.4f}",
            f"{r.overshoot:.4f}", f"{r.overshoot / r.limit * 100:.2f}",
            "n/a" if r.bound is None else f"{r.bound:.4f}", f"{r.peak_outstanding:.4f}",
            f"{r.lease_rps:.1f}", f"{r.requests_per_lease:.1f}", f"{r.rps:.0f}",
        ]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("| " + " | ".join(cells) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        rows = [
            await scenario("shared", args, server.url),
            await scenario("owner down at 90%", args, server.url, event="outage"),
            await scenario("crash at 50%", args, server.url, event="crash"),
            await scenario("baseline: per-sidecar limits", args, server.url, local=True),
        ]
    print(render(rows))
    print(
        f"\nEach request reserves ${WORST_CASE} and costs 30-100% of it; default slice 1% of the "
        f"limit, safe share 0.1%. Bound: sidecars x safe share, plus the slices the crashed "
        f"sidecars held as the owner last knew them. A central check per request would make "
        f"one owner call per request (requests/lease = 1). Python {sys.version.split()[0]}, "
        f"{args.callers} callers per sidecar, owner and sidecars in one process."
    )
    over = [r.scenario for r in rows if r.bound is not None and r.overshoot > r.bound]
    if over:
        print(f"overshoot above the bound in: {', '.join(over)}")
    return 1 if over else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sidecars", type=int, default=10, help="simulated sidecars (10)")
    p.add_argument("--callers", type=int, default=4, help="concurrent callers per sidecar (4)")
    p.add_argument("--limit", default="20", help="the budget in USD (20)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="per scenario (30)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: 4 sidecars, $4")
    args = p.parse_args(argv)
    if args.quick:
        args.sidecars, args.limit, args.max_seconds = 4, "4", 10.0
    return args


if __name__ == "__main__":
    configure_logging(level="warning")  # the table is the output; info lines would bury it
    sys.exit(asyncio.run(main(parse_args())))
