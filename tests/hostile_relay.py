"""A relay that accepts TCP on 127.0.0.1 and then misbehaves in one chosen way (issue 12).

``serve_hostile(nursery, behaviour)`` starts a listener on a free port and returns its
``ws://127.0.0.1:PORT`` base URL. Each accepted connection reads the client's request head and hands
the socket to ``behaviour(stream, request_head)``. The behaviours below are the attacks the client
must survive: silence, answers that never end, bytes that are not HTTP, a ``101`` dribbled byte by
byte, and ``101`` answers that break RFC 6455 in one specific way. Every connection's task is owned
by the caller's nursery, so it stops when the test does.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from collections.abc import Awaitable, Callable
from functools import partial

import trio

Behaviour = Callable[[trio.SocketStream, bytes], Awaitable[None]]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.move_on_after(5):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data


def accept_value(request: bytes) -> bytes:
    match = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)\s*$", request)
    key = match[1] if match else b""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def upgrade_response(
    request: bytes, *, drop: str = "", extra: bytes = b"", accept: bytes | None = None
) -> bytes:
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + (accept if accept is not None else accept_value(request)),
        b"Sec-WebSocket-Protocol: fido.cable",
        b"X-caBLE-Routing-ID: A1B2C3",
    ]
    lines = [
        line for line in lines if not (drop and line.lower().startswith(drop.lower().encode()))
    ]
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


async def serve_hostile(nursery: trio.Nursery, behaviour: Behaviour) -> str:
    listeners = await nursery.start(
        partial(trio.serve_tcp, _handler(behaviour), 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


def _handler(behaviour: Behaviour):
    async def handle(stream: trio.SocketStream) -> None:
        try:
            request = await _read_request(stream)
            await behaviour(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    return handle


# ---- point 1: answers that never complete --------------------------------------------------------


async def silent(stream: trio.SocketStream, request: bytes) -> None:
    await trio.sleep_forever()


async def ok_without_length(stream: trio.SocketStream, request: bytes) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>")
    await trio.sleep_forever()


async def huge_content_length(stream: trio.SocketStream, request: bytes) -> None:
    await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 999999999\r\n\r\nshort")
    await trio.sleep_forever()


async def random_bytes(stream: trio.SocketStream, request: bytes) -> None:
    rng = random.Random(12)
    noise = bytes(rng.randrange(256) for _ in range(512))
    await stream.send_all(b"\x16\x03\x01" + noise)  # starts like a TLS record, then noise
    await trio.sleep_forever()


def dribbled_101(interval: float) -> Behaviour:
    async def dribble(stream: trio.SocketStream, request: bytes) -> None:
        for byte in upgrade_response(request):
            await stream.send_all(bytes([byte]))
            await trio.sleep(interval)
        await trio.sleep_forever()

    return dribble


HANGS: dict[str, Behaviour] = {
    "never answers": silent,
    "200 OK without length, kept open": ok_without_length,
    "huge Content-Length, short body": huge_content_length,
    "random bytes": random_bytes,
    "101 dribbled byte by byte": dribbled_101(0.1),
}


# ---- point 2: a 101 that breaks RFC 6455 ---------------------------------------------------------


def answering(make: Callable[[bytes], bytes]) -> Behaviour:
    async def answer(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(make(request))
        await trio.sleep_forever()

    return answer


BAD_UPGRADES: dict[str, tuple[Behaviour, str]] = {
    "wrong Sec-WebSocket-Accept": (
        answering(lambda r: upgrade_response(r, accept=base64.b64encode(b"x" * 20))),
        "Sec-WebSocket-Accept",
    ),
    "101 without Upgrade": (answering(lambda r: upgrade_response(r, drop="Upgrade:")), "Upgrade"),
    "unrequested extension": (
        answering(
            lambda r: upgrade_response(r, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        ),
        "extension",
    ),
    "unrequested subprotocol": (
        answering(
            lambda r: upgrade_response(r, drop="Sec-WebSocket-Protocol").replace(
                b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
            )
        ),
        "subprotocol",
    ),
    "headers over 16 KiB": (
        answering(
            lambda r: upgrade_response(
                r, extra=b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(20))
            )
        ),
        "16384 bytes",
    ),
}
