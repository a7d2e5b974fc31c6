"""The WebSocket tunnel client both roles use to reach a relay (docs/protocol.md section 7).

``open_tunnel(url)`` is an async context manager around trio-websocket: it offers the ``fido.cable``
subprotocol and insists the relay echoes it, exposes the ``X-caBLE-Routing-ID`` response header for
``/cable/new``, and turns every transport failure into one of three typed errors:

* ``RelayUnreachableError``: no TCP connection, TLS failure, HTTP rejection or a timeout while
  connecting (the catalogue's "Passkey Unavailable");
* ``TunnelClosedError``: the peer (or the relay) closed the tunnel, which while a CTAP request is
  outstanding means the user cancelled on the phone;
* ``TunnelProtocolError``: the relay broke the tunnel rules (no subprotocol echo, text frames, a bad
  routing-id header).

Messages are whole binary WebSocket messages; fragmentation is reassembled by trio-websocket.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from hybrid.errors import EnvironmentalError, ProtocolError
from hybrid.tunnel.urls import ROUTING_ID_HEADER, ROUTING_ID_LEN, SUBPROTOCOL

# Browsers accept up to 1 MiB per message (7.3); so do we.
MAX_MESSAGE_SIZE = 1 << 20
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0
_ROUTING_ID_RE = re.compile(r"^[0-9a-fA-F]{6}$")


class RelayUnreachableError(EnvironmentalError):
    """The relay could not be reached or refused the WebSocket upgrade."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TunnelClosedError(EnvironmentalError):
    """The tunnel closed (peer hung up or the relay tore it down)."""


class TunnelProtocolError(ProtocolError):
    """The relay or peer broke the WebSocket-level tunnel rules."""


def _redact(url: str) -> str:
    # Tunnel ids are bearer tokens (14): never print one in full.
    return re.sub(r"([0-9A-Fa-f]{6})[0-9A-Fa-f]{26}\b", r"\1…", url)


class Tunnel:
    """One open tunnel WebSocket: send and receive whole binary messages."""

    def __init__(self, ws: WebSocketConnection, url: str) -> None:
        self._ws = ws
        self.url = url

    @property
    def routing_id(self) -> bytes:
        """The 3-byte routing id from the ``X-caBLE-Routing-ID`` header of ``/cable/new``."""
        wanted = ROUTING_ID_HEADER.lower().encode("ascii")
        values = [v for k, v in self._ws.handshake_headers if k.lower() == wanted]
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

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send_message(bytes(message))
        except ConnectionClosed as exc:
            raise TunnelClosedError(f"tunnel closed while sending ({_reason(exc)})") from None

    async def receive(self) -> bytes:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed as exc:
            raise TunnelClosedError(f"tunnel closed ({_reason(exc)})") from None
        if isinstance(message, str):
            raise TunnelProtocolError("received a text WebSocket message; the tunnel is binary")
        return message

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            await self._ws.aclose()


def _reason(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "no close frame"
    return f"code {reason.code}" + (f", {reason.reason}" if reason.reason else "")


@asynccontextmanager
async def open_tunnel(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Tunnel]:
    """Connect to a tunnel URL (``ws://`` or ``wss://``) and yield the open ``Tunnel``.

    The socket is closed (bounded by ``CLOSE_TIMEOUT``) when the context exits, however it exits.
    """
    if url.startswith("wss://") and ssl_context is None:
        ssl_context = ssl.create_default_context()
    shown = _redact(url)
    opened = False
    body_error: BaseException | None = None
    try:
        async with open_websocket_url(
            url,
            ssl_context=ssl_context,
            subprotocols=[SUBPROTOCOL],
            max_message_size=MAX_MESSAGE_SIZE,
            connect_timeout=connect_timeout,
            disconnect_timeout=CLOSE_TIMEOUT,
        ) as ws:
            opened = True
            if ws.subprotocol != SUBPROTOCOL:
                raise TunnelProtocolError(
                    f"relay at {shown} did not select the {SUBPROTOCOL} subprotocol"
                )
            try:
                yield Tunnel(ws, url)
            except BaseException as exc:
                body_error = exc
                raise
    except ConnectionRejected as exc:
        raise RelayUnreachableError(
            f"relay rejected {shown} with HTTP {exc.status_code}", exc.status_code
        ) from None
    except (HandshakeError, OSError) as exc:
        if opened:
            # Only the closing handshake can fail here; the session itself is over, so report
            # what the session raised (if anything) rather than a slow close.
            if body_error is not None:
                raise body_error from None
            if isinstance(exc, HandshakeError):
                return
            raise
        cause = exc.__cause__ or exc
        raise RelayUnreachableError(f"cannot reach relay at {shown}: {cause!r}") from None
