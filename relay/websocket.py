"""A lean server-side WebSocket endpoint on a trio stream, after the opening handshake.

wsproto's frame layer (``wsproto.connection.Connection``) parses and builds frames; this class only
moves bytes. ``receive`` returns one whole binary message (reassembled from fragments, with the
size limit enforced while it streams in, so an oversized message is never buffered whole) and
answers pings itself. ``send`` writes one binary message; a per-socket lock keeps frames from the
two tunnel directions (data from the peer, pongs and closes from the reader) from interleaving.
Nothing here logs, copies or looks inside payloads.
"""

from __future__ import annotations

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

RECEIVE_SIZE = 65536

_OPEN = ConnectionState.OPEN
_LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING


class WebSocketEnded(Exception):
    """Base of the ways a socket stops delivering messages; ``code`` is what its peer should get."""

    code = 1001


class PeerClosed(WebSocketEnded):
    """The client sent a close frame: a clean end."""

    code = 1000


class PeerGone(WebSocketEnded):
    """The connection dropped (EOF, reset, TLS failure) without a close frame."""

    code = 1001


class PeerProtocolError(WebSocketEnded):
    """The client broke WebSocket framing (RFC 6455); the socket itself gets ``ws_code``."""

    code = 1001

    def __init__(self, ws_code: int, reason: str) -> None:
        super().__init__(reason)
        self.ws_code = ws_code


class TextFrame(WebSocketEnded):
    """The client sent a text message, which the tunnel protocol forbids (section 7.3)."""

    code = 1003


class MessageTooBig(WebSocketEnded):
    """The client's message exceeded the relay's size limit."""

    code = 1009


class WebSocket:
    """One accepted WebSocket connection; ``receive`` must only be called from one task."""

    __slots__ = ("stream", "_ws", "_events", "_lock", "_max_size", "_broken")

    def __init__(self, stream: trio.abc.Stream, trailing_data: bytes, max_message_size: int):
        self.stream = stream
        self._ws = Connection(ConnectionType.SERVER, trailing_data=trailing_data)
        self._events = self._ws.events()
        self._lock = trio.StrictFIFOLock()
        self._max_size = max_message_size
        # Set when a write was interrupted mid-frame: no further frame may follow it.
        self._broken = False

    async def receive(self) -> bytes | bytearray:
        """The next whole binary message; raises a ``WebSocketEnded`` subclass when none follows."""
        parts: list[bytes | bytearray] | None = None
        size = 0
        while True:
            for event in self._events:
                kind = type(event)
                if kind is BytesMessage:
                    data = event.data
                    size += len(data)
                    if size > self._max_size:
                        raise MessageTooBig(f"message larger than {self._max_size} bytes")
                    if event.message_finished:
                        if parts is None:
                            return data
                        parts.append(data)
                        return b"".join(parts)
                    if parts is None:
                        parts = [data]
                    else:
                        parts.append(data)
                elif kind is Ping:
                    await self._write(self._ws.send(event.response()))
                elif kind is CloseConnection:
                    if self._ws.state is _OPEN:
                        # wsproto reports a framing error as a close event without a state change.
                        raise PeerProtocolError(event.code, event.reason or "protocol error")
                    raise PeerClosed(f"client closed with {event.code}")
                elif kind is TextMessage:
                    raise TextFrame("text frames are not allowed")
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerGone("connection lost") from exc
            if not data:
                raise PeerGone("connection closed without a close frame")
            self._ws.receive_data(data)
            self._events = self._ws.events()

    async def send(self, data: bytes | bytearray) -> None:
        """Send one binary message; raises ``PeerGone`` if this socket can no longer take it."""
        if self._ws.state is not _OPEN:
            raise PeerGone("socket is closing")
        await self._write(self._ws.send(BytesMessage(data=data)))

    async def _write(self, frame: bytes) -> None:
        # Uncontended (the usual case) the lock is taken without a scheduler round trip;
        # send_all checkpoints anyway.
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            if self._broken:
                raise PeerGone("socket is broken")
            self._broken = True
            try:
                await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerGone("connection lost") from exc
            self._broken = False
        finally:
            self._lock.release()

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """Send a close frame and wait up to ``timeout`` for the client's; never raises."""
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            try:
                if self._ws.state in (_OPEN, ConnectionState.REMOTE_CLOSING):
                    await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
                while self._ws.state is _LOCAL_CLOSING:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    self._ws.receive_data(data)
                    for _ in self._ws.events():
                        pass
            except (WebSocketEnded, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except LocalProtocolError:
                pass
