"""Server-side WebSocket (RFC 6455) frame codec for the relay's forwarding path.

The relay only ever plays the server role and only forwards opaque binary messages, so this codec
is deliberately narrower than wsproto: it parses masked client frames into whole messages and writes
unmasked server frames. It is sans-IO like wsproto (feed bytes, get events; build bytes, send them
yourself) but tuned for one job: a task reads a large chunk from a socket, ``FrameParser.receive``
turns every complete frame in it into events, and ``write_binary`` appends the server frames for all
of them to one bytearray so that a single ``send_all`` forwards everything one read produced.

Why it is fast: a complete binary message comes out as a plain ``bytes`` object (no wrapper event),
the parser works directly on the received chunk when nothing is left over from the previous one, and
unmasking uses the C ``apply_mask`` shipped with the ``websockets`` package when it is importable
(about 100x faster than any pure-Python XOR on 16 KiB; a table-driven fallback stays correct).

Rules enforced, with the close code the relay should send (``FrameError.code``):

* client frames MUST be masked, reserved bits MUST be clear, opcodes MUST be known, lengths MUST
  use the minimal encoding and a 64-bit length MUST have its top bit clear -> 1002;
* control frames are at most 125 bytes and never fragmented; continuation frames only inside a
  fragmented message and data frames never inside one -> 1002;
* a message (all its fragments) larger than ``max_message_size`` -> 1009, detected from the frame
  header so an oversized frame is refused before its payload arrives;
* close payloads are validated the way wsproto does (1 byte, out-of-range, reserved or local-only
  code -> 1002; reason not UTF-8 -> 1007); text messages that are not UTF-8 -> 1007.

Ping frames become ``Ping`` events (answer with ``pong_frame``), pong frames are dropped, a close
frame becomes a ``Close`` event and ends parsing: bytes after it are ignored, as the RFC requires.
"""

from __future__ import annotations

import struct
from typing import Final

from relay.errors import FrameError, MessageTooBigError, TextFrameError
from relay.values import Value

try:  # The C helper is ~100x faster; it is an optional accelerator, not a requirement.
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - depends on the environment
    _c_apply_mask = None  # type: ignore[assignment]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_NO_STATUS: Final = 1005
CLOSE_INVALID_PAYLOAD: Final = 1007
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009

MAX_CONTROL_PAYLOAD: Final = 125
DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20

# Codes a peer may put in a close frame (RFC 6455 7.4.1/7.4.2 plus the IANA-registered 1012-1014
# that wsproto also accepts); 1005, 1006 and 1015 are local-only and 3000-4999 are always allowed.
_SENDABLE_PROTOCOL_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013}
)

_HEADER_SHORT: Final = struct.Struct("!BB")
_HEADER_MEDIUM: Final = struct.Struct("!BBH")
#: The two-byte and four-byte frame headers (first byte, length byte[, 16-bit length]), for
#: callers that build a frame of one payload themselves.
BINARY_HEADER_SHORT: Final = _HEADER_SHORT
BINARY_HEADER_MEDIUM: Final = _HEADER_MEDIUM
_HEADER_LONG: Final = struct.Struct("!BBQ")
_UINT16: Final = struct.Struct("!H")
_UINT64: Final = struct.Struct("!Q")
_CODE: Final = struct.Struct("!H")

# Below this size copying the slice is cheaper than building a memoryview of it.
_VIEW_THRESHOLD: Final = 16384


class TextMessage(Value):
    """A complete text message; the tunnel protocol only allows binary, so the relay refuses it."""

    _FIELDS = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class Ping(Value):
    """A ping from the client; the server answers with ``pong_frame(payload)``."""

    _FIELDS = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close(Value):
    """The client's close frame; ``code`` is 1005 when the frame carried no status code."""

    _FIELDS = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = bytes | TextMessage | Ping | Close | FrameError


def _translate_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    # Pure-Python fallback: XOR each of the four byte lanes through a 256-entry table.
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR_TABLES[mask[lane]])
    return bytes(out)


_XOR_TABLES: Final = tuple(bytes(a ^ b for a in range(256)) for b in range(256))
apply_mask = _c_apply_mask if _c_apply_mask is not None else _translate_mask
"""``apply_mask(data, mask) -> bytes``: XOR ``data`` with the repeated 4-byte ``mask``."""


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise FrameError("close frame with a 1-byte payload")
    (code,) = _CODE.unpack_from(payload)
    if not (3000 <= code <= 4999 or code in _SENDABLE_PROTOCOL_CODES):
        raise FrameError(f"close frame with invalid code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("close frame reason is not UTF-8", CLOSE_INVALID_PAYLOAD) from None
    return Close(code, reason)


class FrameParser:
    """Incremental parser of masked client frames into complete messages.

    Feed each chunk read from the socket to ``receive``; it returns the events completed by that
    chunk, in order. A complete binary message is returned as ``bytes``; other events are
    ``TextMessage``, ``Ping``, ``Close`` and, last in the list, a ``FrameError`` when the client
    broke the protocol (so messages completed before the violation are still delivered). After a
    ``Close`` or ``FrameError`` the parser is finished and ignores further input.
    """

    __slots__ = (
        "max_message_size",
        "refuse_text",
        "_buf",
        "_need",
        "_op",
        "_parts",
        "_size",
        "finished",
        "pongs",
    )

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, refuse_text: bool = False
    ) -> None:
        self.max_message_size = max_message_size
        # With refuse_text, the first frame of a text message is an error (TextFrameError) before
        # its size is checked or its payload arrives, whatever its size or fragmentation.
        self.refuse_text = refuse_text
        self._buf = bytearray()  # unparsed tail of earlier chunks
        self._need = 2  # buffered bytes needed before parsing can make progress
        self._op = 0  # opcode of the fragmented message in progress, 0 when none
        self._parts: list[bytes] = []  # unmasked fragments of that message
        self._size = 0  # total size of those fragments
        self.finished = False  # a close frame or a protocol error ended the stream
        self.pongs = 0  # pong frames received (the relay's keep-alive checks this)

    def receive(self, data: bytes | bytearray) -> list[Event]:
        """Parse ``data`` together with any buffered tail; return the events it completes."""
        if self.finished:
            return []
        buf = self._buf
        if not buf and not self._op and type(data) is bytes:
            # Fast path for the usual read in a tunnel: exactly one whole, final, masked binary
            # frame. Anything else (including every error) takes the general parser below.
            # (``data`` is known to be bytes here, so compiled its indexing and slicing are C.)
            n = len(data)
            if n > 5 and data[0] == 0x82:
                length = data[1] - 0x80  # negative when the mask bit is clear
                if 0 <= length < 126:
                    if n == length + 6 and length <= self.max_message_size:
                        return [apply_mask(data[6:], data[2:6])]
                elif length == 126 and n > 8:
                    length = data[2] << 8 | data[3]
                    if n == length + 8 and 126 <= length <= self.max_message_size:
                        if length > _VIEW_THRESHOLD:
                            return [apply_mask(memoryview(data)[8:], data[4:8])]
                        return [apply_mask(data[8:], data[4:8])]
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = buf
        elif len(data) < 2:
            buf += data
            return []
        events: list[Event] = []
        try:
            pos = self._parse(data, events)
        except FrameError as exc:
            self.finished = True
            self._buf = bytearray()
            self._parts = []
            events.append(exc)
            return events
        if self.finished:
            self._buf = bytearray()
        elif data is buf:
            del buf[:pos]
        elif pos < len(data):
            buf += data[pos:] if pos else data
        return events

    def _parse(self, data: bytes | bytearray, events: list[Event]) -> int:
        """Consume every complete frame of ``data``; return the offset of the first unused byte."""
        end = len(data)
        pos = 0
        limit = self.max_message_size
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if opcode & 0x08:
                if opcode > OP_PONG:
                    raise FrameError(f"unknown opcode {opcode:#x}")
                if not b0 & 0x80:
                    raise FrameError("fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    raise FrameError("control frame payload longer than 125 bytes")
                head = pos + 6
            elif opcode > OP_BINARY:
                raise FrameError(f"unknown opcode {opcode:#x}")
            elif length < 126:
                head = pos + 6
            elif length == 126:
                if end - pos < 4:
                    self._need = 4
                    break
                (length,) = _UINT16.unpack_from(data, pos + 2)
                if length < 126:
                    raise FrameError("frame length not minimally encoded")
                head = pos + 8
            else:
                if end - pos < 10:
                    self._need = 10
                    break
                (length,) = _UINT64.unpack_from(data, pos + 2)
                if length < 65536:
                    raise FrameError("frame length not minimally encoded")
                if length >> 63:
                    raise FrameError("64-bit frame length with the top bit set")
                head = pos + 14
            if b0 & 0x70:
                raise FrameError("reserved bits set without a negotiated extension")
            if not b1 & 0x80:
                raise FrameError("client frame is not masked")
            if not opcode & 0x08:
                # Data frame: check its place in the message and the size before the payload
                # arrives, so a bad or oversized frame is refused as early as possible.
                if opcode == OP_CONTINUATION:
                    if not self._op:
                        raise FrameError("continuation frame outside a fragmented message")
                    if self._size + length > limit:
                        raise MessageTooBigError(self._size + length, limit)
                elif self._op:
                    raise FrameError("new data frame inside a fragmented message")
                elif opcode == OP_TEXT and self.refuse_text:
                    raise TextFrameError()
                elif length > limit:
                    raise MessageTooBigError(length, limit)
            stop = head + length
            if stop > end:
                self._need = stop - pos
                break
            if length > _VIEW_THRESHOLD:
                payload = apply_mask(memoryview(data)[head:stop], data[head - 4 : head])
            elif length:
                payload = apply_mask(data[head:stop], data[head - 4 : head])
            else:
                payload = b""
            pos = stop
            if opcode == OP_BINARY and b0 & 0x80:
                events.append(payload)
            elif opcode & 0x08:
                if opcode == OP_PING:
                    events.append(Ping(payload))
                elif opcode == OP_CLOSE:
                    events.append(_parse_close(payload))
                    self.finished = True
                    return pos
                else:
                    self.pongs += 1
            elif not b0 & 0x80:
                if opcode:
                    self._op = opcode
                self._parts.append(payload)
                self._size += length
            else:
                if opcode:
                    message = payload
                else:
                    opcode = self._op
                    self._parts.append(payload)
                    message = b"".join(self._parts)
                    self._parts = []
                    self._size = 0
                    self._op = 0
                if opcode == OP_BINARY:
                    events.append(message)
                else:
                    try:
                        events.append(TextMessage(message.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise FrameError(
                            "text message is not UTF-8", CLOSE_INVALID_PAYLOAD
                        ) from None
        else:
            self._need = 2
        return pos


def write_binary(out: bytearray, payload: bytes | bytearray | memoryview) -> None:
    """Append one unmasked binary server frame carrying ``payload`` to ``out``."""
    n = len(payload)
    if n < 126:
        out += _HEADER_SHORT.pack(0x82, n)
    elif n < 65536:
        out += _HEADER_MEDIUM.pack(0x82, 126, n)
    else:
        out += _HEADER_LONG.pack(0x82, 127, n)
    out += payload


def binary_frame(payload: bytes | bytearray | memoryview) -> bytearray:
    """One unmasked binary server frame carrying ``payload``."""
    out = bytearray()
    write_binary(out, payload)
    return out


def _control_frame(opcode: int, payload: bytes) -> bytes:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("control frame payload longer than 125 bytes")
    return _HEADER_SHORT.pack(0x80 | opcode, len(payload)) + payload


def ping_frame(payload: bytes = b"") -> bytes:
    """A server ping carrying ``payload``."""
    return _control_frame(OP_PING, payload)


def pong_frame(payload: bytes = b"") -> bytes:
    """The pong answering a ping that carried ``payload``."""
    return _control_frame(OP_PONG, payload)


def close_frame(code: int | None = CLOSE_NORMAL, reason: str = "") -> bytes:
    """A server close frame; ``code`` None or 1005 gives the empty close (no status code).

    The reason is truncated to fit a control frame without splitting a UTF-8 sequence.
    """
    frame = _CLOSE_FRAMES.get((code, reason))
    if frame is not None:
        return frame
    if code is None or code == CLOSE_NO_STATUS:
        frame = _control_frame(OP_CLOSE, b"")
    else:
        raw = reason.encode("utf-8")
        if len(raw) > MAX_CONTROL_PAYLOAD - 2:
            raw = raw[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
        frame = _control_frame(OP_CLOSE, _CODE.pack(code) + raw)
    if len(_CLOSE_FRAMES) < 256:
        # Tunnels end with a few (code, text) pairs (relay.reasons): each frame is built once.
        _CLOSE_FRAMES[(code, reason)] = frame
    return frame


_CLOSE_FRAMES: Final[dict[tuple[int | None, str], bytes]] = {}
