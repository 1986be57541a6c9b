"""Which upstream failures are worth another attempt, and how long to wait before it.

Retryable: the connection could not be made, the provider answered 408, 429 or a 5xx (other
than 501/505, which no retry fixes), or a timeout struck before the first byte. Anything else
is the caller's answer. Backoff is exponential with full jitter (a uniform draw between zero and
the exponential cap), which spreads a burst of retries instead of synchronising them; a
provider's `retry-after` is honoured when the next attempt goes back to the same deployment.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import msgspec

from policyd.bundle import RetryPolicy
from sidecar.errors import Reject, UpstreamFailure, UpstreamTimeout, UpstreamUnavailable

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
# Statuses that say the deployment itself is unwell (its breaker counts them); a 429 is the
# provider's quota speaking and is handled by retry-after, not by opening the circuit.
_UNHEALTHY_STATUS = frozenset({500, 502, 503, 504, 529})


def retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUS


def backoff_s(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^(retry-1))], in seconds; retry >= 1."""
    cap_ms = min(policy.max_backoff_ms, policy.base_backoff_ms * (1 << min(retry - 1, 30)))
    return rng.uniform(0.0, cap_ms) / 1000


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a provider asked for: `retry-after-ms`, else `retry-after` in seconds or as an
    HTTP date; None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())


class Failure(msgspec.Struct, kw_only=True):
    """One failed attempt, classified: what the caller would be told, and what it means."""

    reject: Reject | None  # None: the upstream's own error passes through unchanged
    status: int
    body: bytes = b""
    headers: dict[str, str] = {}
    retryable: bool
    unhealthy: bool  # counts against the deployment's circuit breaker
    billable: bool = False  # the provider may have processed (and charged) the request
    retry_after_s: float | None = None
    deployment: str = ""

    @property
    def message(self) -> str:
        if self.reject is not None:
            return self.reject.message
        return self.body[:500].decode(errors="replace")


def from_exception(failure: UpstreamFailure) -> Failure:
    """A failure before any answer: connection refused or reset, or a timeout."""
    reject = failure.to_reject()
    return Failure(
        reject=reject,
        status=reject.status,
        retryable=isinstance(failure, (UpstreamUnavailable, UpstreamTimeout)),
        unhealthy=True,
        billable=isinstance(failure, UpstreamTimeout),
        deployment=failure.deployment,
    )


def from_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    reject: Reject | None,
    deployment: str,
) -> Failure:
    """A provider's error answer (4xx/5xx) with its body already read."""
    return Failure(
        reject=reject,
        status=status,
        body=body,
        headers={k: headers[k] for k in ("content-type", "retry-after") if k in headers},
        retryable=retryable_status(status),
        unhealthy=status in _UNHEALTHY_STATUS,
        retry_after_s=retry_after_s(headers),
        deployment=deployment,
    )
