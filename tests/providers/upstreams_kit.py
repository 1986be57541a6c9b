"""Upstreams the fake provider does not speak, as small real servers: Bedrock Converse, an
Azure OpenAI front, a canned-bytes server and an HTTP forward proxy.

A unique module name (no package here). The Bedrock fake checks the SigV4 authorization
header's shape and answers Converse and ConverseStream (AWS event-stream frames); the Azure
front checks `api-key` and `api-version` and forwards to the fake provider's OpenAI routes.
"""

from __future__ import annotations

import json
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AWS_KEY_ID = "AKIDSIDEGATETEST"
BEDROCK_TEXT = ("Hello", " from", " Bedrock.")


class Server:
    """An aiohttp app on a random local port."""

    def __init__(self, app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.port = 0
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Server:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- Bedrock Converse --------------------------------------------------------------------------


def event_frame(event_type: str, payload: dict[str, Any], message_type: str = "event") -> bytes:
    """One AWS event-stream message (prelude, headers, payload, CRCs)."""
    kind = ":exception-type" if message_type == "exception" else ":event-type"
    headers = b""
    for name, value in (
        (kind, event_type),
        (":content-type", "application/json"),
        (":message-type", message_type),
    ):
        n, v = name.encode(), value.encode()
        headers += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(headers) + len(body) + 4, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


class BedrockFake:
    """Converse and ConverseStream with deterministic answers; keeps the last request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []  # path, headers, body
        self.throttle = 0  # answer this many next requests with a 429
        self.app = web.Application()
        self.app.router.add_post("/model/{model}/converse", self.converse)
        self.app.router.add_post("/model/{model}/converse-stream", self.converse_stream)

    @property
    def last(self) -> Any:
        return self.requests[-1][2]

    def _admit(self, request: web.Request, body: Any) -> web.Response | None:
        self.requests.append((request.path, dict(request.headers), body))
        auth = request.headers.get("authorization", "")
        signed = auth.startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/") and (
            "/bedrock/aws4_request" in auth and "x-amz-date" in request.headers
        )
        if not (signed or auth == "Bearer bedrock-api-key"):
            return web.json_response({"message": "The security token is invalid."}, status=403)
        if self.throttle > 0:
            self.throttle -= 1
            return web.json_response(
                {"message": "Too many requests, please wait."},
                status=429,
                headers={"x-amzn-ErrorType": "ThrottlingException"},
            )
        return None

    @staticmethod
    def _tool(body: Any) -> dict[str, Any] | None:
        config = body.get("toolConfig")
        if not config:
            return None
        choice = config.get("toolChoice") or {}
        tools = [t["toolSpec"] for t in config["tools"]]
        if "tool" in choice:
            return next(t for t in tools if t["name"] == choice["tool"]["name"])
        return tools[0] if "any" in choice else None

    @staticmethod
    def _usage(output: int) -> dict[str, int]:
        # inputTokens excludes the cache read, as Converse reports it.
        return {
            "inputTokens": 11,
            "outputTokens": output,
            "totalTokens": 15 + output,
            "cacheReadInputTokens": 4,
            "cacheWriteInputTokens": 0,
        }

    async def converse(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        refused = self._admit(request, body)
        if refused is not None:
            return refused
        tool = self._tool(body)
        limit = (body.get("inferenceConfig") or {}).get("maxTokens") or 100
        if tool is not None:
            content = [
                {
                    "toolUse": {
                        "toolUseId": "tooluse_1",
                        "name": tool["name"],
                        "input": {"city": "Paris"},
                    }
                }
            ]
            stop, output = "tool_use", 5
        else:
            pieces = BEDROCK_TEXT[:limit]
            content = [{"text": "".join(pieces)}]
            stop, output = ("max_tokens" if len(pieces) < 3 else "end_turn"), len(pieces)
        return web.json_response(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop,
                "usage": self._usage(output),
                "metrics": {"latencyMs": 5},
            }
        )

    async def converse_stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        refused = self._admit(request, body)
        if refused is not None:
            return refused
        response = web.StreamResponse(
            headers={"content-type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        tool = self._tool(body)
        frames = [event_frame("messageStart", {"role": "assistant"})]
        if tool is not None:
            start = {"toolUse": {"toolUseId": "tooluse_1", "name": tool["name"]}}
            frames.append(
                event_frame("contentBlockStart", {"contentBlockIndex": 0, "start": start})
            )
            for part in ('{"city":', ' "Paris"}'):
                delta = {"toolUse": {"input": part}}
                frames.append(
                    event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
                )
            stop, output = "tool_use", 5
        else:
            frames.extend(
                event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}})
                for p in BEDROCK_TEXT
            )
            stop, output = "end_turn", len(BEDROCK_TEXT)
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
        frames.append(event_frame("messageStop", {"stopReason": stop}))
        frames.append(
            event_frame("metadata", {"usage": self._usage(output), "metrics": {"latencyMs": 5}})
        )
        for frame in frames:
            # Split frames across writes, so the decoder must reassemble them.
            await response.write(frame[:7])
            await response.write(frame[7:])
        await response.write_eof()
        return response


# --- Azure OpenAI front ------------------------------------------------------------------------


class AzureFront:
    """`/openai/deployments/{name}/…?api-version=` with `api-key`, forwarded to the fake."""

    def __init__(self, fake_url: str, *, api_key: str) -> None:
        self.fake_url = fake_url
        self.api_key = api_key
        self.seen: list[tuple[str, str]] = []  # deployment, api-version
        self.app = web.Application()
        self.app.router.add_post("/openai/deployments/{deployment}/{tail:.*}", self.forward)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        version = request.query.get("api-version")
        if request.headers.get("api-key") != self.api_key or not version:
            return web.json_response(
                {"error": {"code": "401", "message": "Access denied"}}, status=401
            )
        self.seen.append((request.match_info["deployment"], version))
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-fake")}
        headers["content-type"] = "application/json"
        headers["authorization"] = f"Bearer {self.api_key}"  # the fake speaks OpenAI's auth
        url = f"{self.fake_url}/v1/{request.match_info['tail']}"
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as upstream,
        ):
            response = web.StreamResponse(
                status=upstream.status,
                headers={"content-type": upstream.headers.get("content-type", "application/json")},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


# --- canned bytes and a forward proxy ----------------------------------------------------------


class Canned:
    """Answers every POST with fixed bytes; notes each request's client port (keep-alive)."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.ports: list[int] = []
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        response = web.StreamResponse(headers={"content-type": self.content_type})
        await response.prepare(request)
        for i in range(0, len(self.body), 37):  # odd-sized writes, as a network would deliver
            await response.write(self.body[i : i + 37])
        await response.write_eof()
        return response


class ForwardProxy:
    """A plain HTTP forward proxy: absolute-form requests in, the same request out."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.forward)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        target = str(request.url)
        self.urls.append(target)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "proxy-connection")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target, data=await request.read(), headers=headers
            ) as upstream,
        ):
            body = await upstream.read()
            return web.Response(
                body=body,
                status=upstream.status,
                headers={"content-type": upstream.headers.get("content-type", "application/json")},
            )
