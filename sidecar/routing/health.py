"""What the sidecar knows about each deployment's health: breaker, retry budget, latency.

State is kept per deployment label (`provider/model`) for the life of the sidecar, across
bundle swaps, while the thresholds come from the policy in force at each call. Every unit
takes the time as an argument, so tests drive it with a fake clock and no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from policyd.bundle import BreakerPolicy, RetryPolicy
from sidecar.policy import CompiledDeployment

BreakerState = Literal["closed", "open", "half_open"]
BUDGET_WINDOW_S = 10.0
_SLOTS = 10
LATENCY_ALPHA = 0.3  # weight of the newest sample in the moving average
LATENCY_STALE_S = 60.0  # an average older than this is forgotten, so the deployment is re-tried


class Window:
    """Two counters over a sliding window, kept in ten time slots (constant memory)."""

    __slots__ = ("_a", "_b", "_ids", "_slot_s")

    def __init__(self, window_s: float) -> None:
        self.reset(window_s)

    def reset(self, window_s: float) -> None:
        self._slot_s = window_s / _SLOTS
        self._ids = [-1] * _SLOTS
        self._a = [0] * _SLOTS
        self._b = [0] * _SLOTS

    def resize(self, window_s: float) -> None:
        if window_s / _SLOTS != self._slot_s:
            self.reset(window_s)  # a new policy window starts afresh

    @property
    def window_s(self) -> float:
        return self._slot_s * _SLOTS

    def add(self, now: float, a: int = 0, b: int = 0) -> None:
        slot_id = int(now / self._slot_s)
        i = slot_id % _SLOTS
        if self._ids[i] != slot_id:
            self._ids[i], self._a[i], self._b[i] = slot_id, 0, 0
        self._a[i] += a
        self._b[i] += b

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now / self._slot_s) - _SLOTS + 1
        a = b = 0
        for i in range(_SLOTS):
            if self._ids[i] >= oldest:
                a += self._a[i]
                b += self._b[i]
        return a, b


class CircuitBreaker:
    """Closed → open on N consecutive failures or an error rate over the window; after
    `open_ms` it half-opens and admits a few probes: a success closes it, a failure reopens."""

    __slots__ = ("_calls", "_consecutive", "_opened_at", "_probes", "state")

    def __init__(self) -> None:
        self.state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes = 0
        self._calls = Window(30.0)  # (calls, failures)

    def available(self, policy: BreakerPolicy, now: float) -> bool:
        """Could a call go through now? (Does not take a probe slot.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            return now - self._opened_at >= policy.open_ms / 1000
        return self._probes < policy.half_open_probes

    def acquire(self, policy: BreakerPolicy, now: float) -> bool:
        """Take the right to call; in half-open state this takes one of the probe slots."""
        if self.state == "open" and now - self._opened_at >= policy.open_ms / 1000:
            self.state, self._probes = "half_open", 0
        if self.state == "closed":
            return True
        if self.state == "half_open" and self._probes < policy.half_open_probes:
            self._probes += 1
            return True
        return False

    def release(self) -> None:
        """A call that ended without a verdict (the caller went away): free its probe slot."""
        if self.state == "half_open" and self._probes > 0:
            self._probes -= 1

    def record(self, policy: BreakerPolicy, ok: bool, now: float) -> None:
        if self.state == "half_open":
            self.release()
            if ok:
                self._close()
            else:
                self._open(now)
            return
        if self.state == "open":
            return  # a call admitted before the circuit opened; its verdict changes nothing
        self._calls.resize(policy.window_ms / 1000)
        self._calls.add(now, 1, 0 if ok else 1)
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        calls, failures = self._calls.totals(now)
        if self._consecutive >= policy.consecutive_failures or (
            calls >= policy.min_requests and failures >= policy.error_rate * calls
        ):
            self._open(now)

    def reopens_in(self, policy: BreakerPolicy, now: float) -> float:
        """Seconds until an open circuit admits a probe (0 when it would now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + policy.open_ms / 1000 - now)

    def _open(self, now: float) -> None:
        self.state, self._opened_at, self._probes = "open", now, 0

    def _close(self) -> None:
        self.state, self._consecutive, self._probes = "closed", 0, 0
        self._calls.reset(self._calls.window_s)


class RetryBudget:
    """Retries may add at most `budget_ratio` of a deployment's requests over the last
    ten seconds, plus `budget_min_per_s` per second, so retries cannot storm an upstream."""

    __slots__ = ("_window",)

    def __init__(self) -> None:
        self._window = Window(BUDGET_WINDOW_S)  # (requests, retries)

    def deposit(self, now: float) -> None:
        self._window.add(now, a=1)

    def withdraw(self, policy: RetryPolicy, now: float) -> bool:
        requests, retries = self._window.totals(now)
        allowed = policy.budget_ratio * requests + policy.budget_min_per_s * BUDGET_WINDOW_S
        if retries + 1 > allowed:
            return False
        self._window.add(now, b=1)
        return True


class Latency:
    """An exponentially weighted moving average of time to first byte, forgotten when stale."""

    __slots__ = ("_at", "_value")

    def __init__(self) -> None:
        self._value: float | None = None
        self._at = 0.0

    def observe(self, seconds: float, now: float) -> None:
        current = self.estimate(now)
        value = (
            seconds if current is None else LATENCY_ALPHA * seconds + (1 - LATENCY_ALPHA) * current
        )
        self._value, self._at = value, now

    def estimate(self, now: float) -> float | None:
        if self._value is None or now - self._at > LATENCY_STALE_S:
            return None
        return self._value


class DeploymentHealth:
    __slots__ = ("breaker", "budget", "latency")

    def __init__(self) -> None:
        self.breaker = CircuitBreaker()
        self.budget = RetryBudget()
        self.latency = Latency()


class HealthBook:
    """Every deployment's health, by label; entries appear on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, DeploymentHealth] = {}

    def of(self, d: CompiledDeployment) -> DeploymentHealth:
        label = d.label
        entry = self._entries.get(label)
        if entry is None:
            entry = self._entries[label] = DeploymentHealth()
        return entry

    def available(self, d: CompiledDeployment) -> bool:
        return self.of(d).breaker.available(d.provider.breaker, self.clock())

    def latency(self, d: CompiledDeployment) -> float | None:
        return self.of(d).latency.estimate(self.clock())

    def states(self) -> dict[str, BreakerState]:
        """Each known deployment's circuit state (for tests and status pages)."""
        return {label: h.breaker.state for label, h in self._entries.items()}
