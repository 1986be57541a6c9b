"""Faults on command: what can go wrong, which requests it hits, and how many times.

Kinds:
- "429", "500", "503", "529": an error response in the wire format of the route hit. A 429
  carries `retry-after` (whole seconds, rounded up) and `retry-after-ms`; on OpenAI routes
  also the x-ratelimit-* headers.
- "hang": the request is accepted and never answered until the client goes away.
- "drop": a stream is cut after `after_chunks` SSE events by aborting the TCP connection
  (the chunked body never ends); a non-stream request loses its connection before any byte.
- "slow": `delay_ms` more before the first byte, and `chunk_delay_ms` more between events.

A fault hits the next `count` requests that match its `model` and `route` filters (count -1:
until cleared); the first matching fault in the order added wins. A request can also carry
its own fault in headers, which wins over queued ones and is not counted down:
`x-fake-fault: <kind>`, `x-fake-retry-after: <seconds>`, `x-fake-after-chunks: <n>`,
`x-fake-delay-ms: <ms>`, `x-fake-chunk-delay-ms: <ms>`.

Route names for the `route` filter: chat.completions, responses, embeddings, models,
messages, messages.count_tokens, generateContent, streamGenerateContent, countTokens,
gemini.models; a value starting with "/" matches the request path instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

FaultKind = Literal["429", "500", "503", "529", "hang", "drop", "slow"]
ERROR_STATUS: dict[str, int] = {"429": 429, "500": 500, "503": 503, "529": 529}
DEFAULT_RETRY_AFTER_S = 1.0

HEADER_FAULT = "x-fake-fault"
_HEADER_FIELDS = {
    "x-fake-retry-after": "retry_after_s",
    "x-fake-after-chunks": "after_chunks",
    "x-fake-delay-ms": "delay_ms",
    "x-fake-chunk-delay-ms": "chunk_delay_ms",
}


class Fault(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One fault order, as posted to /_fake/faults or passed to `FakeState.add_fault`."""

    kind: FaultKind
    count: int = 1
    model: str | None = None
    route: str | None = None
    retry_after_s: float | None = None
    after_chunks: int = 0
    delay_ms: float = 0.0
    chunk_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be a positive number of requests, or -1 for all")
        if self.after_chunks < 0 or self.delay_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("after_chunks, delay_ms and chunk_delay_ms must not be negative")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")

    def matches(self, route: str, path: str, model: str) -> bool:
        if self.model is not None and self.model != model:
            return False
        if self.route is None:
            return True
        return self.route == (path if self.route.startswith("/") else route)

    @property
    def status(self) -> int | None:
        """The HTTP status of an error fault; None for hang, drop and slow."""
        return ERROR_STATUS.get(self.kind)

    @property
    def retry_after(self) -> float:
        return DEFAULT_RETRY_AFTER_S if self.retry_after_s is None else self.retry_after_s


class HeaderFaultError(msgspec.Struct, frozen=True):
    """An x-fake-* header that does not describe a fault: answered with a 400."""

    message: str


_fault_list_decoder = msgspec.json.Decoder(Fault | list[Fault])


def decode_faults(body: bytes) -> list[Fault]:
    """One fault or a list of them, from a control API body; raises msgspec.ValidationError."""
    decoded = _fault_list_decoder.decode(body)
    return decoded if isinstance(decoded, list) else [decoded]


def fault_from_headers(headers: Mapping[str, str]) -> Fault | HeaderFaultError | None:
    """The per-request fault carried in x-fake-* headers, if any."""
    kind = headers.get(HEADER_FAULT)
    if kind is None:
        return None
    fields: dict[str, str] = {"kind": kind.strip()}
    for header, field in _HEADER_FIELDS.items():
        value = headers.get(header)
        if value is not None:
            fields[field] = value.strip()
    try:
        return msgspec.convert(fields, Fault, strict=False)
    except msgspec.ValidationError as exc:
        return HeaderFaultError(f"invalid fault headers: {exc}")


class _Order:
    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


class FaultBook:
    """Queued faults in the order added; taking one counts it down."""

    def __init__(self) -> None:
        self._orders: list[_Order] = []

    def __bool__(self) -> bool:
        return bool(self._orders)

    def add(self, fault: Fault) -> None:
        self._orders.append(_Order(fault))

    def clear(self) -> int:
        cleared = len(self._orders)
        self._orders.clear()
        return cleared

    def take(self, route: str, path: str, model: str) -> Fault | None:
        for index, order in enumerate(self._orders):
            if order.fault.matches(route, path, model):
                if order.remaining > 0:
                    order.remaining -= 1
                    if order.remaining == 0:
                        del self._orders[index]
                return order.fault
        return None

    def pending(self) -> list[Fault]:
        """The queued faults with their remaining counts."""
        return [msgspec.structs.replace(o.fault, count=o.remaining) for o in self._orders]
