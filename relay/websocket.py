"""A lean server-side WebSocket endpoint on a trio stream, after the opening handshake.

``relay.wsframe`` parses client frames and builds server frames; this class only moves bytes.
``receive_batch`` does one socket read and returns every whole binary message it completed
(fragments reassembled, the size limit enforced from the frame headers so an oversized message is
never buffered), answering pings itself; a close, a protocol error or EOF found in the same read is
raised on the *next* call, so messages sent before it are still delivered. ``send_frames`` writes
prebuilt server frames (``wsframe.write_binary``) with one ``send_all``: a forwarding task turns a
whole read into a single write. A per-socket write flag keeps the two writers of a socket (data
from the peer's task, pongs and closes from its own reader) from interleaving frames. On a plain
TCP stream reads and writes are non-blocking calls on the socket itself (``relay.rawio``). Nothing
here logs or looks inside payloads.
"""

from __future__ import annotations

import trio
from trio.lowlevel import ParkingLot, wait_readable

from relay.errors import (
    FrameError,
    MessageTooBigError,
    PeerClosed,
    PeerGone,
    TextFrameError,
    WebSocketEnded,
)
from relay.rawio import STREAM_ERRORS, raw_socket, receive_some, send_all
from relay.wsframe import (
    Close,
    FrameParser,
    Ping,
    binary_frame,
    close_frame,
    pong_frame,
)

RECEIVE_SIZE = 65536

# Connection states (plain ints: compared on every call).
_OPEN = 0
_REMOTE_CLOSING = 1  # the client's close frame arrived; ours is still owed
_LOCAL_CLOSING = 2  # our close frame went out; the client's is awaited
_CLOSED = 3


# Historical names of the framing errors, kept for callers of this module.
PeerProtocolError = FrameError
TextFrame = TextFrameError
MessageTooBig = MessageTooBigError

__all__ = [
    "MessageTooBig",
    "PeerClosed",
    "PeerGone",
    "PeerProtocolError",
    "TextFrame",
    "WebSocket",
    "WebSocketEnded",
]


class WebSocket:
    """One accepted WebSocket connection; only one task may receive from it."""

    __slots__ = (
        "stream",
        "_raw",
        "_parser",
        "_writing",
        "_waiters",
        "_broken",
        "_state",
        "_ended",
        "_queue",
        "_full",
        "_receive_size",
        "_ping_mark",
    )

    def __init__(self, stream: trio.abc.Stream, trailing_data: bytes, max_message_size: int):
        self.stream = stream
        self._raw = raw_socket(stream)
        self._parser = FrameParser(max_message_size, refuse_text=True)
        self._writing = False
        self._full = False
        self._receive_size = RECEIVE_SIZE
        self._waiters: ParkingLot | None = None
        # Set when a write was interrupted mid-frame: no further frame may follow it.
        self._broken = False
        self._state = _OPEN
        # Why the socket stopped delivering, raised once the messages before it are consumed.
        self._ended: WebSocketEnded | None = None
        # The parser's pong count when the keep-alive last pinged; -1 when no ping is owed.
        self._ping_mark = -1
        # Messages completed by the trailing handshake bytes, delivered before any read.
        self._queue: list[bytes] = []
        if trailing_data:
            self._queue = self._digest(self._parser.receive(trailing_data))

    def _digest(self, events: list) -> list[bytes]:
        """Split parser events into messages and at most one terminal condition."""
        messages: list[bytes] = []
        for event in events:
            if type(event) is bytes:
                messages.append(event)
            elif isinstance(event, Ping):
                # Answered by the caller (it may await); keep its place in the stream.
                messages.append(event)  # type: ignore[arg-type]
            else:
                self._ended = self._terminal(event)
                break
        return messages

    def _terminal(self, event: object) -> WebSocketEnded:
        if isinstance(event, Close):
            return PeerClosed(f"client closed with {event.code}")
        # The parser's framing errors (text frame, too big, broken framing) are raised as they are.
        assert isinstance(event, FrameError)
        return event

    def limit_message_size(self, max_message_size: int) -> None:
        """Change the largest message accepted from now on (checked from each frame header).

        Reads shrink with the limit: a socket allowed only small messages (a waiting tunnel) never
        needs a 64 KiB read buffer, whatever its client pushes at it.
        """
        self._parser.max_message_size = max_message_size
        self._receive_size = max(4096, min(RECEIVE_SIZE, max_message_size + 14))

    async def receive_batch(self) -> list[bytes]:
        """The whole binary messages of the next read (at least one), oldest first.

        Raises a ``WebSocketEnded`` subclass when no message follows.
        """
        while True:
            if self._queue:
                batch, self._queue = self._queue, []
            elif self._ended is not None:
                if self._state == _OPEN and type(self._ended) is PeerClosed:
                    self._state = _REMOTE_CLOSING
                raise self._ended
            else:
                try:
                    raw = self._raw
                    if raw is not None and not self._full:
                        # The hot path of request/response traffic, inlined: wait, then read.
                        await wait_readable(raw)
                        try:
                            data = raw.recv(self._receive_size)
                        except BlockingIOError:
                            continue
                        self._full = len(data) == self._receive_size
                    else:
                        data = await self._receive_some()
                except STREAM_ERRORS as exc:
                    self._ended = PeerGone("connection lost")
                    raise self._ended from exc
                if not data:
                    self._ended = PeerGone("connection closed without a close frame")
                    raise self._ended
                events = self._parser.receive(data)
                if not events:
                    continue
                if len(events) == 1 and type(events[0]) is bytes:
                    return events  # type: ignore[return-value]  # the one event is bytes
                batch = self._digest(events)
            if any(type(m) is Ping for m in batch):
                messages: list[bytes] = []
                for item in batch:
                    if type(item) is Ping:
                        await self._write(pong_frame(item.payload))
                    else:
                        messages.append(item)
                batch = messages
            if batch:
                return batch

    async def receive(self) -> bytes:
        """The next whole binary message; raises a ``WebSocketEnded`` subclass when none follows."""
        batch = await self.receive_batch()
        if len(batch) > 1:
            self._queue = batch[1:] + self._queue
        return batch[0]

    async def send(self, data: bytes | bytearray) -> None:
        """Send one binary message; raises ``PeerGone`` if this socket can no longer take it."""
        await self.send_frames(binary_frame(data))

    async def send_frames(self, frames: bytes | bytearray | memoryview) -> None:
        """Send prebuilt binary frames; raises ``PeerGone`` if the socket cannot take them."""
        if self._state != _OPEN:
            raise PeerGone("socket is closing")
        raw = self._raw
        if raw is not None and not self._writing and not self._broken:
            # Usually the kernel takes it all at once: no coroutine layers, no yield.
            try:
                sent = raw.send(frames)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise PeerGone("connection lost") from exc
            if sent == len(frames):
                return
            if sent:
                # The rest follows at once: nothing can take the write flag before _write does.
                frames = memoryview(frames)[sent:]
        await self._write(frames)

    def silent(self) -> bool:
        """Whether the last ``ping`` has had no pong (nor any other pong) since it was sent."""
        return self._ping_mark >= 0 and self._parser.pongs == self._ping_mark

    async def ping(self, frame: bytes) -> None:
        """Send a prebuilt ping frame (keep-alive); a socket busy writing is skipped this round.

        Never raises: a socket that cannot take it is ending anyway.
        """
        if self._state != _OPEN or self._writing or self._broken:
            self._ping_mark = -1
            return
        self._ping_mark = self._parser.pongs
        try:
            await self._write(frame)
        except PeerGone:
            pass

    async def _receive_some(self) -> bytes:
        size = self._receive_size
        data = await receive_some(self.stream, self._raw, size, self._full)
        # Only a read that filled the buffer suggests more is waiting already.
        self._full = len(data) == size
        return data

    async def _write(self, frame: bytes | bytearray | memoryview) -> None:
        # A socket has at most two writers (the peer's task with data, its own reader with pongs
        # and the close), so a flag and a parking lot made on first contention replace a lock.
        if self._writing:
            if self._waiters is None:
                self._waiters = ParkingLot()
            while self._writing:
                await self._waiters.park()
        if self._broken:
            raise PeerGone("socket is broken")
        self._writing = True
        self._broken = True
        try:
            await send_all(self.stream, self._raw, frame)
            self._broken = False
        except STREAM_ERRORS as exc:
            raise PeerGone("connection lost") from exc
        finally:
            self._writing = False
            if self._waiters is not None:
                self._waiters.unpark()

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """Send a close frame and wait up to ``timeout`` for the client's; never raises."""
        frame = b""
        state = self._state
        if state == _OPEN or state == _REMOTE_CLOSING:
            self._state = _LOCAL_CLOSING if state == _OPEN else _CLOSED
            frame = close_frame(code, reason)
            raw = self._raw
            if raw is not None and not self._broken and not self._writing:
                # Usually the kernel takes the frame at once: no cancel scope, no checkpoint.
                try:
                    sent = raw.send(frame)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return
                # Nothing else is written after a close frame, so its rest may follow later.
                frame = frame[sent:]
        ended = type(self._ended)
        if self._state != _LOCAL_CLOSING or ended is PeerClosed or ended is PeerGone:
            # No reply to wait for: it came already, or the connection is gone.
            self._state = _CLOSED
            if not frame:
                return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout):
            try:
                if frame:
                    await self._write(frame)
                if self._state != _LOCAL_CLOSING:
                    return
                parser = self._parser
                while True:
                    data = await self._receive_some()
                    if not data:
                        break
                    # After a protocol error the parser ignores input: wait for EOF, like wsproto.
                    if any(isinstance(e, Close) for e in parser.receive(data)):
                        break
                self._state = _CLOSED
            except (WebSocketEnded, *STREAM_ERRORS):
                pass
