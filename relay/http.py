"""The HTTP/1.1 opening handshake on a raw trio stream, with h11.

Reads exactly one request head (bounded in size; the caller bounds it in time), then either writes
a complete plain response and lets the caller close, or writes the ``101 Switching Protocols``
answer and hands back the bytes the client already sent after its request (its first WebSocket
frames), which belong to the WebSocket layer.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
import trio
from wsproto.utilities import generate_accept_token

from hybrid.tunnel.urls import SUBPROTOCOL

_READ_SIZE = 4096


class BadRequest(Exception):
    """The bytes received are not an acceptable HTTP/1.1 request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The client closed or reset the connection before a whole request arrived."""


async def read_request(
    stream: trio.abc.Stream, max_head: int
) -> tuple[h11.Connection, h11.Request]:
    """Read one request head; raise BadRequest or ClientGone."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc) or "malformed request") from None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone("connection lost during the request") from exc
            if not data and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                raise ClientGone("connection closed before a request")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            return conn, event
        raise ClientGone("connection closed before a whole request")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


async def send_response(
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
) -> None:
    """Write a complete response with ``Connection: close``; errors writing it are ignored.

    Written directly rather than through h11 so it also works when the request never parsed.
    """
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in headers),
    ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if not head_only:
        data += body
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def finish_request(conn: h11.Connection) -> None:
    """Consume the end of an upgrade request; raise BadRequest if it carries a body."""
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(400, str(exc)) from None
    if not isinstance(event, h11.EndOfMessage):
        raise BadRequest(400, "an upgrade request must not have a body")


async def send_switching_protocols(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    key: bytes,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Write the 101 answer (echoing ``fido.cable``) and return bytes already read past the head."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode("ascii")),
        ("Sec-WebSocket-Protocol", SUBPROTOCOL),
        *extra_headers,
    ]
    data = conn.send(
        h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols")
    )
    await stream.send_all(data)
    return bytes(conn.trailing_data[0])
