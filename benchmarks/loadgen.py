"""A lean HTTP/1.1 keep-alive load generator on raw asyncio protocols, for the benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

_now = time.perf_counter_ns


def build_request(host: str, port: int, path: str, body: bytes, *, api_key: str) -> bytes:
    """One pre-encoded POST, sent as-is every time so the generator never re-encodes."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Authorization: Bearer {api_key}",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Run:
    """What one load step observed; times in nanoseconds of time.perf_counter_ns."""

    completed: int = 0
    errors: int = 0
    elapsed_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    ttfb_ns: list[int] = field(default_factory=list)  # first body byte, i.e. first SSE event
    send_lag_ns: list[int] = field(default_factory=list)  # open loop: timer lateness
    late: int = 0  # open loop: unanswered when the step was cut off
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(what)


class _Connection(asyncio.Protocol):
    """One keep-alive connection with an incremental response parser (length or chunked).

    Callbacks instead of awaiting futures keep per-request overhead to a few microseconds,
    which is what lets one Python process out-run the servers it measures.
    """

    def __init__(self, on_done: Callable[[_Connection, int, int, int], None]) -> None:
        self.on_done = on_done  # (connection, status, first_body_ns, done_ns)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.dead = False
        self.sent_ns = 0
        self.wait_ns = 0  # open loop: how long the request waited for this connection
        self.free_at_ns = 0
        self.pending: deque[int] = deque()  # open loop: intended send times not yet sent
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._head = True
        self._status = 0
        self._first_ns = 0
        self._chunked = False
        self._last = False
        self._remaining = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        if self.busy:
            self.busy = False
            self.on_done(self, 0, 0, _now())

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.sent_ns = _now()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        now = _now()
        buf = self._buf + data if self._buf else data
        self._buf = b""  # whatever is left unparsed below is put back
        if self._head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            head = buf[:end].lower()
            self._status = int(head[9:12])
            self._chunked = b"transfer-encoding: chunked" in head
            if not self._chunked:
                at = head.find(b"content-length:")
                if at < 0:
                    raise ValueError("response has neither content-length nor chunked encoding")
                eol = head.find(b"\r\n", at)
                self._remaining = int(head[at + 15 : eol if eol > 0 else len(head)])
            self._head = False
            buf = buf[end + 4 :]
        if buf and not self._first_ns:
            self._first_ns = now
        done = self._consume(buf)
        if done:
            first, status = self._first_ns or now, self._status
            self._reset()
            self.busy = False
            self.on_done(self, status, first, now)

    def _consume(self, buf: bytes) -> bool:
        """Eat body bytes; True once the response is complete (pipelining is never used)."""
        if not self._chunked:
            self._remaining -= len(buf)
            return self._remaining <= 0
        pos = 0
        while True:
            if self._remaining:  # inside a chunk: its data and the CRLF after it
                take = min(self._remaining, len(buf) - pos)
                pos += take
                self._remaining -= take
                if self._remaining:
                    return False
                if self._last:
                    return True
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self._buf = buf[pos:]
                return False
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            self._remaining = size + 2
            # The zero-size chunk: only the blank line after it is left (no trailers are
            # sent by the servers measured here).
            self._last = size == 0


async def _connect(
    host: str, port: int, on_done: Callable[[_Connection, int, int, int], None], n: int
) -> list[_Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(n):
        _, conn = await loop.create_connection(lambda: _Connection(on_done), host, port)
        conns.append(conn)
    return conns


async def _bounded(
    finished: asyncio.Future[None], budget_s: float, conns: list[_Connection]
) -> None:
    """Wait for a step, but never forever: a stuck server must fail the run, not hang it."""
    try:
        await asyncio.wait_for(finished, timeout=budget_s + 60)
    except TimeoutError:
        _close(conns)
        raise


def _close(conns: list[_Connection]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


async def closed_loop(
    host: str,
    port: int,
    request: bytes,
    *,
    connections: int,
    duration_s: float | None = None,
    requests: int | None = None,
    probe: Callable[[], None] | None = None,
) -> Run:
    """Each connection sends its next request as soon as the previous answer is complete.

    Ends after `duration_s` or after `requests` completions; one connection is a sequential
    client. At high concurrency this measures throughput: its latencies are queueing time.
    `probe` runs once half-way through, e.g. to read memory under load.
    """
    loop = asyncio.get_running_loop()
    run = Run()
    finished = loop.create_future()
    started = 0
    deadline = 0

    def on_done(conn: _Connection, status: int, first_ns: int, done_ns: int) -> None:
        nonlocal started
        if status == 200:
            run.completed += 1
            run.latencies_ns.append(done_ns - conn.sent_ns)
            run.ttfb_ns.append(first_ns - conn.sent_ns)
        else:
            run.fail(f"status {status}")
        more = done_ns < deadline if requests is None else started < requests
        if more and status:
            started += 1
            conn.send(request)
        elif not any(c.busy for c in conns) and not finished.done():
            finished.set_result(None)

    conns = await _connect(host, port, on_done, connections)
    if probe is not None and duration_s is not None:
        loop.call_later(duration_s / 2, probe)
    t0 = _now()
    deadline = t0 + int((duration_s or 1e6) * 1e9)
    for conn in conns:
        if requests is None or started < requests:
            started += 1
            conn.send(request)
    await _bounded(finished, (duration_s or 0.0) * 3 + (requests or 0) * 0.1, conns)
    run.elapsed_ns = _now() - t0
    _close(conns)
    return run


async def open_loop(
    host: str,
    port: int,
    request: bytes,
    *,
    rate_per_s: float,
    connections: int,
    duration_s: float,
) -> Run:
    """Requests at fixed times, independent of answers (wrk2-style, no coordinated omission).

    Each connection has its own schedule, staggered so the offered load is even. A request
    whose connection is still busy at its intended time waits, and that wait counts in its
    latency; the generator's own timer lateness does not count (it is reported as send lag).
    A target that cannot keep up is cut off `duration_s` after the schedule ends: what is still
    queued or in flight then counts as late, at its latency so far (a lower bound).
    """
    loop = asyncio.get_running_loop()
    run = Run()
    interval_ns = int(connections / rate_per_s * 1e9)
    per_conn = max(1, int(duration_s * rate_per_s / connections))
    outstanding = connections * per_conn
    fired = 0  # timers run so far
    finished = loop.create_future()

    def dispatch(conn: _Connection, intended_ns: int) -> None:
        now = _now()
        conn.wait_ns = max(0, conn.free_at_ns - intended_ns)
        run.send_lag_ns.append(now - max(intended_ns, conn.free_at_ns))
        conn.send(request)

    def on_done(conn: _Connection, status: int, first_ns: int, done_ns: int) -> None:
        nonlocal outstanding
        if finished.done():
            return  # cut off: already counted as late
        outstanding -= 1
        if status == 200:
            run.completed += 1
            run.latencies_ns.append(done_ns - conn.sent_ns + conn.wait_ns)
        else:
            run.fail(f"status {status}")
        conn.free_at_ns = done_ns
        if conn.dead:  # what was queued on a lost connection is never sent
            outstanding -= len(conn.pending)
            for _ in conn.pending:
                run.fail("connection lost")
            conn.pending.clear()
        elif conn.pending:
            dispatch(conn, conn.pending.popleft())
        if outstanding <= 0 and not finished.done():
            finished.set_result(None)

    def due(conn: _Connection, intended_ns: int) -> None:
        nonlocal outstanding, fired
        fired += 1
        if conn.dead:
            outstanding -= 1
            run.fail("connection lost")
            if outstanding <= 0 and not finished.done():
                finished.set_result(None)
        elif conn.busy:
            conn.pending.append(intended_ns)
        else:
            dispatch(conn, intended_ns)

    conns = await _connect(host, port, on_done, connections)
    t0_loop, t0 = loop.time() + 0.01, _now() + 10_000_000
    timers = []
    for k, conn in enumerate(conns):
        offset = k * interval_ns // connections
        for j in range(per_conn):
            intended = t0 + offset + j * interval_ns
            timers.append(loop.call_at(t0_loop + (intended - t0) / 1e9, due, conn, intended))
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout=2 * duration_s + 1)
    except TimeoutError:
        now = _now()
        if not finished.done():
            finished.set_result(None)
        for timer in timers:
            timer.cancel()
        for _ in range(len(timers) - fired):
            run.fail("not sent: the generator fell behind its schedule")
        for conn in conns:
            if conn.busy:
                run.late += 1
                run.latencies_ns.append(now - conn.sent_ns + conn.wait_ns)
            run.late += len(conn.pending)
            run.latencies_ns.extend(now - intended for intended in conn.pending)
    run.elapsed_ns = _now() - t0
    _close(conns)
    return run
