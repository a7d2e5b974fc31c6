"""The HTTP/1.1 opening handshake on a raw trio stream.

Reads exactly one request head (bounded in size; the caller bounds it in time), then either writes
a complete plain response and lets the caller close, or writes the ``101 Switching Protocols``
answer and hands back the bytes the client already sent after its request (its first WebSocket
frames), which belong to the WebSocket layer.

Why two parsers: every opening handshake costs a tunnel CPU, and h11 is most of that cost. A lean
parser accepts only a strict, ordinary subset of HTTP/1.1 (``METHOD /path HTTP/1.1``, token header
names, printable values, exactly one ``Host``, no body headers, head within the size limit), which
h11 would accept and parse identically. Anything outside that subset -- unusual, malformed,
oversized or cut short -- is replayed byte for byte through h11, so every refusal and status code
stays exactly h11's.
"""

from __future__ import annotations

import re
from binascii import b2a_base64
from http import HTTPStatus
from typing import Final

import h11
import trio

from hybrid.wire import SUBPROTOCOL
from relay.errors import BadRequest, ClientGone
from relay.rawio import STREAM_ERRORS, raw_socket, receive_some, send_all

__all__ = ["BadRequest", "ClientGone", "Request", "read_request", "send_response"]

try:  # CPython's own SHA-1: a third fewer instructions than OpenSSL's for a 60-byte input
    from _sha1 import sha1  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a CPython built without its own hashes
    from hashlib import sha1

_READ_SIZE: Final = 4096

_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# An HTTP token (a method, a header name), RFC 9110 section 5.6.2.
_TOKEN_RE: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN: Final = re.compile(_TOKEN_RE)
# The lean subset's request line, and one header line (name, then the value with the spaces
# around it); a value is any run of printable ASCII.
_REQUEST_LINE: Final = re.compile(b"(" + _TOKEN_RE + rb") (/[\x21-\x7e]*) HTTP/1\.1")
_HEADER_LINE: Final = re.compile(b"(" + _TOKEN_RE + rb"):([\x20-\x7e]*)\r\n")
# Headers whose semantics (a body, framing) only h11 judges.
_H11_ONLY: Final = frozenset((b"content-length", b"transfer-encoding"))
_SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
_SUBPROTOCOL_LINE: Final = b"\r\nSec-WebSocket-Protocol: " + SUBPROTOCOL.encode("ascii") + b"\r\n"


class Request:
    """One request head: method, target, headers as (lower-case name, value) pairs, version."""

    __slots__ = ("method", "target", "headers", "conn", "trailing", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        conn: h11.Connection | None,
        trailing: bytes,
        version: bytes = b"1.1",
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        # The HTTP version of the request line, e.g. b"1.1" (upgrades need exactly 1.1).
        self.version = version
        # The h11 connection when h11 parsed it (it then judges the body too); None otherwise.
        self.conn = conn
        # Bytes after the head (lean path only; h11 keeps its own).
        self.trailing = trailing


def _parse_lean(head: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """Parse ``head`` (ending in CRLF CRLF) if it is in the strict subset, else None.

    The request line is checked by one pattern; the header lines are found by another, one
    ``findall`` in C giving each name and raw value, and they are the subset only if those lines
    tile the header block exactly (names are tokens, values printable ASCII with the spaces
    around them dropped). This was one pattern over the head and then a split at every CRLF and
    colon: the same answers (tests/test_relay_fastpath.py), a third more work per request.
    """
    line_end = head.find(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(head, 0, line_end) if line_end > 0 else None
    if request_line is None or not head.endswith(b"\r\n\r\n"):
        return None
    start = line_end + 2
    end = len(head) - 2  # the block of header lines, each ending in CRLF, ends here
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    covered = start
    if start < end:
        for name, raw in _HEADER_LINE.findall(head, start, end):
            covered += len(name) + len(raw) + 3
            name = name.lower()
            if name in _H11_ONLY:
                return None
            if name == b"host":
                hosts += 1
            headers.append((name, raw.strip(b" ")))
    if covered != end or hosts != 1:
        return None  # a line findall skipped over (not a header line), or not one Host
    return request_line[1], request_line[2], headers


def _strip_empty_lines(buf: bytes) -> bytes:
    # RFC 9112 section 2.2 (RFC 7230 section 3.5): ignore empty lines before the request line.
    while buf.startswith(b"\r\n") or buf.startswith(b"\n"):
        buf = buf[2:] if buf.startswith(b"\r\n") else buf[1:]
    return buf


def _cannot_start_request(buf: bytes) -> bool:
    """Whether ``buf`` can already not be the start of a request line (a method token, then SP).

    A TLS ClientHello on the plain port, NUL bytes or a WebSocket frame fail at their first byte,
    so they are refused at once instead of waiting for a head that never comes.
    """
    method = buf.split(b" ", 1)[0]
    if buf.startswith(b"\r") and len(buf) == 1:
        return False  # half of an empty line
    return not _TOKEN.fullmatch(method) if method else bool(buf)


def _check_head_size(head_len: int, max_head: int) -> None:
    if head_len > max_head:
        raise BadRequest(431, f"request head over {max_head} bytes")


def _head_length(buf: bytes) -> int | None:
    """Length of the head at the start of ``buf`` through its blank line, if it is complete."""
    ends = [i + n for i, n in ((buf.find(b"\r\n\r\n"), 4), (buf.find(b"\n\r\n"), 3),
                               (buf.find(b"\n\n"), 2)) if i >= 0]  # fmt: skip
    return min(ends) if ends else None


def whole_lean_request(data: bytes, max_head: int) -> Request | None:
    """The request when ``data``, the first bytes of a connection, hold a whole lean head (the
    usual request); else None, and a ``HeadReader`` fed ``data`` judges it.

    The same steps as ``HeadReader.feed``, minus the checks a lean parse implies (no empty lines
    before the head, a method token, a head within the limit).
    """
    if data and data[0] > 32 and len(data) <= max_head:
        end = data.find(b"\n\r\n")
        if end > 0 and data[end - 1] == 13 and data.find(b"\n\n", 0, end) < 0:
            end += 3
            parsed = _parse_lean(data[:end])
            if parsed is not None:
                return Request(parsed[0], parsed[1], parsed[2], None, data[end:])
    return None


class HeadReader:
    """Sans-IO reader of one request head, fed the bytes as they arrive (both engines use it).

    ``feed(data)`` returns the ``Request`` once its head is complete, None while more is needed,
    and raises ``BadRequest`` or ``ClientGone``; ``feed(b"")`` is end of file and ``lost()`` a
    broken connection. ``max_head`` bounds the head (request line through the blank line, empty
    lines before it not counted) exactly, however the client splits it into segments: longer is
    431. Heads outside the lean subset are replayed byte for byte through h11.
    """

    __slots__ = ("max_head", "_buf", "_conn", "_fed")

    def __init__(self, max_head: int) -> None:
        self.max_head = max_head
        self._buf = b""
        self._conn: h11.Connection | None = None
        self._fed = 0

    def feed(self, data: bytes) -> Request | None:
        conn = self._conn
        if conn is not None:
            if not data and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                raise ClientGone("connection closed before a request")
            conn.receive_data(data)
            self._fed += len(data)
            return self._next_h11(conn, None)
        buf = self._buf
        if not data:
            if not buf:
                raise ClientGone("connection closed before a request")
            return self._to_h11(buf, eof=True)
        if not buf:
            request = whole_lean_request(data, self.max_head)
            if request is not None:
                return request
        buf = self._buf = _strip_empty_lines(buf + data)
        max_head = self.max_head
        if _cannot_start_request(buf):
            raise BadRequest(400, "not an HTTP request")
        head_len = _head_length(buf)
        _check_head_size(head_len if head_len is not None else len(buf), max_head)
        # h11 also ends a head at bare-LF blank lines; those requests go to h11.
        end = buf.find(b"\n\r\n")
        bare = buf.find(b"\n\n")
        if bare >= 0 and (end < 0 or bare < end):
            return self._to_h11(buf)
        if end < 0:
            if len(buf) > max_head:
                return self._to_h11(buf)
            return None
        if end == 0 or buf[end - 1] != 13:
            return self._to_h11(buf)
        end += 3
        parsed = _parse_lean(buf[:end]) if end <= max_head else None
        if parsed is None:
            return self._to_h11(buf)
        method, target, headers = parsed
        return Request(method, target, headers, None, buf[end:])

    def lost(self) -> Request:
        """The connection broke: h11 judges what arrived (a whole request), or ``ClientGone``."""
        buf = self._buf
        if self._conn is None and buf:
            request = self._to_h11(buf, lost=True)
            if request is not None:
                return request
        raise ClientGone("connection lost during the request")

    def _to_h11(self, received: bytes, eof: bool = False, lost: bool = False) -> Request | None:
        """The general path: h11 judges the bytes already received, then reads on if it must."""
        self._buf = b""
        conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        conn.receive_data(received)
        self._fed = len(received)
        if eof:
            conn.receive_data(b"")
        return self._next_h11(conn, lost)

    def _next_h11(self, conn: h11.Connection, lost: bool | None) -> Request | None:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc) or "malformed request") from None
        if event is h11.NEED_DATA:
            if lost:
                raise ClientGone("connection lost during the request")
            return None
        if isinstance(event, h11.Request):
            # h11 bounds only incomplete heads; a complete one may have come in one piece.
            _check_head_size(self._fed - len(conn.trailing_data[0]), self.max_head)
            return Request(
                event.method, event.target, list(event.headers), conn, b"", event.http_version
            )
        raise ClientGone("connection closed before a whole request")


async def read_request(stream: trio.abc.Stream, max_head: int, start: bytes = b"") -> Request:
    """Read one request head (``HeadReader`` on ``stream``); raise BadRequest or ClientGone.

    ``start``: bytes of the request already read off the stream (after a PROXY header).
    """
    reader = HeadReader(max_head)
    raw = raw_socket(stream)
    request = reader.feed(start) if start else None
    while request is None:
        try:
            data = await receive_some(stream, raw, _READ_SIZE, yield_when_ready=False)
        except STREAM_ERRORS:
            return reader.lost()
        request = reader.feed(data)
    return request


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
    """Write a complete response with ``Connection: close``; errors writing it are ignored."""
    data = response_bytes(
        status, body, content_type=content_type, headers=headers, head_only=head_only
    )
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def response_bytes(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
) -> bytes:
    """A complete response with ``Connection: close``.

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
    return data


def finish_request(request: Request) -> None:
    """Consume the end of an upgrade request; raise BadRequest if it carries a body."""
    conn = request.conn
    if conn is None:
        return  # the lean parser only accepts heads without body headers
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(400, str(exc)) from None
    if not isinstance(event, h11.EndOfMessage):
        raise BadRequest(400, "an upgrade request must not have a body")


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return b2a_base64(sha1(key + _WS_GUID).digest(), newline=False)


async def send_switching_protocols(
    stream: trio.abc.Stream, request: Request, key: bytes, extra_headers: bytes = b""
) -> bytes:
    """Write the 101 answer (echoing ``fido.cable``) and return bytes already read past the head.

    ``extra_headers`` are whole header lines, each ending in CRLF.
    """
    await send_all(stream, raw_socket(stream), switching_bytes(key, extra_headers))
    return trailing_bytes(request)


def switching_bytes(key: bytes, extra_headers: bytes = b"") -> bytes:
    """The 101 answer to a client's ``Sec-WebSocket-Key``, echoing ``fido.cable``."""
    return b"".join((_SWITCHING, accept_token(key), _SUBPROTOCOL_LINE, extra_headers, b"\r\n"))


def trailing_bytes(request: Request) -> bytes:
    """What the client sent after its request head (its first WebSocket frames)."""
    if request.conn is not None:
        return bytes(request.conn.trailing_data[0])
    return request.trailing
