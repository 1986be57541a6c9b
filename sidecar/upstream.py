"""The upstream HTTP client: one keep-alive pool, per-provider timeouts, failures as exceptions."""

from __future__ import annotations

import aiohttp

from sidecar.context import RequestContext
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.policy import CompiledDeployment


class UpstreamClient:
    """Owns the connection pool shared by every request of this sidecar."""

    def __init__(self, *, pool_size: int = 256) -> None:
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[int, int, int], aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, keepalive_timeout=30, ttl_dns_cache=300
        )
        # trust_env: egress honours HTTPS_PROXY / NO_PROXY like every other HTTP client.
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=True,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _timeout(self, d: CompiledDeployment) -> aiohttp.ClientTimeout:
        p = d.provider
        key = (p.connect_timeout_ms, p.first_byte_timeout_ms, p.total_timeout_ms)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # sock_read bounds the wait for the first byte and for every later read.
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=key[2] / 1000, sock_connect=key[0] / 1000, sock_read=key[1] / 1000
            )
        return timeout

    async def post(self, ctx: RequestContext, body: bytes) -> aiohttp.ClientResponse:
        """Send the request; returns once the upstream's status and headers have arrived."""
        assert self._session is not None and ctx.deployment is not None
        d = ctx.deployment
        headers = d.request_headers()
        headers["x-request-id"] = ctx.record_id
        if ctx.identity.traceparent:
            headers["traceparent"] = ctx.identity.traceparent
        url = d.base_url + ctx.route.upstream_path
        try:
            return await self._session.post(
                url, data=body, headers=headers, timeout=self._timeout(d)
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"The upstream {d.label} did not answer in time.", deployment=d.label
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise UpstreamUnavailable(
                f"The upstream {d.label} is unreachable: {exc.__class__.__name__}",
                deployment=d.label,
            ) from exc
