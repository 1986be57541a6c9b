"""The health units on a fake clock: circuit breaker, retry budget, latency average, backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from policyd.bundle import BreakerPolicy, RetryPolicy
from sidecar.routing.health import CircuitBreaker, Latency, RetryBudget
from sidecar.routing.retry import backoff_s, retry_after_s, retryable_status

BREAKER = BreakerPolicy(
    consecutive_failures=3, error_rate=0.5, min_requests=10, window_ms=10_000, open_ms=1_000
)


def test_breaker_opens_after_consecutive_failures() -> None:
    breaker = CircuitBreaker()
    for t in range(3):
        assert breaker.acquire(BREAKER, t * 0.01)
        breaker.record(BREAKER, False, t * 0.01)
    assert breaker.state == "open"
    assert not breaker.acquire(BREAKER, 0.5)


def test_breaker_stays_closed_when_a_success_breaks_the_run() -> None:
    breaker = CircuitBreaker()
    for ok in (False, False, True, False, False):
        breaker.record(BREAKER, ok, 0.0)
    assert breaker.state == "closed"


def test_breaker_opens_on_error_rate_once_enough_calls_were_made() -> None:
    breaker = CircuitBreaker()
    for i in range(10):  # alternate: never 3 failures in a row, but 50% fail
        breaker.record(BREAKER, i % 2 == 0, i * 0.1)
    assert breaker.state == "open"


def test_breaker_forgets_failures_older_than_its_window() -> None:
    breaker = CircuitBreaker()
    for i in range(9):
        breaker.record(BREAKER, i % 2 == 0, i * 0.01)
    breaker.record(BREAKER, False, 20.0)  # the earlier calls left the 10 s window
    assert breaker.state == "closed"


def test_half_open_breaker_admits_one_probe_and_closes_on_its_success() -> None:
    breaker = CircuitBreaker()
    for _ in range(3):
        breaker.record(BREAKER, False, 0.0)
    assert not breaker.available(BREAKER, 0.9)
    assert breaker.acquire(BREAKER, 1.0)
    assert breaker.state == "half_open"
    assert not breaker.acquire(BREAKER, 1.0)  # the one probe slot is taken
    breaker.record(BREAKER, True, 1.1)
    assert breaker.state == "closed"


def test_half_open_breaker_reopens_when_its_probe_fails() -> None:
    breaker = CircuitBreaker()
    for _ in range(3):
        breaker.record(BREAKER, False, 0.0)
    assert breaker.acquire(BREAKER, 1.0)
    breaker.record(BREAKER, False, 1.2)
    assert breaker.state == "open"
    assert breaker.reopens_in(BREAKER, 1.2) == pytest.approx(1.0)


def test_a_probe_without_a_verdict_frees_its_slot() -> None:
    breaker = CircuitBreaker()
    for _ in range(3):
        breaker.record(BREAKER, False, 0.0)
    assert breaker.acquire(BREAKER, 1.0)
    breaker.release()
    assert breaker.acquire(BREAKER, 1.0)


def test_retry_budget_allows_a_tenth_of_recent_requests() -> None:
    policy = RetryPolicy(budget_ratio=0.1, budget_min_per_s=0)
    budget = RetryBudget()
    for _ in range(50):
        budget.deposit(1.0)
    granted = sum(budget.withdraw(policy, 1.0) for _ in range(20))
    assert granted == 5


def test_retry_budget_floor_allows_retries_on_a_quiet_deployment() -> None:
    policy = RetryPolicy(budget_ratio=0.1, budget_min_per_s=0.5)  # 5 per 10 s window
    budget = RetryBudget()
    budget.deposit(0.0)
    assert sum(budget.withdraw(policy, 0.0) for _ in range(10)) == 5


def test_retry_budget_refills_as_old_requests_leave_the_window() -> None:
    policy = RetryPolicy(budget_ratio=0.1, budget_min_per_s=0)
    budget = RetryBudget()
    for _ in range(10):
        budget.deposit(0.0)
    assert budget.withdraw(policy, 0.0)
    assert not budget.withdraw(policy, 0.0)
    for _ in range(10):
        budget.deposit(30.0)
    assert budget.withdraw(policy, 30.0)


def test_latency_average_weights_recent_samples_and_forgets_stale_ones() -> None:
    latency = Latency()
    assert latency.estimate(0.0) is None
    latency.observe(1.0, 0.0)
    latency.observe(0.0, 1.0)
    assert latency.estimate(1.0) == pytest.approx(0.7)
    assert latency.estimate(100.0) is None


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(base_backoff_ms=100, max_backoff_ms=1_000)
    rng = random.Random(7)
    for retry, cap_s in ((1, 0.1), (2, 0.2), (3, 0.4), (8, 1.0)):
        delays = [backoff_s(policy, retry, rng) for _ in range(400)]
        assert max(delays) <= cap_s
        assert min(delays) < cap_s * 0.1  # full jitter reaches down to zero
        assert max(delays) > cap_s * 0.9


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5", "retry-after-ms": "250"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_in_seconds_or_milliseconds(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_s(headers) == expected


def test_retry_after_is_read_as_an_http_date() -> None:
    when = datetime.now(tz=UTC) + timedelta(seconds=30)
    seconds = retry_after_s({"retry-after": format_datetime(when, usegmt=True)})
    assert seconds is not None and 28 < seconds <= 30


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (503, True), (529, True), (400, False), (401, False), (501, False)],
)
def test_only_transient_statuses_are_retried(status: int, retryable: bool) -> None:
    assert retryable_status(status) is retryable
