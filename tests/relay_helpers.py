"""Helpers for tests that drive a real relay on 127.0.0.1 with real clients.

``running_relay(**config)`` starts ``relay.server.serve`` in its own nursery and yields the running
``Relay``; ``open_tunnel(relay)`` opens a paired tunnel with trio-websocket clients exactly as the
protocol reference (docs/protocol.md) prescribes; ``raw_http`` sends arbitrary bytes and parses
the HTTP response, for the requests a WebSocket client library refuses to send.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio_websocket

from relay.server import Relay, RelayConfig, serve

SUBPROTOCOL = "fido.cable"

#: Runs the relay tests on one engine ("reactor" or "tasks") instead of the default ("auto"):
#: ``HYBRID_TEST_RELAY_ENGINE=tasks ./dev test tests/test_relay_pairing.py``. A test that names
#: its engine keeps it.
ENGINE_VARIABLE = "HYBRID_TEST_RELAY_ENGINE"


def engine_override() -> str | None:
    """The engine ``HYBRID_TEST_RELAY_ENGINE`` asks for, or None (the config default)."""
    return os.environ.get(ENGINE_VARIABLE, "").strip() or None


def relay_config(**config: object) -> RelayConfig:
    """``RelayConfig(**config)``, on the engine of ``HYBRID_TEST_RELAY_ENGINE`` unless named.

    A relay the reactor cannot serve (TLS, PROXY protocol) stays on "auto" (so: tasks) when the
    override asks for the reactor.
    """
    engine = engine_override()
    reactor_cannot = config.get("tls_cert") is not None or bool(config.get("proxy_protocol"))
    if engine is not None and not (engine == "reactor" and reactor_cannot):
        config.setdefault("engine", engine)
    return RelayConfig(**config)  # type: ignore[arg-type]


@asynccontextmanager
async def running_relay(**config: object) -> AsyncIterator[Relay]:
    """A relay on 127.0.0.1, port 0, with ``config`` overriding RelayConfig defaults.

    The engine is ``HYBRID_TEST_RELAY_ENGINE``'s when set and ``config`` names none.
    """
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve, relay_config(**config))
        try:
            yield relay
        finally:
            nursery.cancel_scope.cancel()


def new_tunnel_id() -> str:
    return secrets.token_bytes(16).hex().upper()


def routing_id_of(ws: trio_websocket.WebSocketConnection) -> str:
    values = [v for k, v in ws.handshake_headers if k.lower() == b"x-cable-routing-id"]
    assert len(values) == 1, ws.handshake_headers
    return values[0].decode("ascii")


def new_url(relay: Relay, tunnel_id: str) -> str:
    return f"{relay.base_url}/cable/new/{tunnel_id}"


def connect_url(relay: Relay, routing_id: str, tunnel_id: str) -> str:
    return f"{relay.base_url}/cable/connect/{routing_id}/{tunnel_id}"


def open_ws(url: str, **kwargs: object):
    kwargs.setdefault("subprotocols", [SUBPROTOCOL])
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("disconnect_timeout", 5)
    return trio_websocket.open_websocket_url(url, **kwargs)  # type: ignore[arg-type]


@dataclass
class Tunnel:
    authenticator: trio_websocket.WebSocketConnection
    initiator: trio_websocket.WebSocketConnection
    tunnel_id: str
    routing_id: str


@asynccontextmanager
async def open_tunnel(relay: Relay, tunnel_id: str | None = None) -> AsyncIterator[Tunnel]:
    """Authenticator opens /cable/new, initiator joins with /cable/connect."""
    tunnel_id = tunnel_id or new_tunnel_id()
    async with open_ws(new_url(relay, tunnel_id)) as authenticator:
        routing_id = routing_id_of(authenticator)
        async with open_ws(connect_url(relay, routing_id, tunnel_id)) as initiator:
            yield Tunnel(authenticator, initiator, tunnel_id, routing_id)


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


async def expect_close(ws: trio_websocket.WebSocketConnection, timeout: float = 5.0) -> int:
    """Read until the relay closes ``ws``; return the close code (messages are an error)."""
    with trio.fail_after(timeout):
        try:
            message = await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code
    raise AssertionError(f"expected a close, got a message of {len(message)} bytes")


async def expect_rejected(url: str, **kwargs: object) -> trio_websocket.ConnectionRejected:
    try:
        async with open_ws(url, **kwargs):
            pass
    except trio_websocket.ConnectionRejected as exc:
        return exc
    raise AssertionError(f"{url} was accepted")


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> HttpResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpResponse(status, headers, body)


async def raw_http(port: int, request: bytes, timeout: float = 5.0) -> HttpResponse:
    """Send raw request bytes and read the response up to the end of its head (and body)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while True:
                if b"\r\n\r\n" in data:
                    response = parse_response(data)
                    length = int(response.headers.get("content-length", "-1"))
                    if response.status == 101 or len(response.body) >= length >= 0:
                        return response
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    return parse_response(data)


def upgrade_request(
    path: str,
    *,
    method: str = "GET",
    subprotocol: str | None = SUBPROTOCOL,
    extra: str = "",
    version: str = "13",
) -> bytes:
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    text = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return text.encode("latin-1")
