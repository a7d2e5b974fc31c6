"""The WebSocket tunnel client both roles use to reach a relay (docs/protocol.md section 7).

``open_tunnel(url)`` connects, performs the RFC 6455 opening handshake itself and then exchanges
frames through wsproto's sans-IO frame layer. It owns no background task: every byte is read by
the caller's ``receive``, so a silent or hostile relay can only make a call wait as long as the
caller's deadline allows. Three deadlines are ours, around the whole of each operation:

* connect: TCP (+ TLS) + the request + the complete ``101`` head, within ``connect_timeout``
  (10 s by default, ``$HYBRID_RELAY_TIMEOUT`` for the command line);
* close: our close frame, the relay's answer and the socket close, within ``close_timeout``;
* everything in between is bounded by the session's own deadlines.

The handshake is validated strictly, and a relay that breaks it never produces a traceback:

* ``RelayUnreachableError`` (the catalogue's "Passkey Unavailable"): no TCP connection, TLS
  failure, an HTTP status other than 101 (the body is never read), no complete answer in time, or a
  ``101`` that is not a valid ``fido.cable`` upgrade (``RelayHandshakeError``: wrong
  ``Sec-WebSocket-Accept``, no ``Upgrade``, an extension or subprotocol nobody asked for, a head
  over ``MAX_RESPONSE_HEAD`` bytes, bytes that are not HTTP at all);
* ``RelayWentAwayError`` (also "Passkey Unavailable"): the relay itself closed an open tunnel, for
  example with 1001 "going away" when it shuts down;
* ``TunnelClosedError``: the peer closed the tunnel (the relay forwards that as 1000, or 1001 naming
  the side that disconnected), which while a CTAP request is outstanding means the user cancelled;
* ``TunnelProtocolError``: the relay broke the framing rules of an open tunnel (text frames, bad
  frames, a message over ``MAX_MESSAGE_SIZE``, a bad routing-id header).

Messages are whole binary WebSocket messages; fragments are reassembled here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from hybrid.errors import EnvironmentalError, HybridError, ProtocolError, UsageError
from hybrid.tunnel.connection import ConnectionEvent, DesktopConnection, PhoneConnection
from hybrid.tunnel.urls import ROUTING_ID_HEADER, ROUTING_ID_LEN, SUBPROTOCOL

# Browsers accept up to 1 MiB per message (7.3); so do we.
MAX_MESSAGE_SIZE = 1 << 20
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0
TIMEOUT_ENV_VAR = "HYBRID_RELAY_TIMEOUT"
# A relay's 101 carries a handful of short headers; 16 KiB is generous and bounds our memory.
MAX_RESPONSE_HEAD = 16 * 1024
MAX_RESPONSE_HEADERS = 100
RECEIVE_SIZE = 65536
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ROUTING_ID_RE = re.compile(r"^[0-9a-fA-F]{6}$")
_STATUS_LINE_RE = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3})(?: ([\x20-\x7e\t]*))?$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Close codes only a server sends about itself (RFC 6455 §7.4.1, IANA registry).
_RELAY_CLOSE_CODES = {1011, 1012, 1013, 1014}
_GOING_AWAY = 1001
# The relay says which side disconnected when it forwards a peer's disappearance as 1001.
_PEER_WORDS = ("authenticator", "initiator", "peer", "phone", "desktop")


class RelayUnreachableError(EnvironmentalError):
    """The relay could not be reached or refused the WebSocket upgrade."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RelayHandshakeError(RelayUnreachableError):
    """The relay answered the upgrade with something that is not a valid ``fido.cable`` 101."""


class TunnelClosedError(EnvironmentalError):
    """The tunnel closed (peer hung up or the relay tore it down)."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class RelayWentAwayError(RelayUnreachableError):
    """The relay itself ended an open tunnel (shutdown, restart, overload), not the peer."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class TunnelProtocolError(ProtocolError):
    """The relay or peer broke the WebSocket-level tunnel rules."""


def relay_timeout_from_env(default: float = CONNECT_TIMEOUT) -> float:
    """The relay deadline for the command line: ``$HYBRID_RELAY_TIMEOUT`` seconds, else 10."""
    raw = os.environ.get(TIMEOUT_ENV_VAR, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV_VAR} is not a number of seconds: {raw!r}") from None
    if not 0 < value <= 3600:
        raise UsageError(f"{TIMEOUT_ENV_VAR} must be in (0, 3600] seconds, got {raw!r}")
    return value


def _redact(url: str) -> str:
    # Tunnel ids are bearer tokens (14): never print one in full.
    return re.sub(r"([0-9A-Fa-f]{6})[0-9A-Fa-f]{26}\b", r"\1…", url)


def _shown_bytes(data: bytes | bytearray, limit: int = 60) -> str:
    text = repr(bytes(data[:limit]))
    return text + ("…" if len(data) > limit else "")


def _closed_error(code: int | None, reason: str, doing: str) -> HybridError:
    """Who ended the tunnel, from its close frame: the relay itself, or the peer through it."""
    if code is None:
        return TunnelClosedError(f"tunnel closed {doing}(no close frame)", None, "")
    shown = f"code {code}" + (f", {reason}" if reason else "")
    lowered = reason.lower()
    blames_peer = any(word in lowered for word in _PEER_WORDS)
    if code in _RELAY_CLOSE_CODES or (code == _GOING_AWAY and not blames_peer):
        return RelayWentAwayError(f"the relay went away {doing}({shown})", code, reason)
    return TunnelClosedError(f"tunnel closed {doing}({shown})", code, reason)


class _Headers:
    """The response head of the relay's answer, parsed strictly."""

    def __init__(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.fields = fields

    def values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.fields if key == wanted]


def _parse_head(head: bytes, shown: str) -> _Headers:
    lines = head.split(b"\r\n")
    match = _STATUS_LINE_RE.match(lines[0])
    if match is None:
        raise RelayHandshakeError(
            f"relay at {shown} did not answer with HTTP: its first line is {_shown_bytes(lines[0])}"
        )
    major, minor, status = int(match[1]), int(match[2]), int(match[3])
    if (major, minor) != (1, 1):
        raise RelayHandshakeError(f"relay at {shown} answered with HTTP/{major}.{minor}, not 1.1")
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_RE.match(name):
            raise RelayHandshakeError(
                f"relay at {shown} sent a malformed response header line {_shown_bytes(line)}"
            )
        fields.append((name.lower(), value.strip(b" \t")))
        if len(fields) > MAX_RESPONSE_HEADERS:
            raise RelayHandshakeError(
                f"relay at {shown} sent more than {MAX_RESPONSE_HEADERS} response headers"
            )
    return _Headers(status, fields)


def _check_upgrade(headers: _Headers, key: bytes, shown: str) -> None:
    """RFC 6455 §4.1 steps 2-6 for our request (no extensions, exactly ``fido.cable``)."""

    def one(name: str) -> bytes | None:
        found = headers.values(name)
        if len(found) > 1:
            raise RelayHandshakeError(f"relay at {shown} sent {len(found)} {name} headers")
        return found[0] if found else None

    upgrade = one("Upgrade")
    if upgrade is None or upgrade.lower() != b"websocket":
        raise RelayHandshakeError(
            f"relay at {shown} answered 101 without 'Upgrade: websocket' (got {upgrade!r})"
        )
    tokens = [t.strip().lower() for v in headers.values("Connection") for t in v.split(b",")]
    if b"upgrade" not in tokens:
        raise RelayHandshakeError(f"relay at {shown} answered 101 without 'Connection: Upgrade'")
    expected = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())
    accept = one("Sec-WebSocket-Accept")
    if accept != expected:
        raise RelayHandshakeError(
            f"relay at {shown} sent a wrong Sec-WebSocket-Accept ({accept!r}, expected "
            f"{expected.decode()!r})"
        )
    extensions = headers.values("Sec-WebSocket-Extensions")
    if extensions:
        raise RelayHandshakeError(
            f"relay at {shown} selected an extension nobody asked for: "
            f"{_shown_bytes(b', '.join(extensions))}"
        )
    protocol = one("Sec-WebSocket-Protocol")
    if protocol is None:
        raise RelayHandshakeError(f"relay at {shown} did not select the {SUBPROTOCOL} subprotocol")
    if protocol != SUBPROTOCOL.encode("ascii"):
        raise RelayHandshakeError(
            f"relay at {shown} selected subprotocol {_shown_bytes(protocol)}, which nobody asked "
            f"for (offered only {SUBPROTOCOL})"
        )


async def _read_head(stream: trio.abc.Stream, shown: str) -> tuple[bytes, bytes]:
    """Read up to the blank line ending the response head; (head, bytes after it)."""
    buffer = bytearray()
    searched = 0
    while True:
        end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
        if end >= 0:
            return bytes(buffer[:end]), bytes(buffer[end + 4 :])
        if len(buffer) > MAX_RESPONSE_HEAD:
            raise RelayHandshakeError(
                f"relay at {shown} sent a response head over {MAX_RESPONSE_HEAD} bytes"
            )
        if buffer and not buffer.startswith(b"HTTP/"[: len(buffer)]):
            # Not even the start of a status line: no need to wait for more.
            raise RelayHandshakeError(
                f"relay at {shown} did not answer with HTTP: it sent {_shown_bytes(buffer)}"
            )
        searched = len(buffer)
        data = await stream.receive_some(MAX_RESPONSE_HEAD + 4 - len(buffer))
        if not data:
            raise RelayUnreachableError(
                f"relay at {shown} closed the connection before completing the upgrade"
                + (f" (after {len(buffer)} bytes)" if buffer else "")
            )
        buffer += data


def _request(host: str, resource: str, key: bytes) -> bytes:
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode('ascii')}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def _open_stream(
    url: str, shown: str, ssl_context: ssl.SSLContext | None
) -> tuple[trio.abc.Stream, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RelayUnreachableError(f"not a ws:// or wss:// URL: {shown}")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise RelayUnreachableError(f"bad port in relay URL {shown}") from None
    host = parts.hostname
    host_header = host if port == (443 if secure else 80) else f"{host}:{port}"
    if ":" in host:
        host_header = f"[{host}]" + ("" if port == (443 if secure else 80) else f":{port}")
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream
    if secure:
        context = ssl_context or ssl.create_default_context()
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
        await stream.do_handshake()
    else:
        stream = await trio.open_tcp_stream(host, port)
    return stream, host_header, resource


async def _handshake(
    url: str, shown: str, ssl_context: ssl.SSLContext | None
) -> tuple[trio.abc.Stream, _Headers, bytes]:
    stream, host_header, resource = await _open_stream(url, shown, ssl_context)
    try:
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(_request(host_header, resource, key))
        head, rest = await _read_head(stream, shown)
        headers = _parse_head(head, shown)
        if headers.status != 101:
            # Whatever body follows is irrelevant (and may be endless): we never read it.
            raise RelayUnreachableError(
                f"relay rejected {shown} with HTTP {headers.status}", headers.status
            )
        _check_upgrade(headers, key, shown)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, headers, rest


class Tunnel:
    """One open tunnel WebSocket: send and receive whole binary messages.

    One task may receive while another sends (the phone watches the tunnel while its user decides);
    sends, including the pongs and close frames ``receive`` answers with, are serialised.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        headers: _Headers,
        url: str,
        trailing: bytes = b"",
        *,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self._stream = stream
        self._headers = headers
        self.url = url
        self._shown = _redact(url)
        self._conn = Connection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()
        self._message = bytearray()
        self._send_lock = trio.Lock()
        self._closed: HybridError | None = None
        self._close_timeout = close_timeout
        self._feed(trailing)

    @property
    def handshake_headers(self) -> list[tuple[bytes, bytes]]:
        """The relay's ``101`` response headers (names lower-cased)."""
        return list(self._headers.fields)

    @property
    def routing_id(self) -> bytes:
        """The 3-byte routing id from the ``X-caBLE-Routing-ID`` header of ``/cable/new``."""
        values = self._headers.values(ROUTING_ID_HEADER)
        if len(values) != 1:
            raise TunnelProtocolError(
                f"relay sent {len(values)} {ROUTING_ID_HEADER} headers, expected exactly one"
            )
        text = values[0].decode("ascii", "replace").strip()
        if not _ROUTING_ID_RE.match(text):
            raise TunnelProtocolError(f"relay sent a malformed {ROUTING_ID_HEADER}: {text!r}")
        routing_id = bytes.fromhex(text)
        assert len(routing_id) == ROUTING_ID_LEN
        return routing_id

    def _feed(self, data: bytes | bytearray) -> None:
        if data and self._conn.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            self._conn.receive_data(bytes(data))
        self._events.extend(self._conn.events())

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TunnelClosedError(f"tunnel closed while sending ({exc!r})") from None

    async def send(self, message: bytes) -> None:
        """Send one binary message."""
        if self._closed is not None:
            raise self._closed
        try:
            data = self._conn.send(Message(data=bytes(message)))
        except LocalProtocolError:
            raise TunnelClosedError("tunnel closed before sending") from None
        await self._send_bytes(data)

    async def receive(self) -> bytes:
        """The next whole binary message; raises once the tunnel has closed."""
        while True:
            while self._events:
                message = await self._handle(self._events.popleft())
                if message is not None:
                    return message
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError) as exc:
                self._closed = TunnelClosedError(f"tunnel connection failed ({exc!r})")
                raise self._closed from None
            if not data:
                self._closed = _closed_error(None, "", "")
                raise self._closed
            self._feed(data)

    async def _handle(self, event: Event) -> bytes | None:
        if isinstance(event, BytesMessage):
            if len(self._message) + len(event.data) > MAX_MESSAGE_SIZE:
                await self._fail(1009, f"a message over {MAX_MESSAGE_SIZE} bytes")
            self._message += event.data
            if not event.message_finished:
                return None
            message, self._message = bytes(self._message), bytearray()
            return message
        if isinstance(event, TextMessage):
            if event.message_finished:
                raise TunnelProtocolError("received a text WebSocket message; the tunnel is binary")
            return None
        if isinstance(event, Ping):
            await self._best_effort(self._conn.send(event.response()))
            return None
        if isinstance(event, CloseConnection):
            if self._conn.state is ConnectionState.OPEN:
                # A close event without a state change is wsproto reporting a frame it could not
                # parse (the code is the one to answer with).
                await self._fail(event.code, f"a malformed WebSocket frame ({event.reason})")
            if self._conn.state is ConnectionState.REMOTE_CLOSING:
                await self._best_effort(self._conn.send(event.response()))
            self._closed = _closed_error(event.code, event.reason or "", "")
            raise self._closed
        return None  # Pong: nothing to do

    async def _fail(self, code: int, what: str) -> None:
        self._closed = TunnelProtocolError(f"relay sent {what}")
        if self._conn.state is ConnectionState.OPEN:
            await self._best_effort(self._conn.send(CloseConnection(code=code)))
        raise self._closed

    async def _best_effort(self, data: bytes) -> None:
        if not data:
            return
        try:
            await self._send_bytes(data)
        except TunnelClosedError:
            pass

    async def aclose(self) -> None:
        """Close handshake then socket close, all within ``close_timeout`` (shielded)."""
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            try:
                if self._conn.state is ConnectionState.OPEN:
                    await self._send_bytes(self._conn.send(CloseConnection(code=1000)))
                    # Wait for the relay's close frame; messages arriving meanwhile are dropped.
                    while self._conn.state is not ConnectionState.CLOSED:
                        data = await self._stream.receive_some(RECEIVE_SIZE)
                        if not data:
                            break
                        self._feed(data)
                        self._events.clear()
            except (HybridError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(self._stream)
        if self._closed is None:
            self._closed = TunnelClosedError("tunnel closed by us")


@asynccontextmanager
async def open_tunnel(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Tunnel]:
    """Connect to a tunnel URL (``ws://`` or ``wss://``) and yield the open ``Tunnel``.

    TCP, TLS and the whole opening handshake finish within ``connect_timeout`` or raise
    ``RelayUnreachableError``; the socket is closed (within ``close_timeout``) however the block
    exits.
    """
    shown = _redact(url)
    with trio.move_on_after(connect_timeout) as scope:
        try:
            stream, headers, rest = await _handshake(url, shown, ssl_context)
        except RelayUnreachableError:
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise RelayUnreachableError(f"cannot reach relay at {shown}: {cause!r}") from None
    if scope.cancelled_caught:
        raise RelayUnreachableError(
            f"relay at {shown} did not complete the WebSocket upgrade within {connect_timeout:g} s"
        )
    tunnel = Tunnel(stream, headers, url, rest, close_timeout=close_timeout)
    try:
        yield tunnel
    finally:
        await tunnel.aclose()


async def next_connection_event(
    tunnel: Tunnel, conn: DesktopConnection | PhoneConnection
) -> ConnectionEvent:
    """The transaction's next event: one already queued in ``conn``, else from the next tunnel
    message (or the tunnel's close), fed to ``conn`` until it has an event to give."""
    while True:
        event = conn.next_event()
        if isinstance(event, ConnectionEvent):
            return event
        try:
            message = await tunnel.receive()
        except TunnelClosedError:
            conn.receive_close()
            continue
        conn.receive_data(message)
