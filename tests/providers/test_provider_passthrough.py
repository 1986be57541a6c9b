"""Same-format traffic and the connection layer: bytes through unchanged, pools kept alive,
egress through the environment's proxy, TLS verified unless policy says otherwise."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import openai
import pytest
from gateway_kit import Gateway
from tls_kit import Tls
from upstreams_kit import BedrockFake, Canned, ForwardProxy, Server

from fakeprovider.app import FakeProvider

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"model":"claude-x","content":[],"stop_reason":null,"stop_sequence":null,"usage":'
    b'{"input_tokens":7,"cache_read_input_tokens":3,"cache_creation_input_tokens":2,'
    b'"output_tokens":1}}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":9}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
OPENAI_BODY = (
    b'{ "id": "chatcmpl-1",  "object": "chat.completion", "model": "gpt-x",\n'
    b'  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},'
    b' "finish_reason": "stop"}],\n'
    b'  "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},'
    b' "x_vendor_field": [1, 2, 3] }'
)


def canned_policy(kind: str, base_url: str) -> str:
    return f"""
    providers:
      up: {{kind: {kind}, base_url: "{base_url}"}}
    models:
      canned: {{deployments: [{{provider: up, model: canned-upstream}}]}}
    """


async def test_an_anthropic_stream_to_anthropic_passes_through_byte_for_byte(
    tmp_path: Path,
) -> None:
    canned = Canned(ANTHROPIC_STREAM, "text/event-stream")
    async with (
        Server(canned.app) as up,
        Gateway(tmp_path, canned_policy("anthropic", up.url)) as gw,
    ):
        async with aiohttp.ClientSession() as session:
            body = {"model": "canned", "max_tokens": 10, "stream": True,
                    "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
            headers = {"anthropic-version": "2023-06-01"}
            async with session.post(f"{gw.url}/v1/messages", json=body, headers=headers) as r:
                received = await r.read()
        record = await gw.record()
    assert received == ANTHROPIC_STREAM
    assert (record.input_tokens, record.cached_input_tokens, record.cache_write_tokens) == (
        12,
        3,
        2,
    )
    assert record.output_tokens == 9
    assert record.model_served == "claude-x"


async def test_an_error_inside_a_same_format_stream_passes_through_and_is_recorded(
    tmp_path: Path,
) -> None:
    cut = ANTHROPIC_STREAM.index(b"event: content_block_stop")
    overloaded = (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    body = ANTHROPIC_STREAM[:cut] + overloaded
    canned = Canned(body, "text/event-stream")
    async with (
        Server(canned.app) as up,
        Gateway(tmp_path, canned_policy("anthropic", up.url)) as gw,
    ):
        async with aiohttp.ClientSession() as session:
            request = {"model": "canned", "max_tokens": 10, "stream": True,
                       "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
            headers = {"anthropic-version": "2023-06-01"}
            async with session.post(f"{gw.url}/v1/messages", json=request, headers=headers) as r:
                received = await r.read()
        record = await gw.record()
    assert received == body
    assert (record.error_class, record.error_message) == ("upstream_error", "Overloaded")


async def test_an_openai_answer_to_openai_passes_through_byte_for_byte(tmp_path: Path) -> None:
    canned = Canned(OPENAI_BODY, "application/json")
    async with Server(canned.app) as up, Gateway(tmp_path, canned_policy("openai", up.url)) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "canned", "messages": [{"role": "user", "content": "Hi"}]}
            async with session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
                received = await r.read()
        record = await gw.record()
    assert received == OPENAI_BODY
    assert (record.input_tokens, record.output_tokens, record.model_served) == (5, 1, "gpt-x")


async def test_requests_to_a_provider_reuse_one_keep_alive_connection(tmp_path: Path) -> None:
    canned = Canned(OPENAI_BODY, "application/json")
    async with Server(canned.app) as up, Gateway(tmp_path, canned_policy("openai", up.url)) as gw:
        client = gw.openai()
        for _ in range(5):
            await client.chat.completions.create(
                model="canned", messages=[{"role": "user", "content": "Hi"}]
            )
    assert len(canned.ports) == 5
    assert len(set(canned.ports)) == 1


async def test_egress_goes_through_the_proxy_named_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ForwardProxy()
    async with FakeProvider() as fake, Server(proxy.app) as proxy_server:
        monkeypatch.setenv("HTTP_PROXY", proxy_server.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy_server.url)
        for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        async with Gateway(tmp_path, canned_policy("openai", f"{fake.url}/v1")) as gw:
            # aiohttp ignores the proxy variables unless told to: the app-to-sidecar hop is direct.
            body = {"model": "canned", "messages": [{"role": "user", "content": "Hi"}]}
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{gw.url}/v1/chat/completions", json=body) as r,
            ):
                assert r.status == 200
    assert proxy.urls == [f"{fake.url}/v1/chat/completions"]


async def test_tls_is_verified_by_default_and_a_ca_file_can_be_trusted(tmp_path: Path) -> None:
    tls = Tls(tmp_path / "tls")
    canned = Canned(OPENAI_BODY, "application/json")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    async with Server(canned.app, ssl_context=context) as up:
        base = f"https://127.0.0.1:{up.port}"
        untrusted = canned_policy("openai", base)
        trusted = untrusted.replace("base_url:", f'ca_file: "{tls.ca_file}", base_url:')
        async with Gateway(tmp_path / "a", untrusted) as gw:
            with pytest.raises(openai.APIStatusError) as caught:
                await gw.openai().chat.completions.create(
                    model="canned", messages=[{"role": "user", "content": "Hi"}]
                )
            assert caught.value.status_code == 502
            assert (await gw.record()).error_class == "upstream_unavailable"
        async with Gateway(tmp_path / "b", trusted) as gw:
            completion = await gw.openai().chat.completions.create(
                model="canned", messages=[{"role": "user", "content": "Hi"}]
            )
    assert completion.choices[0].message.content == "Hi"


async def test_a_bedrock_credential_is_sent_as_an_api_key_instead_of_signing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_BEDROCK_KEY", "bedrock-api-key")
    bedrock = BedrockFake()
    async with Server(bedrock.app) as up:
        policy = canned_policy("bedrock", up.url).replace(
            "base_url:", 'credential: "env:SG_TEST_BEDROCK_KEY", base_url:'
        )
        async with Gateway(tmp_path, policy) as gw:
            completion = await gw.openai().chat.completions.create(
                model="canned", messages=[{"role": "user", "content": "Hi"}]
            )
    assert completion.choices[0].message.content == "Hello from Bedrock."
    headers = bedrock.requests[-1][1]
    assert headers["Authorization"] == "Bearer bedrock-api-key"
    assert bedrock.requests[-1][0] == "/model/canned-upstream/converse"
