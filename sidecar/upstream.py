"""The upstream HTTP client: a keep-alive pool per provider, timeouts, failures as exceptions.

Each provider gets its own connection pool (size `max_connections`), TLS context (verification
on unless the policy turns it off, an extra CA bundle if given) and egress proxy, all made once
on first use. The proxy comes from the sidecar's environment (`HTTPS_PROXY`, `HTTP_PROXY`,
`NO_PROXY`), read when the pool is made rather than on every request.

Timeouts per attempt: connect, first byte (until the status line and headers arrive; also the
longest silence allowed between later reads) and total, each cut short by the request's
deadline when one is set.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from typing import Any

import aiohttp
import yarl

from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.policy import CompiledDeployment
from sidecar.providers.bridge import Call


def _proxy_for(url: yarl.URL) -> str | None:
    """The egress proxy for `url` from the environment, honouring NO_PROXY."""
    host = url.host or ""
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


def _ssl(d: CompiledDeployment) -> ssl.SSLContext | bool:
    p = d.provider
    if not p.tls_verify:
        return False
    if p.ca_file:
        return ssl.create_default_context(cafile=p.ca_file)
    return True  # aiohttp's default context: system trust store, hostname checking


class UpstreamClient:
    """Owns the connection pools shared by every request of this sidecar."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[Any, ...], aiohttp.ClientSession] = {}
        self._timeouts: dict[tuple[float, float, float], aiohttp.ClientTimeout] = {}
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    def session(self, d: CompiledDeployment) -> aiohttp.ClientSession:
        """The pool for `d`'s provider: one per provider and connection settings."""
        p = d.provider
        key = (d.provider_id, d.base_url, p.max_connections, p.tls_verify, p.ca_file)
        session = self._sessions.get(key)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=p.max_connections, keepalive_timeout=30, ttl_dns_cache=300, ssl=_ssl(d)
            )
            session = self._sessions[key] = aiohttp.ClientSession(
                connector=connector,
                proxy=_proxy_for(yarl.URL(d.base_url)),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return session

    def _timeout(self, d: CompiledDeployment, total: float) -> aiohttp.ClientTimeout:
        key = (d.connect_timeout_s, d.first_byte_timeout_s, total)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=total, sock_connect=d.connect_timeout_s, sock_read=d.first_byte_timeout_s
            )
            if total == d.total_timeout_s:  # deadline-cut timeouts are one-off: not kept
                self._timeouts[key] = timeout
        return timeout

    async def send(self, call: Call, *, deadline_at: float | None) -> aiohttp.ClientResponse:
        """Send `call`; returns once the status and headers arrived (the first byte).

        Raises UpstreamTimeout (connect, first byte or deadline) or UpstreamUnavailable (the
        connection failed). The caller owns the response and must release it.
        """
        if self._closed:
            raise UpstreamUnavailable("The sidecar is shutting down.")
        d = call.deployment
        first_byte, total = d.first_byte_timeout_s, d.total_timeout_s
        if deadline_at is not None:
            left = deadline_at - time.monotonic()
            if left <= 0:
                raise UpstreamTimeout("The request deadline passed.", deployment=d.label)
            first_byte, total = min(first_byte, left), min(total, left)
        try:
            async with asyncio.timeout(first_byte):
                return await self.session(d).post(
                    yarl.URL(call.url, encoded=True),
                    data=call.body,
                    headers=call.headers,
                    timeout=self._timeout(d, total),
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"The upstream {d.label} did not answer within {first_byte:g}s.",
                deployment=d.label,
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise UpstreamUnavailable(
                f"The upstream {d.label} is unreachable: {exc.__class__.__name__}",
                deployment=d.label,
            ) from exc
