"""The load generator's client connections: hand-rolled WebSocket and raw-TCP framing on asyncio.

Both are ``asyncio.Protocol`` subclasses driven by callbacks, so a forwarded message costs the
load generator one ``data_received`` slice and no task switch. The WebSocket client masks with
the all-zero key: RFC 6455 asks clients for an unpredictable key, but the server has to run its
unmasking code either way, and the zero key lets the load generator skip a Python XOR loop. The
relay's cost is therefore the same as with any other client while ours stays small.

``TcpConn`` speaks the preamble of ``bench/reference/tcp_relay.py`` and 4-byte length-prefixed
frames; it exists only to measure the raw TCP floor.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections import deque
from collections.abc import Callable

SUBPROTOCOL = "fido.cable"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ZERO_MASK = b"\x00\x00\x00\x00"
CLOSE_NORMAL = struct.pack("!H", 1000)


class WireError(Exception):
    """A handshake was refused or a connection broke during a scenario."""


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked (zero key) client frame; the zero key makes the payload its own masked form."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    return head + ZERO_MASK + payload


class Conn(asyncio.Protocol):
    """Common state: an inbox (or an ``on_message`` callback) and a ``closed`` future."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_message: Callable[[bytes], None] | None = None
        self.inbox: deque[bytes] = deque()
        self.waiter: asyncio.Future[bytes] | None = None
        self.routing_id = ""
        self.buf = b""
        self.can_write = True
        self.write_ready: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(WireError(f"connection lost in the handshake: {exc or 'EOF'}"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(WireError("connection closed while awaiting a message"))
        if self.write_ready is not None and not self.write_ready.done():
            self.write_ready.set_result(None)

    def pause_writing(self) -> None:
        self.can_write = False

    def resume_writing(self) -> None:
        self.can_write = True
        if self.write_ready is not None and not self.write_ready.done():
            self.write_ready.set_result(None)

    def deliver(self, payload: bytes) -> None:
        if self.on_message is not None:
            self.on_message(payload)
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(payload)
            self.waiter = None
        else:
            self.inbox.append(payload)

    async def recv(self) -> bytes:
        if self.inbox:
            return self.inbox.popleft()
        if self.closed.done():
            raise WireError("connection closed while awaiting a message")
        self.waiter = asyncio.get_running_loop().create_future()
        return await self.waiter

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def send(self, payload: bytes) -> None:
        """Send one message (framed for the relay kind)."""
        raise NotImplementedError

    def frame(self, payload: bytes) -> bytes:
        """One message framed for the wire, to be written later (batched sends)."""
        raise NotImplementedError

    def close(self, code: int = 1000) -> None:
        """Start a graceful close; ``closed`` resolves when the connection is gone."""
        raise NotImplementedError


class WsConn(Conn):
    """A WebSocket client connection to a relay (binary messages only)."""

    def __init__(self, request: bytes, key: bytes, expect_routing_id: bool) -> None:
        super().__init__()
        self.request = request
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.expect_routing_id = expect_routing_id
        self.handshaking = True
        self.close_sent = False
        self.close_code: int | None = None
        self.fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.write(self.request)  # type: ignore[attr-defined]

    def send(self, payload: bytes) -> None:
        self.transport.write(ws_frame(2, payload))  # type: ignore[union-attr]

    def frame(self, payload: bytes) -> bytes:
        return ws_frame(2, payload)

    def close(self, code: int = 1000) -> None:
        if not self.close_sent and not self.closed.done():
            self.close_sent = True
            self.transport.write(ws_frame(8, struct.pack("!H", code)))  # type: ignore[union-attr]

    def _handshake(self, data: bytes) -> bytes | None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self._fail("oversized handshake response")
            return None
        head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        self.buf = b""
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._fail(f"handshake refused: {lines[0]}")
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept", "").encode() != self.accept:
            self._fail("bad Sec-WebSocket-Accept")
            return None
        if headers.get("sec-websocket-protocol") != SUBPROTOCOL:
            self._fail("relay did not select the fido.cable subprotocol")
            return None
        if self.expect_routing_id:
            self.routing_id = headers.get("x-cable-routing-id", "")
            if len(self.routing_id) != 6:
                self._fail("no X-caBLE-Routing-ID in the /cable/new response")
                return None
        self.handshaking = False
        self.ready.set_result(None)
        return rest

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(WireError(reason))
        self.transport.abort()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.handshaking:
            data = self._handshake(data)  # type: ignore[assignment]
            if not data:
                return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                self._fail("server sent a masked frame")
                return
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            payload = buf[start:end]
            pos = end
            opcode = b0 & 0x0F
            if b0 & 0x80 and opcode == 2:
                self.deliver(payload)
            elif opcode in (0, 2):  # fragmented binary message: reassemble
                self.fragments.append(payload)
                if b0 & 0x80:
                    self.deliver(b"".join(self.fragments))
                    self.fragments.clear()
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                if not self.close_sent:
                    self.close_sent = True
                    self.transport.write(ws_frame(8, payload[:2]))  # type: ignore[union-attr]
            elif opcode == 9:
                self.transport.write(ws_frame(10, payload))  # type: ignore[union-attr]
            elif opcode == 1:
                self._fail("relay forwarded a text frame")
                return
        self.buf = buf[pos:] if pos < n else b""


class TcpConn(Conn):
    """A raw TCP connection to the floor relay: preamble, then length-prefixed frames."""

    def __init__(self, preamble: bytes, reply_len: int) -> None:
        super().__init__()
        self.preamble = preamble
        self.reply_len = reply_len
        self.handshaking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.write(self.preamble)  # type: ignore[attr-defined]

    def send(self, payload: bytes) -> None:
        self.transport.write(struct.pack("!I", len(payload)) + payload)  # type: ignore[union-attr]

    def frame(self, payload: bytes) -> bytes:
        return struct.pack("!I", len(payload)) + payload

    def close(self, code: int = 1000) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        if self.handshaking:
            if len(buf) < self.reply_len:
                self.buf = buf
                return
            reply = buf[: self.reply_len]
            if reply[:1] == b"R":
                self.routing_id = reply[1:4].hex().upper()
            self.handshaking = False
            self.ready.set_result(None)
            pos = self.reply_len
        n = len(buf)
        while n - pos >= 4:
            length = int.from_bytes(buf[pos : pos + 4], "big")
            end = pos + 4 + length
            if end > n:
                break
            self.deliver(buf[pos + 4 : end])
            pos = end
        self.buf = buf[pos:] if pos < n else b""


class Dialer:
    """Opens tunnel endpoints on one relay, WebSocket or raw TCP."""

    def __init__(self, host: str, port: int, kind: str) -> None:
        self.host = host
        self.port = port
        self.kind = kind

    def _ws_request(self, path: str) -> tuple[bytes, bytes]:
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        ).encode()
        return request, key

    async def _open(self, factory: Callable[[], Conn], timeout: float) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(factory, self.host, self.port), timeout
        )
        try:
            await asyncio.wait_for(asyncio.shield(conn.ready), timeout)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def new(self, tunnel_id: bytes, timeout: float = 10.0) -> Conn:
        """The authenticator's side: /cable/new/<tid>; ``routing_id`` is set on return."""
        if self.kind == "tcp":
            return await self._open(lambda: TcpConn(b"N" + tunnel_id, 4), timeout)
        request, key = self._ws_request(f"/cable/new/{tunnel_id.hex().upper()}")
        return await self._open(lambda: WsConn(request, key, True), timeout)

    async def connect(self, routing_id: str, tunnel_id: bytes, timeout: float = 10.0) -> Conn:
        """The initiator's side: /cable/connect/<rid>/<tid>."""
        if self.kind == "tcp":
            preamble = b"C" + bytes.fromhex(routing_id) + tunnel_id
            return await self._open(lambda: TcpConn(preamble, 1), timeout)
        request, key = self._ws_request(f"/cable/connect/{routing_id}/{tunnel_id.hex().upper()}")
        return await self._open(lambda: WsConn(request, key, False), timeout)

    async def tunnel(self, timeout: float = 10.0) -> tuple[Conn, Conn]:
        """A paired tunnel: (authenticator side, initiator side)."""
        tunnel_id = os.urandom(16)
        phone = await self.new(tunnel_id, timeout)
        try:
            desktop = await self.connect(phone.routing_id, tunnel_id, timeout)
        except BaseException:
            phone.abort()
            raise
        return phone, desktop
