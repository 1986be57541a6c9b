"""The fake provider's settings and live state: faults, request stats and the prompt cache."""

from __future__ import annotations

import itertools
import os
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDictProxy

from fakeprovider.caching import PromptCache
from fakeprovider.content import DEFAULT_OUTPUT_TOKENS
from fakeprovider.faults import Fault, FaultBook

# Ids are unique per process and cheap: a random prefix and a counter.
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """A unique id such as "chatcmpl-…" or "msg_…"."""
    return f"{prefix}{_ID_PREFIX}{next(_ids):012x}"


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How the server behaves when no fault says otherwise."""

    latency_ms: float = 0.0  # before the first byte of every model response
    token_delay_ms: float = 0.0  # between stream events; per output piece for non-stream
    api_key: str | None = None  # None: any credential, or none, is accepted
    output_tokens: int = DEFAULT_OUTPUT_TOKENS  # length of an uncut text answer

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.token_delay_ms < 0:
            raise ValueError("latency_ms and token_delay_ms must not be negative")
        if self.output_tokens < 1:
            raise ValueError("output_tokens must be at least 1")


class SeenRequest(msgspec.Struct, kw_only=True):
    """The last request a route received, as it arrived (for checking what a proxy sent)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None  # the decoded JSON body; the raw text when it was not JSON


class Stats(msgspec.Struct, kw_only=True):
    """A snapshot of what the server has received since start or the last reset."""

    requests_total: int = 0
    requests: dict[str, dict[str, int]] = {}  # route -> model -> count
    faults_served: dict[str, int] = {}  # fault kind -> count
    last: dict[str, SeenRequest] = {}  # route -> last request


class _Arrival:
    """What `record` keeps per route: references only, decoded when stats are read."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(self, request: web.Request, body: bytes) -> None:
        self.method = request.method
        self.path = request.path
        self.query = request.query
        self.headers: CIMultiDictProxy[str] = request.headers
        self.body = body

    def seen(self) -> SeenRequest:
        body: Any = None
        if self.body:
            try:
                body = msgspec.json.decode(self.body)
            except msgspec.DecodeError:
                body = self.body.decode(errors="replace")
        return SeenRequest(
            method=self.method,
            path=self.path,
            query=dict(self.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )


class FakeState:
    """Everything that changes while the server runs; `reset()` returns it to a fresh start."""

    def __init__(self) -> None:
        self.faults = FaultBook()
        self.prompt_cache = PromptCache()
        self._requests: dict[str, dict[str, int]] = {}
        self._faults_served: dict[str, int] = {}
        self._last: dict[str, _Arrival] = {}
        self._total = 0

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    def clear_faults(self) -> int:
        return self.faults.clear()

    def reset(self) -> None:
        self.faults.clear()
        self.prompt_cache.clear()
        self._requests.clear()
        self._faults_served.clear()
        self._last.clear()
        self._total = 0

    def record(self, route: str, model: str, request: web.Request, body: bytes) -> None:
        self._total += 1
        per_model = self._requests.setdefault(route, {})
        per_model[model] = per_model.get(model, 0) + 1
        self._last[route] = _Arrival(request, body)

    def record_fault(self, fault: Fault) -> None:
        self._faults_served[fault.kind] = self._faults_served.get(fault.kind, 0) + 1

    @property
    def stats(self) -> Stats:
        return Stats(
            requests_total=self._total,
            requests={route: dict(models) for route, models in self._requests.items()},
            faults_served=dict(self._faults_served),
            last={route: arrival.seen() for route, arrival in self._last.items()},
        )


SETTINGS = web.AppKey("fakeprovider.settings", Settings)
STATE = web.AppKey("fakeprovider.state", FakeState)
