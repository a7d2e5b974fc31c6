"""The relay's two engines, reactor and tasks, side by side: the same conversations, the same bytes.

``RelayConfig.engine`` chooses how connections are served: "reactor" (``relay.reactor``, one
callback loop over a relay-owned epoll set) or "tasks" (one trio task per connection:
``relay.dispatch``, ``relay.tunnel``, ``relay.websocket``). Their behaviour must be identical. Each
test here starts one relay of each engine with the same config and drives both with the same
scripted raw-socket conversation (``Conversation``): request heads, hostile or not, split into
segments; frames from both sides of a tunnel split at arbitrary byte boundaries; closes, EOFs,
timeouts and quotas. A ``Transcript`` records, per client socket, every byte it received until the
relay closed it (bounded in time), and, per relay, what the conversation added to ``relay.stats``
and the events it logged (each event's fields). The two transcripts must be equal after
normalising only what is random or timing: the ``X-caBLE-Routing-ID`` value, the counters inside
a ``/metrics`` body (its families and labels are compared), the ``duration_ms``/``latency_ms``
log fields, the order of log lines, and whether a socket ended with FIN or RST (which depends on
how much the relay had read when it closed, not on what it sent).

A conversation waits for the relays to go quiet between its steps
(``trio.testing.wait_all_tasks_blocked``), so what each side sends never races with what the
other side sends. Both engines run each conversation at the same time; a context variable set
when each relay starts tells whose log line is whose. The JSON lines themselves (the reactor
holds them while it handles a batch of events) are compared between two relay processes.

Last, ``test_the_relay_suite_passes_on_the_tasks_engine`` reruns a subset of the relay test
modules with ``HYBRID_TEST_RELAY_ENGINE=tasks``: the main suite runs on the default engine ("auto",
the reactor on Linux), so the tasks engine keeps that coverage too. Likewise
``test_the_relay_suite_passes_as_plain_python`` reruns this module and others with
``HYBRID_RELAY_NATIVE=0`` when the main run uses the compiled modules (``relay.native``).
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_helpers import ENGINE_VARIABLE, engine_override, running_relay
from relay_process import RelayProcess, relay_process

from relay import compiled
from relay.config import DEFAULT_MAX_REQUEST_HEAD, reactor_available
from relay.descriptors import DescriptorBudget
from relay.metrics import Stats
from relay.server import Relay
from tests.conftest import examples

ENGINES = ("tasks", "reactor")
#: How long the relays must have had nothing to do before a conversation takes its next step.
QUIET = 0.005
#: Longest a conversation waits for the relay to close every socket once its script is done.
END_TIMEOUT = 3.0
#: Config of every relay here unless a test says otherwise: no keep-alive pings (their timing is
#: the relay's, not the conversation's) and a short wait for the client's close frame.
BASE_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "ping_interval": 0,
    "close_timeout": 0.05,
}

FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


# -- client bytes ------------------------------------------------------------------------------

MASK = b"\x37\xfa\x21\x3d"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bytes | None = MASK,
    rsv: int = 0,
) -> bytes:
    """One client frame, masked unless ``mask`` is None; ``rsv`` sets the RSV1-3 bits."""
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = bytes((b0, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, bit | 127)) + struct.pack("!Q", n)
    if mask is None or not payload:
        return head + (mask or b"") + payload
    key = (mask * (n // 4 + 1))[:n]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return head + mask + masked.to_bytes(n, "big")


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


def message(payload: bytes, fragments: int = 1, pings: tuple[bytes, ...] = ()) -> bytes:
    """A binary message in ``fragments`` frames, ``pings`` interleaved after the first ones."""
    fragments = max(1, min(fragments, len(payload) or 1))
    size = -(-len(payload) // fragments) if payload else 0
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] if size else [b""]
    out = b""
    for i, piece in enumerate(pieces):
        out += frame(OP_BINARY if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)
        if i < len(pings):
            out += frame(OP_PING, pings[i])
    for ping in pings[len(pieces) :]:
        out += frame(OP_PING, ping)
    return out


def key_for(name: str) -> str:
    """A fixed Sec-WebSocket-Key per name: both engines must get the very same request."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()[:16]).decode()


def tunnel_id_for(name: str) -> str:
    return hashlib.sha256(b"tunnel " + name.encode()).hexdigest()[:32].upper()


DEFAULT_KEY = key_for("default")


def head(
    path: str,
    *,
    method: str = "GET",
    version: str = "1.1",
    host: str | None = "127.0.0.1",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    key: str | None = DEFAULT_KEY,
    ws_version: str | None = "13",
    protocol: str | None = "fido.cable",
    extra: tuple[str, ...] = (),
    eol: str = "\r\n",
) -> bytes:
    """A request head; each header given as None is left out."""
    lines = [f"{method} {path} HTTP/{version}"]
    for name, value in (
        ("Host", host),
        ("Upgrade", upgrade),
        ("Connection", connection),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", ws_version),
        ("Sec-WebSocket-Protocol", protocol),
    ):
        if value is not None:
            lines.append(f"{name}: {value}")
    lines.extend(extra)
    return (eol.join(lines) + eol + eol).encode("latin-1")


def get(path: str, method: str = "GET", version: str = "1.1") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")


def padded(path: str, size: int) -> bytes:
    """An upgrade head of exactly ``size`` bytes (one padding header)."""
    bare = head(path)
    filler = size - len(bare) - len("X-Pad: \r\n")
    data = head(path, extra=("X-Pad: " + "p" * filler,))
    assert len(data) == size
    return data


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (offsets, any order, out of range ignored)."""
    bounds = sorted({p for p in points if 0 < p < len(data)})
    edges = [0, *bounds, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# -- server bytes ------------------------------------------------------------------------------


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """(HTTP head, the bytes after it), or None if no whole head arrived."""
    end = data.find(b"\r\n\r\n")
    return None if end < 0 else (data[: end + 4], data[end + 4 :])


def server_frames(data: bytes) -> tuple[list[tuple[int, int, bytes]], bytes]:
    """The whole (unmasked) server frames at the start of ``data`` as (first byte, opcode,
    payload), and what follows them."""
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n, at = b1 & 0x7F, pos + 2
        if n == 126:
            if len(data) - at < 2:
                break
            (n,) = struct.unpack_from("!H", data, at)
            at += 2
        elif n == 127:
            if len(data) - at < 8:
                break
            (n,) = struct.unpack_from("!Q", data, at)
            at += 8
        if b1 & 0x80:
            at += 4  # a masked server frame is a bug the comparison shows; skip its key
        if len(data) - at < n:
            break
        frames.append((b0, b0 & 0x0F, bytes(data[at : at + n])))
        pos = at + n
    return frames, bytes(data[pos:])


def describe(data: bytes) -> list[str]:
    """A readable view of what one socket received, for failure messages."""
    out: list[str] = []
    parts = split_head(data)
    if parts is None:
        return [repr(data[:300])] if data else []
    first, rest = parts
    out.extend(first.decode("latin-1").split("\r\n")[:-2])
    if first.startswith(b"HTTP/1.1 101 "):
        frames, leftover = server_frames(rest)
        names = {OP_BINARY: "binary", OP_CLOSE: "close", OP_PING: "ping", OP_PONG: "pong"}
        for b0, op, payload in frames:
            if op == OP_CLOSE and len(payload) >= 2:
                text = f"close {struct.unpack('!H', payload[:2])[0]} {payload[2:]!r}"
            else:
                text = f"{names.get(op, hex(b0))} {len(payload)} bytes {payload[:20]!r}"
            out.append("  frame: " + text)
        if leftover:
            out.append(f"  + {len(leftover)} bytes that are no whole frame: {leftover[:40]!r}")
    elif rest:
        out.append(f"body: {rest[:300]!r}")
    return out


_ROUTING_HEADER = re.compile(rb"(\r\nX-caBLE-Routing-ID: )[0-9A-Fa-f]*\r\n")
_METRICS = b"Content-Type: text/plain; version=0.0.4"


def normalise(data: bytes) -> bytes:
    """What one socket received, with the random routing id and metric values taken out."""
    data = _ROUTING_HEADER.sub(rb"\1<routing id>\r\n", data, count=1)
    parts = split_head(data)
    if parts is not None and _METRICS in parts[0]:
        first, body = parts
        first = re.sub(rb"Content-Length: \d+", b"Content-Length: <n>", first)
        data = first + metrics_shape(body)
    return data


def metrics_shape(body: bytes) -> bytes:
    """A /metrics body without its values: comment lines, and each sample's name and labels."""
    lines = []
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            lines.append(line.rsplit(" ", 1)[0])
    return "\n".join(lines).encode()


# -- one conversation on one relay -------------------------------------------------------------


class Peer:
    """One raw client socket: it sends what the script says and keeps everything it receives."""

    def __init__(
        self, name: str, stream: trio.SocketStream, reply_close: bool, auto_pong: bool
    ) -> None:
        self.name = name
        self.stream = stream
        self.received = bytearray()
        #: How the relay ended it: "eof", "reset", or None while open.
        self.end: str | None = None
        self.done = trio.Event()
        #: Answer the relay's close frame with one of ours (else the relay's close timeout ends it).
        self.reply_close = reply_close
        #: Answer the relay's pings.
        self.auto_pong = auto_pong
        self._seen = 0
        self._sending = trio.Lock()
        #: Cleared while this client does not read (the relay must hold back, not drop).
        self.reading = trio.Event()
        self.reading.set()
        self._closed = False
        self.gave_up_sending = False
        # Set (and replaced) whenever bytes or the end arrive: waiting for them without polling,
        # so that polling never keeps ``settle`` from seeing the relays quiet.
        self._arrived = trio.Event()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    async def _wait_for(self, done: Callable[[], bool], timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not done() and self.end is None and not self.done.is_set():
                await self._arrived.wait()

    async def read(self) -> None:
        try:
            while True:
                await self.reading.wait()
                data = await self.stream.receive_some(65536)
                if not data:
                    self.end = "eof"
                    return
                self.received += data
                self._wake()
                if self.reply_close or self.auto_pong:
                    await self._answer()
        except trio.BrokenResourceError:
            self.end = "reset"
        except trio.ClosedResourceError:
            pass  # the conversation closed it
        finally:
            self.done.set()
            self._wake()

    async def _answer(self) -> None:
        parts = split_head(bytes(self.received))
        if parts is None or not parts[0].startswith(b"HTTP/1.1 101 "):
            return
        frames, _ = server_frames(parts[1])
        for _, op, payload in frames[self._seen :]:
            if op == OP_PING and self.auto_pong and not self._closed:
                await self.send(frame(OP_PONG, payload))
            elif op == OP_CLOSE and self.reply_close and not self._closed:
                self._closed = True
                await self.send(frame(OP_CLOSE, payload[:2]))
        self._seen = len(frames)

    async def send(self, data: bytes, points=(), gap: float = 0.0) -> None:
        """Send ``data`` cut at ``points``, sleeping ``gap`` (or a checkpoint) between pieces.

        Stops quietly once the relay no longer takes bytes: when that happens is timing.
        """
        for piece in cut(data, list(points)):
            if self.gave_up_sending:
                return
            try:
                async with self._sending:
                    await self.stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.gave_up_sending = True
                return
            await trio.sleep(gap)

    def send_with_eof_now(self, data: bytes) -> None:
        """``data`` and a FIN without yielding to the relay in between (small ``data`` only)."""
        sock = self.stream.socket
        sent = os.write(sock.fileno(), data) if data else 0
        assert sent == len(data), "the kernel took only part of it"
        sock.shutdown(socket.SHUT_WR)

    async def send_eof(self) -> None:
        """Half-close: the relay reads EOF, this socket still reads what the relay sends."""
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def until(self, size: int, timeout: float = 5.0) -> None:
        """Wait until this socket received ``size`` bytes in all, or ended (or ``timeout``)."""
        await self._wait_for(lambda: len(self.received) >= size, timeout)

    async def head(self, timeout: float = 2.0) -> bytes | None:
        """The relay's response head, once it came (None if it did not)."""
        await self._wait_for(lambda: split_head(bytes(self.received)) is not None, timeout)
        parts = split_head(bytes(self.received))
        return parts[0] if parts else None


class Conversation:
    """The clients of one scripted conversation with one relay."""

    def __init__(self, relay: Relay, nursery: trio.Nursery) -> None:
        self.relay = relay
        self.nursery = nursery
        self.peers: dict[str, Peer] = {}

    async def open(self, name: str, *, reply_close: bool = False, auto_pong: bool = False) -> Peer:
        assert name not in self.peers
        stream = await trio.open_tcp_stream("127.0.0.1", self.relay.port)
        peer = Peer(name, stream, reply_close, auto_pong)
        self.peers[name] = peer
        self.nursery.start_soon(peer.read)
        return peer

    def start_shutdown(self, grace: float, drain_delay: float) -> None:
        """``relay.shutdown`` in the background, its log lines counted as the relay's."""

        async def shutdown() -> None:
            _ENGINE.set(self.relay.engine)
            await self.relay.shutdown(grace, drain_delay)

        self.nursery.start_soon(shutdown)

    async def settle(self) -> None:
        """Wait until the relay (and every client) has nothing left to do."""
        await trio.testing.wait_all_tasks_blocked(QUIET)
        # A relay in another process: give it time, as nothing here can see it work.
        await trio.sleep(getattr(self.relay, "settle_time", 0.0))

    def routing_id(self, name: str) -> str:
        """The routing id the relay gave ``name`` in its 101 ("000000" if it gave none)."""
        found = re.search(
            rb"\r\nX-caBLE-Routing-ID: ([0-9A-Fa-f]+)\r\n", bytes(self.peers[name].received)
        )
        return found[1].decode() if found else "000000"

    async def new(self, name: str, tid: str, *, trailing: bytes = b"", **kwargs: bool) -> Peer:
        """``name`` opens /cable/new/<tid> (``trailing``: frames sent with the head)."""
        peer = await self.open(name, **kwargs)
        await peer.send(head(f"/cable/new/{tid}", key=key_for(name)) + trailing)
        await peer.head()
        await self.settle()
        return peer

    async def connect(
        self,
        name: str,
        tid: str,
        of: str = "authenticator",
        *,
        trailing: bytes = b"",
        **kwargs: bool,
    ) -> Peer:
        """``name`` joins the tunnel ``of`` opened, with the routing id the relay gave it."""
        peer = await self.open(name, **kwargs)
        rid = self.routing_id(of)
        await peer.send(head(f"/cable/connect/{rid}/{tid}", key=key_for(name)) + trailing)
        await peer.head()
        await self.settle()
        return peer

    async def pair(
        self,
        tid: str,
        *,
        pending: bytes = b"",
        reply_close: tuple[bool, bool] = (False, False),
        auto_pong: tuple[bool, bool] = (False, False),
    ) -> tuple[Peer, Peer]:
        """An authenticator opens ``tid``, sends ``pending``, then an initiator joins."""
        auth = await self.new(
            "authenticator", tid, reply_close=reply_close[0], auto_pong=auto_pong[0]
        )
        if pending:
            await auth.send(pending)
            await self.settle()
        init = await self.connect(
            "initiator", tid, reply_close=reply_close[1], auto_pong=auto_pong[1]
        )
        return auth, init


Script = Callable[[Conversation], Awaitable[None]]


@dataclass
class Transcript:
    """What one relay did in one conversation, normalised."""

    #: Per socket: (what it received, "closed" or "open" when the conversation ended).
    sockets: dict[str, tuple[bytes, str]]
    #: What the conversation added to ``relay.stats``.
    stats: dict[str, Any]
    #: The relay's log lines (sorted; timing fields out).
    logs: list[str]
    #: Whether the relay held no connection and no tunnel afterwards.
    idle: bool
    raw: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    def status(self, name: str) -> int | None:
        parts = split_head(self.raw.get(name, b""))
        if parts is None:
            return None
        return int(parts[0].split(b" ", 2)[1])

    def frames(self, name: str) -> list[tuple[int, int, bytes]]:
        parts = split_head(self.raw.get(name, b""))
        return server_frames(parts[1])[0] if parts else []

    def close(self, name: str) -> tuple[int, bytes] | None:
        """The code and reason of the close frame ``name`` got, if any."""
        for _, op, payload in self.frames(name):
            if op == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0], payload[2:]
        return None

    def messages(self, name: str) -> list[bytes]:
        return [payload for _, op, payload in self.frames(name) if op == OP_BINARY]

    def report(self) -> list[str]:
        out = []
        for name, data in self.raw.items():
            out.append(f"{name} ({self.sockets[name][1]}):")
            out.extend("  " + line for line in describe(data))
        out.append(f"stats: {self.stats}")
        out.extend(f"log: {line}" for line in self.logs)
        out.append(f"idle afterwards: {self.idle}")
        return out


def _snapshot(relay: Relay) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in vars(relay.stats).items():
        if isinstance(value, Counter):
            out[name] = Counter(value)
        elif isinstance(value, list):
            out[name] = list(value)
        elif isinstance(value, int | float):
            out[name] = value
    return out


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in after.items():
        old = before.get(name)
        if isinstance(value, Counter):
            diff = {k: n - old.get(k, 0) for k, n in value.items() if n != old.get(k, 0)}
            out[name] = dict(sorted(diff.items()))
        elif isinstance(value, list):
            out[name] = [a - b for a, b in zip(value, old, strict=True)]
        else:
            out[name] = value - old
    return out


#: The engine of the relay whose tasks are running: every task a relay starts inherits it from
#: the task that started the relay (``two_relays``), so each log line names its relay.
_ENGINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("engine", default=None)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str | None, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"event": record.getMessage(), "level": record.levelname.lower()}
        entry.update(getattr(record, "fields", {}))
        self.lines.append((_ENGINE.get(), entry))


@contextmanager
def relay_log() -> Iterator[list[tuple[str | None, dict[str, Any]]]]:
    """The ``relay`` logger's events while the block runs: (engine, fields as logged)."""
    logger = logging.getLogger("relay")
    handler = _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


#: Log fields that are timing, not behaviour.
_TIMING_FIELDS = ("duration_ms", "latency_ms")


def _normalise_log(entry: dict[str, Any]) -> str:
    entry = {k: v for k, v in entry.items() if k not in _TIMING_FIELDS}
    if "routing_id" in entry:
        entry["routing_id"] = "<routing id>"
    return json.dumps(entry, sort_keys=True, default=str)


async def converse(relay: Relay, script: Script, end_timeout: float = END_TIMEOUT) -> Transcript:
    """Run ``script`` against ``relay``; wait until the relay closed every socket (or
    ``end_timeout``), then until it holds nothing."""
    before = _snapshot(relay)
    async with trio.open_nursery() as nursery:
        conversation = Conversation(relay, nursery)
        await script(conversation)
        peers = list(conversation.peers.values())
        with trio.move_on_after(end_timeout):
            for peer in peers:
                await peer.done.wait()
        for peer in peers:
            await peer.stream.aclose()
    idle = False
    with trio.move_on_after(end_timeout):
        while relay.open_connections() or relay.live_tunnels():
            await trio.sleep(0.005)
        idle = True
    await conversation.settle()
    sockets = {
        p.name: (normalise(bytes(p.received)), "open" if p.end is None else "closed") for p in peers
    }
    return Transcript(
        sockets,
        _delta(before, _snapshot(relay)),
        [],
        idle,
        {p.name: bytes(p.received) for p in peers},
    )


async def converse_both(
    relays: dict[str, Relay], script: Script, **kwargs: Any
) -> dict[str, Transcript]:
    """``converse`` on both engines at once, each transcript with its own relay's log lines."""
    transcripts: dict[str, Transcript] = {}

    async def one(engine: str) -> None:
        transcripts[engine] = await converse(relays[engine], script, **kwargs)

    with relay_log() as lines:
        async with trio.open_nursery() as nursery:
            for engine in ENGINES:
                nursery.start_soon(one, engine)
    strays = [entry for engine, entry in lines if engine not in ENGINES]
    assert not strays, f"log lines from outside both relays' tasks: {strays}"
    for engine, transcript in transcripts.items():
        transcript.logs = sorted(_normalise_log(e) for tag, e in lines if tag == engine)
    return transcripts


@asynccontextmanager
async def two_relays(**config: Any) -> AsyncIterator[dict[str, Relay]]:
    """One relay per engine, both with ``BASE_CONFIG`` updated by ``config``."""
    if not reactor_available():
        pytest.skip("the reactor engine needs Linux epoll")
    settings_ = {**BASE_CONFIG, **config}
    async with AsyncExitStack() as stack:
        relays: dict[str, Relay] = {}
        for engine in ENGINES:
            # The relay's tasks are started here, and copy this context: their log lines say
            # which relay wrote them.
            token = _ENGINE.set(engine)
            try:
                relay = await stack.enter_async_context(running_relay(engine=engine, **settings_))
            finally:
                _ENGINE.reset(token)
            assert relay.engine == engine, (engine, relay.engine)
            relays[engine] = relay
        yield relays


def mismatch(name: str, transcripts: dict[str, Transcript]) -> str | None:
    """None if both engines' transcripts are equal, else a report of both."""
    tasks, reactor = transcripts["tasks"], transcripts["reactor"]
    if tasks == reactor:
        return None
    lines = [f"engines differ on {name!r}:"]
    for engine in ENGINES:
        lines.append(f"--- {engine}")
        lines.extend(transcripts[engine].report())
    return "\n".join(lines)


async def both(
    relays: dict[str, Relay], script: Script, name: str = "conversation", **kwargs: Any
) -> Transcript:
    """Run ``script`` on both engines; fail unless they agree; the tasks transcript."""
    transcripts = await converse_both(relays, script, **kwargs)
    problem = mismatch(name, transcripts)
    assert problem is None, problem
    return transcripts["tasks"]


async def differ(
    relays: dict[str, Relay], script: Script, name: str, **kwargs: Any
) -> tuple[Transcript, str | None]:
    """Like ``both``, but returns the mismatch report instead of failing (for case tables)."""
    transcripts = await converse_both(relays, script, **kwargs)
    return transcripts["tasks"], mismatch(name, transcripts)


def send_head(
    data: bytes | list[bytes], *, gap: float = 0.0, eof: bool = True, at_once: bool = False
) -> Script:
    """A script: one client sends ``data`` (pieces with ``gap`` between), then half-closes.

    ``at_once``: the bytes and the FIN in one go, both there before the relay's first read.
    """
    pieces = [data] if isinstance(data, bytes) else data

    async def script(c: Conversation) -> None:
        peer = await c.open("client")
        if at_once:
            peer.send_with_eof_now(b"".join(pieces))
            return
        for piece in pieces:
            await peer.send(piece)
            await trio.sleep(gap)
        await c.settle()
        if eof:
            await peer.send_eof()

    return script


# -- request heads -----------------------------------------------------------------------------

TID = tunnel_id_for("heads")
RID = "0A0B0C"
NEW = f"/cable/new/{TID}"
CLIENT_HELLO = bytes.fromhex("16030100c8010000c40303") + hashlib.sha256(b"hello").digest()

#: name -> (what the client sends, the status the relay answers; None: no response at all).
HEADS: dict[str, tuple[bytes | list[bytes], int | None]] = {
    "new": (head(NEW), 101),
    "new, lower-case tunnel id": (head(f"/cable/new/{TID.lower()}"), 101),
    "new with a message after the head": (head(NEW) + message(b"early"), 101),
    "new with a text frame after the head": (head(NEW) + frame(OP_TEXT, b"hi"), 101),
    "new with garbage after the head": (head(NEW) + b"\x00\x01garbage", 101),
    "connect, no such tunnel": (head(f"/cable/connect/{RID}/{TID}"), 404),
    "contact": (head("/cable/contact/abcd"), 410),
    "contact, not base64url": (head("/cable/contact/a.b"), 400),
    "healthz": (get("/healthz"), 200),
    "healthz HTTP/1.0": (get("/healthz", version="1.0"), 200),
    "healthz with a query": (get("/healthz?probe=1"), 200),
    "metrics": (get("/metrics"), 200),
    "HEAD healthz": (get("/healthz", "HEAD"), 200),
    "HEAD metrics": (get("/metrics", "HEAD"), 200),
    "HEAD new": (head(NEW, method="HEAD"), 405),
    "HEAD root": (get("/", "HEAD"), 404),
    "HEAD with a bad tunnel path": (get("/cable/new/x", "HEAD"), 400),
    "HEAD healthz HTTP/1.0": (get("/healthz", "HEAD", "1.0"), 200),
    "POST new": (head(NEW, method="POST"), 405),
    "PUT healthz": (get("/healthz", "PUT"), 405),
    "OPTIONS *": (get("*", "OPTIONS"), 400),
    "root": (get("/"), 404),
    "favicon": (get("/favicon.ico"), 404),
    "/cable": (head("/cable"), 400),
    "/cable/new/": (head("/cable/new/"), 400),
    "short tunnel id": (head("/cable/new/ABCDEF"), 400),
    "long tunnel id": (head(NEW + "0"), 400),
    "non-hex tunnel id": (head("/cable/new/" + "G" * 32), 400),
    "extra path segment": (head(NEW + "/x"), 400),
    "query on a tunnel path": (head(NEW + "?x=1"), 400),
    "percent-encoded tunnel id": (head("/cable/new/%41" + TID[3:]), 400),
    "absolute-form target": (head("http://127.0.0.1" + NEW), 400),
    "double slash": (head("/" + NEW), 404),
    "upper-case CABLE": (head(NEW.upper().replace("NEW", "new")), 404),
    "unknown cable path": (head(f"/cable/old/{TID}"), 400),
    "connect without tunnel id": (head(f"/cable/connect/{RID}"), 400),
    "connect, short routing id": (head(f"/cable/connect/0A0B/{TID}"), 400),
    "no Upgrade": (head(NEW, upgrade=None), 400),
    "Upgrade: h2c": (head(NEW, upgrade="h2c"), 400),
    "Upgrade: WebSocket, other": (head(NEW, upgrade="other, WebSocket"), 101),
    "no Connection": (head(NEW, connection=None), 400),
    "Connection: keep-alive": (head(NEW, connection="keep-alive"), 400),
    "Connection: keep-alive, Upgrade": (head(NEW, connection="keep-alive, Upgrade"), 101),
    "no key": (head(NEW, key=None), 400),
    "key not base64": (head(NEW, key="not base64!"), 400),
    "key of 15 bytes": (head(NEW, key=base64.b64encode(b"k" * 15).decode()), 400),
    "empty key": (head(NEW, key=""), 400),
    "two keys": (head(NEW, extra=("Sec-WebSocket-Key: " + key_for("second"),)), 400),
    "no version": (head(NEW, ws_version=None), 426),
    "version 8": (head(NEW, ws_version="8"), 426),
    "version 14": (head(NEW, ws_version="14"), 426),
    "two versions": (head(NEW, extra=("Sec-WebSocket-Version: 13",)), 400),
    "no subprotocol": (head(NEW, protocol=None), 400),
    "subprotocol chat": (head(NEW, protocol="chat"), 400),
    "subprotocol chat, fido.cable": (head(NEW, protocol="chat, fido.cable"), 101),
    "subprotocol FIDO.CABLE": (head(NEW, protocol="FIDO.CABLE"), 400),
    "no Host": (head(NEW, host=None), 400),
    "two Hosts": (head(NEW, extra=("Host: other",)), 400),
    "Origin (no allow list)": (head(NEW, extra=("Origin: https://x.example",)), 101),
    "X-Forwarded-For, untrusted": (head(NEW, extra=("X-Forwarded-For: 192.0.2.1",)), 403),
    "HTTP/1.0 upgrade": (head(NEW, version="1.0"), 505),
    "HTTP/1.2 upgrade": (head(NEW, version="1.2"), 505),
    "HTTP/2.0 upgrade": (head(NEW, version="2.0"), 505),
    "Content-Length: 0": (head(NEW, extra=("Content-Length: 0",)), 400),
    "Content-Length: 3 and a body": (head(NEW, extra=("Content-Length: 3",)) + b"abc", 400),
    "chunked body": (head(NEW, extra=("Transfer-Encoding: chunked",)) + b"0\r\n\r\n", 400),
    "bare LF": (head(NEW, eol="\n"), 101),
    "bare LF healthz": (b"GET /healthz HTTP/1.1\nHost: a\n\n", 200),
    "mixed line ends": (head(NEW).replace(b"\r\nUpgrade", b"\nUpgrade"), 101),
    "empty lines first": (b"\r\n\r\n" + head(NEW), 101),
    "bare LF empty lines first": (b"\n\n" + head(NEW), 101),
    "obs-fold header": (head(NEW, extra=("X-Long: a", " folded")), 101),
    "header without colon": (head(NEW, extra=("Broken header",)), 400),
    "space before colon": (head(NEW, extra=("X-Space : v",)), 400),
    "NUL in a header value": (head(NEW, extra=("X-Nul: a\x00b",)), 400),
    "DEL in a header value": (head(NEW, extra=("X-Del: a\x7fb",)), 101),
    "Latin-1 in a header value": (head(NEW, extra=("X-Latin: caf\xe9",)), 101),
    "Expect: 100-continue": (head(NEW, extra=("Expect: 100-continue",)), 101),
    "many small headers": (head(NEW, extra=tuple(f"X-{i}: {i}" for i in range(600))), 101),
    "underscore in a header name": (head(NEW, extra=("X_Under: v",)), 101),
    "empty Host": (head(NEW, host=""), 101),
    "key with spaces around": (head(NEW, key=f"  {DEFAULT_KEY}  "), 101),
    "Upgrade given twice": (head(NEW, extra=("Upgrade: websocket",)), 101),
    "lower-case connection token": (head(NEW, connection="upgrade"), 101),
    "two spaces in the request line": (head(NEW).replace(b"GET ", b"GET  ", 1), 400),
    "tab in the request line": (head(NEW).replace(b"GET ", b"GET\t", 1), 400),
    "trailing space after HTTP/1.1": (head(NEW).replace(b"HTTP/1.1", b"HTTP/1.1 ", 1), 400),
    "CR alone inside the head": (head(NEW).replace(b"\r\nUpgrade", b"\rUpgrade"), 400),
    "header name with a space": (head(NEW, extra=("X Space: v",)), 400),
    "lower-case method": (head(NEW, method="get"), 405),
    "long method": (head(NEW, method="G" * 100), 405),
    "garbage": (b"hello relay\r\n\r\n", 400),
    "TLS ClientHello": (CLIENT_HELLO, 400),
    "NUL bytes": (b"\x00" * 16, 400),
    "WebSocket frame first": (frame(OP_BINARY, b"hello"), 400),
    "space first": (b" GET / HTTP/1.1\r\n\r\n", 400),
    "method only": (b"GET\r\n\r\n", 400),
    "lower-case http": (b"GET /healthz http/1.1\r\nHost: a\r\n\r\n", 400),
    "head at the size limit": (padded(NEW, DEFAULT_MAX_REQUEST_HEAD), 101),
    "head one byte over": (padded(NEW, DEFAULT_MAX_REQUEST_HEAD + 1), 431),
    "head far over": (padded(NEW, 12_288), 431),
    "endless request line": (b"GET /" + b"a" * 9000, 431),
    "endless header": (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, 431),
    "two requests in one": (get("/healthz") + get("/metrics"), 200),
    "healthz, then an upgrade": (get("/healthz") + head(NEW), 200),
    "half a request, then EOF": (b"GET /healthz HTT", 400),
    "half a header, then EOF": (b"GET /healthz HTTP/1.1\r\nHost: a", 400),
    "a lone CR, then EOF": (b"\r", 400),
    "an empty line, then EOF": (b"\r\n", None),
    "nothing": (b"", None),
}


async def heads_problems(
    at_once: bool, names: list[str] | None = None, end_timeout: float = END_TIMEOUT
) -> list[str]:
    """Every ``HEADS`` case on both engines: mismatches, and statuses not as the table says.

    After a case that left either relay holding something, both relays are started afresh, so
    that one mismatch does not spoil the cases after it.
    """
    problems = []
    async with AsyncExitStack() as stack:
        relays = await stack.enter_async_context(two_relays())
        for name in HEADS if names is None else names:
            data, status = HEADS[name]
            case = f"{name}, FIN with the bytes" if at_once else name
            script = send_head(data, at_once=at_once)
            transcripts = await converse_both(relays, script, end_timeout=end_timeout)
            problem = mismatch(case, transcripts)
            if problem is not None:
                problems.append(problem)
            got = transcripts["tasks"].status("client")
            if got != status:
                problems.append(f"{case!r}: expected {status} from the tasks engine, got {got}")
            if not all(t.idle for t in transcripts.values()):
                await stack.aclose()
                relays = await stack.enter_async_context(two_relays())
    return problems


async def test_request_heads_get_the_same_answer_from_both_engines():
    problems = await heads_problems(at_once=False)
    assert not problems, "\n\n".join(problems)


async def test_refused_heads_with_the_fin_right_behind_get_the_same_answer():
    """The head and the client's FIN arrive together, before the relay's first read: a whole
    head is refused as without the FIN; one cut short is refused once read, as at any EOF."""
    refused = [name for name, (_, status) in HEADS.items() if status != 101]
    problems = await heads_problems(at_once=True, names=refused)
    assert not problems, "\n\n".join(problems)


async def test_upgrades_with_the_fin_right_behind_are_the_same():
    """An upgrade whose FIN came with it: the 101, then at once the close of a client gone
    (1001), for an authenticator (/cable/new) and an initiator (/cable/connect)."""
    upgrades = ["new", "new with a message after the head", "bare LF", "head at the size limit"]
    problems = await heads_problems(at_once=True, names=upgrades, end_timeout=0.5)
    tid = tunnel_id_for("connect with the FIN")

    async def connect(c: Conversation) -> None:
        await c.new(AUTH, tid)
        init = await c.open(INIT)
        init.send_with_eof_now(head(f"/cable/connect/{c.routing_id(AUTH)}/{tid}"))
        await c.settle()

    async with two_relays() as relays:
        transcript, problem = await differ(
            relays, connect, "connect, FIN with the bytes", end_timeout=0.5
        )
    problems += [problem] if problem else []
    if transcript.close(AUTH) != (1001, b"initiator disconnected"):
        problems.append(f"the tasks engine closed the authenticator with {transcript.close(AUTH)}")
    assert not problems, "\n\n".join(problems)


async def test_health_and_metrics_report_the_same_state():
    """/healthz counts the same waiting and paired tunnels; /metrics has the same families."""

    async def script(c: Conversation) -> None:
        await c.pair(tunnel_id_for("paired"))
        await c.new("waiting", tunnel_id_for("waiting"))
        for path in ("/healthz", "/metrics"):
            probe = await c.open(path)
            await probe.send(get(path))
            await probe.head()
            await c.settle()
        for name in ("authenticator", "initiator", "waiting"):
            await c.peers[name].send(frame(OP_CLOSE, close_payload(1000)))
            await c.settle()

    async with two_relays() as relays:
        transcript = await both(relays, script)
    assert transcript.raw["/healthz"].endswith(
        b'{"status": "ok", "tunnels_waiting": 1, "tunnels_paired": 1}'
    )
    assert b"hybrid_relay_tunnels_paired" in transcript.sockets["/metrics"][0]


# Heads cut into pieces: the lean parser, the h11 fallback and the head limit, wherever a
# segment ends.
SPLIT_HEADS = [
    "new",
    "new with a message after the head",
    "bare LF",
    "mixed line ends",
    "empty lines first",
    "two keys",
    "no subprotocol",
    "Content-Length: 3 and a body",
    "TLS ClientHello",
    "head at the size limit",
    "head one byte over",
    "garbage",
    "healthz",
    "half a header, then EOF",
]


@settings(FUZZ, max_examples=examples(0.2))
@given(
    name=st.sampled_from(SPLIT_HEADS),
    points=st.lists(st.floats(0, 1), max_size=40),
    gap=st.sampled_from([0.0, 0.0005, 0.002]),
)
async def test_a_head_in_any_segments_gets_the_same_answer(name, points, gap):
    data, status = HEADS[name]
    assert isinstance(data, bytes)
    pieces = cut(data, [int(p * len(data)) for p in points])
    async with two_relays() as relays:
        transcript = await both(relays, send_head(pieces, gap=gap), name)
    assert transcript.status("client") == status


async def test_a_head_that_never_completes_gets_408_from_both():
    trickle = [bytes([b]) for b in get("/healthz")[:30]]
    cases: dict[str, tuple[list[bytes], float]] = {
        "silence": ([], 0.0),
        "half a head": ([head(NEW)[:40]], 0.0),
        "a head one byte at a time": (trickle, 0.02),
        "empty lines forever": ([b"\r\n"] * 30, 0.02),
    }
    problems = []
    async with two_relays(handshake_timeout=0.3) as relays:
        for name, (pieces, gap) in cases.items():
            transcript, problem = await differ(relays, send_head(pieces, gap=gap, eof=False), name)
            if problem is not None:
                problems.append(problem)
            if transcript.status("client") != 408:
                problems.append(
                    f"{name!r}: the tasks engine answered {transcript.status('client')}"
                )
    assert not problems, "\n\n".join(problems)


async def test_live_state_refusals_are_the_same():
    """409 duplicate tunnel, 404 on a second join, a wrong routing id, a closed tunnel."""
    tid = tunnel_id_for("live")

    async def script(c: Conversation) -> None:
        await c.new("authenticator", tid)
        duplicate = await c.open("duplicate")
        await duplicate.send(head(f"/cable/new/{tid}", key=key_for("duplicate")))
        await c.settle()
        wrong = await c.open("wrong routing id")
        rid = c.routing_id("authenticator")
        other = f"{(int(rid, 16) + 1) % 0x1000000:06X}"
        await wrong.send(head(f"/cable/connect/{other}/{tid}"))
        await c.settle()
        await c.connect("initiator", tid)
        await c.connect("second initiator", tid)
        await c.peers["initiator"].send(frame(OP_CLOSE, close_payload(1000, b"done")))
        await c.settle()
        await c.connect("after the end", tid)

    async with two_relays() as relays:
        transcript = await both(relays, script)
    statuses = {name: transcript.status(name) for name in transcript.raw}
    assert statuses == {
        "authenticator": 101,
        "duplicate": 409,
        "wrong routing id": 404,
        "initiator": 101,
        "second initiator": 404,
        "after the end": 404,
    }


def _status_problems(
    name: str, transcript: Transcript, problem: str | None, expected: dict[str, int]
) -> list[str]:
    """What went wrong in one case of a table: the engines differed, or the status codes are
    not the expected ones."""
    problems = [] if problem is None else [problem]
    statuses = {peer: transcript.status(peer) for peer in transcript.raw}
    if statuses != expected:
        problems.append(f"{name!r}: the tasks engine answered {statuses}")
    return problems


async def test_configured_refusals_are_the_same():
    """Origin allow list, per-address connection limit, rate limit, failed-connect budget."""

    async def origins(c: Conversation) -> None:
        for name, origin in (("allowed", "https://ok.example"), ("forbidden", "https://evil")):
            peer = await c.open(name)
            await peer.send(head(f"/cable/new/{tunnel_id_for(name)}", extra=(f"Origin: {origin}",)))
            await c.settle()
            await peer.send_eof()

    async def address_limit(c: Conversation) -> None:
        await c.new("authenticator", tunnel_id_for("limit"))
        over = await c.open("over the limit")
        await over.send(get("/healthz"))
        await c.settle()
        await c.peers["authenticator"].send_eof()

    async def address_limit_silent(c: Conversation) -> None:
        await c.new("authenticator", tunnel_id_for("limit silent"))
        await c.open("silent over the limit")
        await trio.sleep(0.5)
        await c.peers["authenticator"].send_eof()

    async def rate_limit(c: Conversation) -> None:
        for i in range(3):
            peer = await c.open(f"new {i}")
            await peer.send(head(f"/cable/new/{tunnel_id_for(f'rate {i}')}"))
            await c.settle()
            await peer.send_eof()
            await c.settle()

    async def guessing(c: Conversation) -> None:
        for i in range(4):
            peer = await c.open(f"guess {i}")
            await peer.send(head(f"/cable/connect/{i:06X}/{TID}"))
            await c.settle()

    async def two_waiting(c: Conversation) -> None:
        for name in ("first", "second"):
            await c.new(name, tunnel_id_for(f"two waiting {name}"))
        for name in ("first", "second"):
            await c.peers[name].send_eof()
            await c.settle()

    async def forwarded(c: Conversation) -> None:
        for name, value in (("forwarded", "192.0.2.7"), ("forwarded, malformed", "not an ip")):
            peer = await c.open(name)
            tid = tunnel_id_for(name)
            await peer.send(head(f"/cable/new/{tid}", extra=(f"X-Forwarded-For: {value}",)))
            await c.settle()
            await peer.send_eof()
            await c.settle()

    async def admin(c: Conversation) -> None:
        for path in ("/metrics", "/healthz"):
            peer = await c.open(path)
            await peer.send(get(path))
            await c.settle()

    cases: list[tuple[str, Script, dict[str, Any]]] = [
        ("allowed origins", origins, {"allowed_origins": ("https://ok.example",)}),
        ("tunnel limit", two_waiting, {"max_tunnels": 1}),
        ("waiting limit", two_waiting, {"max_waiting_per_address": 1}),
        ("trusted proxy", forwarded, {"trusted_proxies": ("127.0.0.1",)}),
        ("admin listener", admin, {"admin": "127.0.0.1:0"}),
        ("address limit", address_limit, {"max_connections_per_address": 1}),
        (
            "address limit, silent",
            address_limit_silent,
            {"max_connections_per_address": 1, "handshake_timeout": 0.3},
        ),
        ("rate limit", rate_limit, {"rate_limit": 0.01, "rate_burst": 2}),
        ("connect failures", guessing, {"connect_failure_burst": 2}),
    ]
    expected = {
        "allowed origins": {"allowed": 101, "forbidden": 403},
        "tunnel limit": {"first": 101, "second": 503},
        "waiting limit": {"first": 101, "second": 429},
        "trusted proxy": {"forwarded": 101, "forwarded, malformed": 400},
        "admin listener": {"/metrics": 404, "/healthz": 200},
        "address limit": {"authenticator": 101, "over the limit": 429},
        "address limit, silent": {"authenticator": 101, "silent over the limit": None},
        "rate limit": {"new 0": 101, "new 1": 101, "new 2": 429},
        "connect failures": {"guess 0": 404, "guess 1": 404, "guess 2": 429, "guess 3": 429},
    }
    problems = []
    for name, script, config in cases:
        async with two_relays(**config) as relays:
            transcript, problem = await differ(relays, script, name)
        problems += _status_problems(name, transcript, problem, expected[name])
    assert not problems, "\n\n".join(problems)


async def test_the_pressure_sweep_is_the_same():
    """Near max_tunnels a /cable/new first ends the waiting tunnels idle past the pressure wait
    timeout (1008 wait_timeout); one that sent something is kept."""

    async def script(c: Conversation) -> None:
        for i in range(4):
            peer = await c.new(f"waiting {i}", tunnel_id_for(f"pressure {i}"), reply_close=i == 1)
            if i == 3:
                await peer.send(message(b"busy"))
            await c.settle()
        await trio.sleep(0.3)
        await c.new("newcomer", tunnel_id_for("pressure new"))
        for name in ("waiting 3", "newcomer"):
            await c.peers[name].send_eof()
            await c.settle()

    async with two_relays(max_tunnels=5, pressure_wait_timeout=0.2) as relays:
        transcript = await both(relays, script)
    for i in range(3):
        assert transcript.close(f"waiting {i}") == (1008, b"no initiator joined in time")
    assert transcript.close("waiting 3") == (1001, b"authenticator disconnected")
    assert transcript.status("newcomer") == 101


async def test_descriptor_budget_refusals_are_the_same():
    """Out of descriptors: 503 at once. Over the per-address limit: 429 after reading the request,
    whatever it is, or at once when too many such refusals are being read already."""

    async def polite(c: Conversation) -> None:
        await c.new("authenticator", tunnel_id_for("budget"))
        for name in ("silent 1", "silent 2"):
            await c.open(name)
            await c.settle()
        rude = await c.open("while two are read")
        await rude.send(get("/healthz"))
        await c.settle()
        await trio.sleep(0.4)  # the two silent ones time out (handshake_timeout)
        for name, data in (("garbage", b"\x00\x01"), ("healthz", get("/healthz")), ("eof", b"")):
            peer = await c.open(name)
            await peer.send(data)
            await peer.send_eof()
            await c.settle()
            # The same with the FIN right behind the bytes.
            (await c.open(f"{name}, FIN with it")).send_with_eof_now(data)
            await c.settle()
        await c.peers["authenticator"].send_eof()

    async def full(c: Conversation) -> None:
        for name in ("first", "second"):
            await c.new(name, tunnel_id_for(f"full {name}"))
        over = await c.open("over the budget")
        await over.send(get("/healthz"))
        await c.settle()
        for name in ("first", "second"):
            await c.peers[name].send_eof()
            await c.settle()

    cases = {
        "polite refusals": (polite, {"max_connections_per_address": 1}, 4),
        "descriptor budget": (full, {}, 2),
    }
    expected = {
        "polite refusals": {
            "authenticator": 101,
            "silent 1": None,
            "silent 2": None,
            "while two are read": 429,
            "garbage": 429,
            "healthz": 429,
            "eof": 429,
            "garbage, FIN with it": 429,
            "healthz, FIN with it": 429,
            "eof, FIN with it": 429,
        },
        "descriptor budget": {"first": 101, "second": 101, "over the budget": 503},
    }
    problems = []
    for name, (script, config, connections) in cases.items():
        async with two_relays(handshake_timeout=0.3, **config) as relays:
            for relay in relays.values():
                budget = DescriptorBudget(1024, 0, connections, 4)
                relay.descriptors = relay.dispatcher.descriptors = budget
            transcript, problem = await differ(relays, script, name)
        problems += _status_problems(name, transcript, problem, expected[name])
    assert not problems, "\n\n".join(problems)


# -- tunnels -----------------------------------------------------------------------------------

AUTH, INIT = "authenticator", "initiator"

#: How a tunnel conversation ends: (name, which side acts, the bytes it sends or an action).
#: "eof" half-closes, "reset" closes with RST, "nothing" has both sides close normally.
ENDINGS: dict[str, bytes | str] = {
    "close 1000": frame(OP_CLOSE, close_payload(1000, b"bye")),
    "close 4000 with a reason": frame(OP_CLOSE, close_payload(4000, "fertig \u2713".encode())),
    "close without a code": frame(OP_CLOSE),
    "close 1005 (not sendable)": frame(OP_CLOSE, close_payload(1005)),
    "close 999": frame(OP_CLOSE, close_payload(999)),
    "close with a 1-byte payload": frame(OP_CLOSE, b"\x03"),
    "close with a reason not UTF-8": frame(OP_CLOSE, close_payload(1000, b"\xff\xfe")),
    "close, fragmented": frame(OP_CLOSE, close_payload(1000), fin=False),
    "close with 124 bytes of reason": frame(OP_CLOSE, close_payload(1000, b"r" * 124)),
    "close, then a message": frame(OP_CLOSE, close_payload(1000)) + message(b"too late"),
    "two closes": frame(OP_CLOSE, close_payload(1000)) + frame(OP_CLOSE, close_payload(4001)),
    "eof": "eof",
    "reset": "reset",
    "text frame": frame(OP_TEXT, b"hello"),
    "text frame, not UTF-8": frame(OP_TEXT, b"\xff\xfe"),
    "text fragment": frame(OP_TEXT, b"hel", fin=False) + frame(OP_CONT, b"lo"),
    "unmasked binary": frame(OP_BINARY, b"naked", mask=None),
    "unmasked close": frame(OP_CLOSE, close_payload(1000), mask=None),
    "RSV1 set": frame(OP_BINARY, b"deflated?", rsv=4),
    "RSV3 on a ping": frame(OP_PING, b"x", rsv=1),
    "opcode 3": frame(0x3, b"reserved"),
    "opcode 0xB": frame(0xB, b"reserved control"),
    "ping of 126 bytes": frame(OP_PING, b"p" * 126),
    "fragmented ping": frame(OP_PING, b"p", fin=False),
    "continuation first": frame(OP_CONT, b"orphan"),
    "binary inside a fragmented message": frame(OP_BINARY, b"a", fin=False)
    + frame(OP_BINARY, b"b"),
    "oversized message": frame(OP_BINARY, b"x" * 300),
    "oversized in fragments": frame(OP_BINARY, b"x" * 200, fin=False) + frame(OP_CONT, b"y" * 200),
    "64-bit length": frame(OP_BINARY, b"z" * 70_000),
    "nothing": "nothing",
}
#: The message size limit of the tunnel tests: small, so that "oversized" endings are.
TUNNEL_MAX_MESSAGE = 256


async def end_tunnel(c: Conversation, side: str, ending: str) -> None:
    action = ENDINGS[ending]
    peer = c.peers[side]
    if action == "eof":
        await peer.send_eof()
    elif action == "reset":
        # SO_LINGER 0: the close sends RST, the relay's read fails (ECONNRESET).
        peer.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.stream.aclose()
    elif action == "nothing":
        for name in (AUTH, INIT):
            await c.peers[name].send(frame(OP_CLOSE, close_payload(1000)))
            await c.settle()
    else:
        assert isinstance(action, bytes)
        await peer.send(action)
    await c.settle()


@pytest.mark.parametrize("side", [AUTH, INIT])
async def test_every_ending_of_a_paired_tunnel_is_the_same(side):
    problems = []
    async with two_relays(max_message_size=TUNNEL_MAX_MESSAGE) as relays:
        for index, ending in enumerate(ENDINGS):
            # Every other one answers the relay's close frame (else the close timeout ends it).
            for reply in (index % 2 == 0,):
                tid = tunnel_id_for(f"{side} {ending} {reply}")

                async def script(c: Conversation, tid=tid, ending=ending, reply=reply) -> None:
                    await c.pair(tid, reply_close=(reply, reply))
                    await c.peers[AUTH].send(message(b"before the end"))
                    await c.settle()
                    await end_tunnel(c, side, ending)

                name = f"{side}: {ending}, replying to close: {reply}"
                transcript, problem = await differ(relays, script, name)
                if problem is not None:
                    problems.append(problem)
                # A side that reset its connection cannot read the relay's close frame.
                closed = [n for n in (AUTH, INIT) if ending != "reset" or n != side]
                if any(transcript.close(n) is None for n in closed):
                    problems.append(f"{name}: the tasks engine sent no close frame to {closed}")
    assert not problems, "\n\n".join(problems)


async def test_close_codes_and_reasons_follow_the_reasons_table():
    """A sample of endings checked for exact codes and reasons (the tasks engine, then both)."""
    cases = {
        ("close 1000", AUTH): ((1000, b"authenticator closed the tunnel"),) * 2,
        ("close 4000 with a reason", INIT): ((1000, b"initiator closed the tunnel"),) * 2,
        ("eof", INIT): ((1001, b"initiator disconnected"),) * 2,
        ("text frame", AUTH): ((1003, b"authenticator sent a text frame"),) * 2,
        ("oversized message", INIT): ((1009, b"initiator sent an oversized message"),) * 2,
        ("unmasked binary", AUTH): (
            (1002, b"authenticator broke WebSocket framing"),
            (1001, b"authenticator broke WebSocket framing"),
        ),
        ("close with a reason not UTF-8", INIT): (
            (1001, b"initiator broke WebSocket framing"),
            (1007, b"initiator broke WebSocket framing"),
        ),
    }
    problems = []
    async with two_relays(max_message_size=TUNNEL_MAX_MESSAGE) as relays:
        for (ending, side), expected in cases.items():
            tid = tunnel_id_for(f"codes {ending} {side}")

            async def script(c: Conversation, tid=tid, ending=ending, side=side) -> None:
                await c.pair(tid)
                await end_tunnel(c, side, ending)

            transcript, problem = await differ(relays, script, f"{side}: {ending}")
            if problem is not None:
                problems.append(problem)
            got = (transcript.close(AUTH), transcript.close(INIT))
            if got != expected:
                problems.append(f"{side}: {ending}: expected {expected}, got {got}")
    assert not problems, "\n\n".join(problems)


@st.composite
def tunnel_conversations(draw):
    """Messages both ways (fragmented, pings between fragments, pongs), cut at random bytes."""
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        side = draw(st.sampled_from([AUTH, INIT]))
        kind = draw(st.sampled_from(["message", "message", "message", "ping", "pong", "burst"]))
        if kind == "ping":
            data = frame(OP_PING, draw(st.binary(max_size=125)))
        elif kind == "pong":
            data = frame(OP_PONG, draw(st.binary(max_size=20)))
        else:
            count = draw(st.integers(2, 5)) if kind == "burst" else 1
            data = b""
            for _ in range(count):
                size = draw(
                    st.sampled_from([0, 1, 125, 126, TUNNEL_MAX_MESSAGE]) | st.integers(0, 300)
                )
                payload = (
                    draw(st.binary(min_size=size, max_size=size))
                    if size < 40
                    else bytes((draw(st.integers(0, 255)) + i) & 0xFF for i in range(size))
                )
                pings = tuple(draw(st.lists(st.binary(max_size=8), max_size=2)))
                data += message(payload, draw(st.integers(1, 4)), pings)
        points = draw(st.lists(st.integers(0, len(data)), max_size=6))
        steps.append((side, data, points))
    return {
        "steps": steps,
        "pending": [draw(st.binary(max_size=64)) for _ in range(draw(st.integers(0, 3)))],
        "ending": draw(st.sampled_from(sorted(ENDINGS))),
        "ending side": draw(st.sampled_from([AUTH, INIT])),
        "ending with the last step": draw(st.booleans()),
        "reply close": (draw(st.booleans()), draw(st.booleans())),
        "max messages": draw(st.sampled_from([4, 64])),
        "max pending messages": draw(st.sampled_from([2, 6])),
        "max pending bytes": draw(st.sampled_from([100, 4096])),
    }


@settings(FUZZ, max_examples=examples(0.25))
@given(tunnel_conversations())
async def test_random_tunnel_conversations_are_the_same(conversation):
    tid = tunnel_id_for("random")
    steps = conversation["steps"]
    ending = conversation["ending"]
    together = conversation["ending with the last step"] and isinstance(ENDINGS[ending], bytes)

    async def script(c: Conversation) -> None:
        pending = b"".join(message(m) for m in conversation["pending"])
        await c.pair(tid, pending=pending, reply_close=conversation["reply close"])
        for i, (side, data, points) in enumerate(steps):
            last = i == len(steps) - 1
            if last and together:
                # The end in the same segment as the last messages: they still go first.
                extra = ENDINGS[ending]
                assert isinstance(extra, bytes)
                await c.peers[side].send(data + extra, points)
                await c.settle()
                return
            await c.peers[side].send(data, points)
            await c.settle()
        await end_tunnel(c, conversation["ending side"], ending)

    config = {
        "max_message_size": TUNNEL_MAX_MESSAGE,
        "max_messages": conversation["max messages"],
        "max_pending_messages": conversation["max pending messages"],
        "max_pending_bytes": conversation["max pending bytes"],
    }
    async with two_relays(**config) as relays:
        await both(relays, script)


@st.composite
def frame_soups(draw):
    """Any frames at all, valid or not, from either side, in any segments."""
    steps = []
    for _ in range(draw(st.integers(1, 5))):
        data = b""
        for _ in range(draw(st.integers(1, 6))):
            opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x2, 0x2, 0x3, 0x8, 0x9, 0x9, 0xA, 0xB]))
            if opcode == OP_CLOSE:
                code = draw(st.sampled_from([None, 1000, 1001, 1005, 1006, 1015, 2999, 3000, 4999]))
                reason = draw(st.sampled_from([b"", b"why", b"\xc3", "\u00e9".encode()]))
                payload = close_payload(code, reason)
            else:
                payload = draw(st.binary(max_size=8)) * draw(st.sampled_from([1, 1, 20, 40]))
            data += frame(
                opcode,
                payload,
                fin=draw(st.booleans()) if opcode in (0x0, 0x1, 0x2) else draw(st.just(True)),
                mask=None if draw(st.integers(0, 15)) == 0 else MASK,
                rsv=4 if draw(st.integers(0, 15)) == 0 else 0,
            )
        points = draw(st.lists(st.integers(0, len(data)), max_size=4))
        steps.append((draw(st.sampled_from([AUTH, INIT])), data, points))
    return steps


@settings(FUZZ, max_examples=examples(0.2))
@given(frame_soups(), st.booleans(), frame_soups(), st.sampled_from([2, 6]))
async def test_random_frame_soup_is_the_same(steps, reply, waiting, pending_messages):
    """Also before the initiator joins: the authenticator's frames while it waits."""
    tid = tunnel_id_for("soup")

    async def script(c: Conversation) -> None:
        await c.new(AUTH, tid, reply_close=reply)
        for _, data, points in waiting[:2]:
            await c.peers[AUTH].send(data, points)
            await c.settle()
        await c.connect(INIT, tid, reply_close=not reply)
        for side, data, points in steps:
            await c.peers[side].send(data, points)
            await c.settle()
        await end_tunnel(c, AUTH, "nothing")

    config = {"max_message_size": TUNNEL_MAX_MESSAGE, "max_pending_messages": pending_messages}
    async with two_relays(max_pending_bytes=200, **config) as relays:
        await both(relays, script)


async def test_pending_messages_and_their_overflow_are_the_same():
    """Messages before the initiator joins: delivered first, or 1008 past the count or byte cap."""
    cases = {
        "none": [],
        "two": [b"one", b"two"],
        "at the count cap": [b"m"] * 3,
        "one over the count cap": [b"m"] * 4,
        "at the byte cap": [b"b" * 50, b"b" * 50],
        "one byte over the byte cap": [b"b" * 50, b"b" * 51],
        "one message over the byte cap": [b"x" * 101],
        "an empty message": [b""],
        "a ping while waiting": [b"m", None],
        "a text frame while waiting": [b"m", "text"],
        "a close while waiting": [b"m", "close"],
    }
    specials = {
        None: frame(OP_PING, b"waiting?"),
        "text": frame(OP_TEXT, b"text"),
        "close": frame(OP_CLOSE, close_payload(1000)),
    }
    problems = []
    async with two_relays(max_pending_messages=3, max_pending_bytes=100) as relays:
        for name, messages in cases.items():
            for one_segment in (False, True):
                tid = tunnel_id_for(f"pending {name} {one_segment}")
                data = [
                    message(m, fragments=2) if isinstance(m, bytes) else specials[m]
                    for m in messages
                ]

                async def script(c: Conversation, tid=tid, data=data, one=one_segment) -> None:
                    trailing = b"".join(data) if one else b""
                    auth = await c.new(AUTH, tid, trailing=trailing)
                    if not one:
                        for piece in data:
                            await auth.send(piece)
                            await c.settle()
                    await c.connect(INIT, tid)
                    await auth.send(message(b"after pairing"))
                    await c.settle()
                    await end_tunnel(c, AUTH, "close 1000")

                transcript, problem = await differ(
                    relays, script, f"{name}, one segment: {one_segment}"
                )
                if problem is not None:
                    problems.append(problem)
    assert not problems, "\n\n".join(problems)


async def test_frames_in_the_same_segment_as_either_head_are_the_same():
    """Frames sent with the request head: the first messages of either side, and worse."""
    cases = {
        "messages": (message(b"a1") + message(b"a2", 2), message(b"i1") + frame(OP_PING, b"p")),
        "a close": (message(b"a1") + frame(OP_CLOSE, close_payload(1000)), b""),
        "a text frame": (b"", message(b"i1") + frame(OP_TEXT, b"t")),
        "half a frame": (frame(OP_BINARY, b"half")[:5], frame(OP_BINARY, b"half")[:3]),
        "an oversized header": (b"", b"\x82\xff" + struct.pack("!Q", 1 << 40)),
    }
    problems = []
    async with two_relays(max_message_size=TUNNEL_MAX_MESSAGE) as relays:
        for name, (first, second) in cases.items():
            tid = tunnel_id_for(f"trailing {name}")

            async def script(c: Conversation, tid=tid, first=first, second=second) -> None:
                await c.new(AUTH, tid, trailing=first)
                await c.connect(INIT, tid, trailing=second)
                await end_tunnel(c, AUTH, "nothing")

            transcript, problem = await differ(relays, script, name)
            if problem is not None:
                problems.append(problem)
    assert not problems, "\n\n".join(problems)


async def test_many_tunnels_at_once_are_the_same():
    """Twenty tunnels talking at the same time (one epoll batch holds many of them)."""

    async def one(c: Conversation, k: int) -> None:
        tid = tunnel_id_for(f"many {k}")
        auth = await c.new(f"authenticator {k}", tid)
        init = await c.connect(f"initiator {k}", tid, of=f"authenticator {k}")
        for j in range(5):
            payload = bytes([k, j]) * (k + j)
            # Each side waits for the frame it is owed (2 header bytes): counted before sending.
            owed = len(init.received) + 2 + len(payload)
            await auth.send(message(payload, fragments=1 + j % 2))
            await init.until(owed)
            owed = len(auth.received) + 2 + len(payload)
            await init.send(message(payload[::-1]) + frame(OP_PING, payload[:4]))
            await auth.until(owed)
        await (auth if k % 2 else init).send(frame(OP_CLOSE, close_payload(1000, b"%d" % k)))

    async def script(c: Conversation) -> None:
        async with trio.open_nursery() as nursery:
            for k in range(20):
                nursery.start_soon(one, c, k)

    async with two_relays() as relays:
        transcript = await both(relays, script)
    assert transcript.stats["tunnel_closes"] == {"authenticator_closed": 10, "initiator_closed": 10}


async def test_the_node_wide_pending_cap_is_the_same():
    """max_pending_bytes_total: the second waiting tunnel's message overflows it (1008)."""

    async def script(c: Conversation) -> None:
        for name in ("first", "second"):
            peer = await c.new(name, tunnel_id_for(f"total {name}"))
            await peer.send(message(b"t" * 80))
            await c.settle()
        await c.peers["first"].send(frame(OP_CLOSE, close_payload(1000)))
        await c.settle()

    async with two_relays(max_pending_bytes=100, max_pending_bytes_total=150) as relays:
        transcript = await both(relays, script)
    assert transcript.close("second") == (1008, b"too many messages before the initiator joined")
    assert transcript.stats["tunnel_closes"] == {"authenticator_closed": 1, "pending_overflow": 1}


async def test_a_reader_that_falls_behind_gets_everything_in_order():
    """Backpressure: the initiator stops reading while 6 MB come its way, then catches up.

    Its receive buffer is kept small, so the relay's writes to it stop well before 6 MB (the
    relay's send buffer is at most ``net.ipv4.tcp_wmem``'s 4 MB): the relay must keep the rest
    and stop reading the authenticator, whatever the authenticator's side still buffers.
    """
    tid = tunnel_id_for("backpressure")
    payloads = [bytes([i]) * (60_000 + i) for i in range(100)]
    data = b"".join(message(p, fragments=1 + i % 3) for i, p in enumerate(payloads))
    expected = sum(len(p) + 4 for p in payloads)  # 126 < size < 65536: 4-byte frame headers

    async def script(c: Conversation) -> None:
        auth, init = await c.pair(tid)
        init.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        start = len(init.received)
        init.reading = trio.Event()
        c.nursery.start_soon(auth.send, data, list(range(0, len(data), 100_000)))
        await trio.sleep(0.2)
        init.reading.set()
        await init.until(start + expected)
        await c.settle()
        await init.send(frame(OP_CLOSE, close_payload(1000)))
        await c.settle()

    async with two_relays(max_messages=128) as relays:
        transcript = await both(relays, script)
    assert transcript.messages(INIT) == payloads


@pytest.mark.parametrize("ending", ["shutdown", "lifetime"])
async def test_a_tunnel_that_ends_while_its_reader_is_behind_ends_the_same(ending):
    """The initiator stops reading; the authenticator sends 7 MB; the tunnel ends (shutdown's
    grace, or its lifetime) while the relay still holds most of it; then the initiator reads
    what it was sent before the relay closed. Both engines' sockets take at most 16 KiB unsent
    (``TCP_NOTSENT_LOWAT``, as trio sets it), count a message forwarded once written, and drop a
    write left unfinished when the tunnel ends."""
    tid = tunnel_id_for(f"behind {ending}")
    data = b"".join(message(bytes([i]) * (60_000 + i)) for i in range(120))

    async def script(c: Conversation) -> None:
        auth, init = await c.pair(tid)
        init.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        init.reading = trio.Event()
        c.nursery.start_soon(auth.send, data, list(range(0, len(data), 100_000)))
        await trio.sleep(0.2)
        if ending == "shutdown":
            c.start_shutdown(grace=0.2, drain_delay=0)
        await trio.sleep(0.6)
        init.reading.set()

    config = {"tunnel_lifetime": 0.4} if ending == "lifetime" else {}
    async with two_relays(max_messages=200, **config) as relays:
        await both(relays, script)


async def test_draining_and_shutdown_are_the_same():
    """SIGTERM's path: /healthz 503 and /cable/new 503 while draining, joins still pair, then
    waiting tunnels close at once and paired ones after the grace (1001 both)."""

    async def script(c: Conversation) -> None:
        await c.pair(tunnel_id_for("drain paired"))
        await c.new("waiting", tunnel_id_for("drain waiting"))
        await c.new("late authenticator", tunnel_id_for("drain late"))
        c.start_shutdown(grace=0.3, drain_delay=0.3)
        await c.settle()
        health = await c.open("/healthz while draining")
        await health.send(get("/healthz"))
        await c.settle()
        refused = await c.open("new while draining")
        await refused.send(head(f"/cable/new/{tunnel_id_for('drain refused')}"))
        await c.settle()
        await c.connect("late initiator", tunnel_id_for("drain late"), of="late authenticator")
        await c.peers["late initiator"].send(message(b"during the drain"))
        await c.settle()

    async with two_relays() as relays:
        transcript = await both(relays, script)
    assert transcript.status("/healthz while draining") == 503
    assert transcript.raw["/healthz while draining"].endswith(
        b'{"status": "draining", "tunnels_waiting": 2, "tunnels_paired": 1}'
    )
    assert transcript.status("new while draining") == 503
    assert transcript.status("late initiator") == 101
    for name in ("authenticator", "initiator", "waiting", "late authenticator"):
        assert transcript.close(name) == (1001, b"relay shutting down"), name
    assert transcript.messages("late authenticator") == [b"during the drain"]


async def test_requests_finished_after_the_listener_closed_are_the_same():
    """Heads begun before shutdown and finished after the listener closed (the paired tunnel's
    grace keeps the relay up): /healthz says shutting_down, every tunnel request gets 503."""
    requests = {
        "/healthz": get("/healthz"),
        "new": head(f"/cable/new/{tunnel_id_for('closing new')}"),
        "connect": head(f"/cable/connect/{RID}/{tunnel_id_for('closing paired')}"),
        "garbage": b"GET / HTTP/1.1\r\nBad header\r\n\r\n",
    }

    async def script(c: Conversation) -> None:
        await c.pair(tunnel_id_for("closing paired"))
        for name, data in requests.items():
            await (await c.open(name)).send(data[:10])
        await c.settle()
        c.start_shutdown(grace=0.8, drain_delay=0.1)
        await trio.sleep(0.3)
        for name, data in requests.items():
            await c.peers[name].send(data[10:])
            await c.settle()

    async with two_relays() as relays:
        transcript = await both(relays, script)
    statuses = {name: transcript.status(name) for name in requests}
    assert statuses == {"/healthz": 503, "new": 503, "connect": 503, "garbage": 400}
    assert transcript.raw["/healthz"].endswith(
        b'{"status": "shutting_down", "tunnels_waiting": 0, "tunnels_paired": 1}'
    )
    assert transcript.close(AUTH) == (1001, b"relay shutting down")


async def test_quota_timeouts_and_keepalive_end_tunnels_alike():
    """max_messages from either side, wait_timeout, tunnel_lifetime, a silent peer."""

    def quota(side: str, burst: bool) -> Script:
        async def script(c: Conversation) -> None:
            await c.pair(tunnel_id_for(f"quota {side} {burst}"))
            messages = [message(bytes([i]) * i) for i in range(5)]
            if burst:
                await c.peers[side].send(b"".join(messages))
            else:
                for data in messages:
                    await c.peers[side].send(data)
                    await c.settle()
            await c.settle()

        return script

    async def waiting(c: Conversation) -> None:
        auth = await c.new(AUTH, tunnel_id_for("wait"), reply_close=True)
        await auth.send(message(b"pending"))

    async def lifetime(c: Conversation) -> None:
        await c.pair(tunnel_id_for("lifetime"), reply_close=(True, False))
        await c.peers[INIT].send(message(b"still here"))

    async def lifetime_while_waiting(c: Conversation) -> None:
        await c.new(AUTH, tunnel_id_for("lifetime waiting"))

    def silent(answering: str | None) -> Script:
        async def script(c: Conversation) -> None:
            pong = (answering == AUTH, answering == INIT)
            await c.pair(tunnel_id_for(f"silent {answering}"), auto_pong=pong)

        return script

    cases: list[tuple[str, Script, dict[str, Any], tuple[int, bytes]]] = [
        ("quota, authenticator", quota(AUTH, False), {"max_messages": 3},
         (1008, b"authenticator sent too many messages")),
        ("quota, initiator, one burst", quota(INIT, True), {"max_messages": 3},
         (1008, b"initiator sent too many messages")),
        ("wait timeout", waiting, {"wait_timeout": 0.3}, (1008, b"no initiator joined in time")),
        ("tunnel lifetime", lifetime, {"tunnel_lifetime": 0.4},
         (1008, b"tunnel lifetime exceeded")),
        ("lifetime before the wait timeout", lifetime_while_waiting,
         {"tunnel_lifetime": 0.3, "wait_timeout": 5}, (1008, b"tunnel lifetime exceeded")),
        ("nobody answers pings", silent(None), {"ping_interval": 0.2},
         (1001, b"authenticator stopped answering pings")),
        ("the initiator answers no pings", silent(AUTH), {"ping_interval": 0.2},
         (1001, b"initiator stopped answering pings")),
    ]  # fmt: skip
    problems = []
    for name, script, config, close in cases:
        async with two_relays(**config) as relays:
            transcript, problem = await differ(relays, script, name)
        if problem is not None:
            problems.append(problem)
        if transcript.close(AUTH) != close:
            problems.append(f"{name!r}: the tasks engine closed with {transcript.close(AUTH)}")
    assert not problems, "\n\n".join(problems)


async def test_tunnel_closed_log_lines_agree():
    """Both engines log one tunnel_closed line with the same fields and counts."""
    tid = tunnel_id_for("logged")

    async def script(c: Conversation) -> None:
        await c.pair(tid, pending=message(b"early"))
        await c.peers[INIT].send(
            message(b"x" * 200) + frame(OP_PING, b"are you there") + message(b"")
        )
        await c.settle()
        await end_tunnel(c, AUTH, "close 1000")

    async with two_relays() as relays:
        transcript = await both(relays, script)
    closed = [json.loads(line) for line in transcript.logs if '"tunnel_closed"' in line]
    assert closed == [
        {
            "event": "tunnel_closed",
            "level": "info",
            "tunnel": tid[:6],
            "reason": "authenticator_closed",
            "paired": True,
            "messages_to_initiator": 1,
            "bytes_to_initiator": 5,
            "messages_to_authenticator": 2,
            "bytes_to_authenticator": 200,
        }
    ]
    assert transcript.stats["tunnel_closes"] == {"authenticator_closed": 1}
    assert transcript.stats["forwarded"] == [1, 5, 2, 200]
    pongs = [payload for _, op, payload in transcript.frames(INIT) if op == OP_PONG]
    assert pongs == [b"are you there"]


# -- relay processes: the JSON log lines themselves ----------------------------------------------


class ProcessTarget:
    """A relay process as ``converse`` sees it (its stats and state are not visible here)."""

    settle_time = 0.05

    def __init__(self, process: RelayProcess, engine: str) -> None:
        self.process = process
        self.port = process.port
        self.engine = engine
        self.stats = Stats()

    def open_connections(self) -> int:
        return 0

    def live_tunnels(self) -> int:
        return 0


def json_lines(process: RelayProcess) -> list[str]:
    """A relay process's log after its ``listening`` line, timing and random values masked,
    each line's keys in the order written."""
    out = []
    listening = False
    for line in process.lines():
        if line.get("event") == "listening":
            listening = True
            continue
        if not listening:
            continue
        line["ts"] = "<ts>" if re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line["ts"]) else line["ts"]
        for name in ("duration_ms", "latency_ms"):
            if isinstance(line.get(name), int):
                line[name] = "<ms>"
        if "routing_id" in line:
            line["routing_id"] = "<routing id>"
        out.append(json.dumps(line))
    return sorted(out)


async def test_json_log_lines_of_relay_processes_agree(tmp_path):
    """``python -m relay --engine X``: the same conversation gives the same JSON lines (the
    reactor holds its lines while it handles a batch of events), through SIGTERM's shutdown."""
    tid = tunnel_id_for("process")
    args = ("--ping-interval", "0", "--close-timeout", "0.05", "--drain-delay", "0",
            "--max-message-size", "256", "--log-level", "debug")  # fmt: skip

    async def script(c: Conversation) -> None:
        for name, data in (("/healthz", get("/healthz")), ("garbage", b"\x16\x03\x01"),
                           ("unknown", head(f"/cable/connect/{RID}/{TID}"))):  # fmt: skip
            peer = await c.open(name)
            await peer.send(data)
            await peer.done.wait()
        auth = await c.new(AUTH, tid)
        init = await c.connect(INIT, tid)
        owed = len(init.received) + 18
        await auth.send(message(b"to the initiator"))
        await init.until(owed)
        await init.send(message(b"x" * 100) + frame(OP_TEXT, b"no"))
        await auth.done.wait()
        await init.done.wait()
        waiting = await c.new("waiting", tunnel_id_for("process waiting"))
        await waiting.send_eof()
        await waiting.done.wait()

    async with relay_process(tmp_path, "--engine", "tasks", *args) as tasks:
        async with relay_process(tmp_path, "--engine", "reactor", *args) as reactor:
            processes = {"tasks": tasks, "reactor": reactor}
            targets = {engine: ProcessTarget(p, engine) for engine, p in processes.items()}
            transcripts = await converse_both(targets, script)  # type: ignore[arg-type]
            problem = mismatch("relay processes", transcripts)
            assert problem is None, problem
            await trio.sleep(0.2)
            for process in processes.values():
                process.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                for process in processes.values():
                    await process.process.wait()
            logs = {engine: json_lines(p) for engine, p in processes.items()}
    assert logs["reactor"] == logs["tasks"]
    events = Counter(json.loads(line)["event"] for line in logs["tasks"])
    assert events == {
        "refused": 2,
        "tunnel_opened": 2,
        "tunnel_paired": 1,
        "tunnel_closed": 2,
        "signal": 1,
        "shutdown_started": 1,
        "shutdown_complete": 1,
    }, events


@pytest.mark.parametrize(
    ("override", "config", "engine"),
    [
        ("tasks", {}, "tasks"),
        ("reactor", {}, "reactor"),
        ("tasks", {"engine": "reactor"}, "reactor"),
        ("reactor", {"engine": "tasks"}, "tasks"),
        ("reactor", {"proxy_protocol": True, "trusted_proxies": ("127.0.0.1",)}, "tasks"),
        ("", {}, "reactor" if reactor_available() else "tasks"),
    ],
)
async def test_the_engine_override_reaches_running_relay(monkeypatch, override, config, engine):
    monkeypatch.setenv(ENGINE_VARIABLE, override)
    async with running_relay(**config) as relay:
        assert relay.engine == engine


# -- the rest of the relay suite on the tasks engine, and as plain Python ------------------------

#: Relay test modules rerun on the tasks engine (about 25 s together, in a pytest process that
#: runs while the rest of this module does).
TASKS_MODULES = (
    "test_relay_pairing.py",
    "test_relay_forwarding.py",
    "test_relay_pending.py",
    "test_relay_limits.py",
    "test_relay_keepalive.py",
    "test_relay_drain.py",
)
#: Rerun with ``HYBRID_RELAY_NATIVE=0`` when the main run uses the compiled modules
#: (``relay.native``): this differential, the fast paths, the reactor's edge cases and the tunnel
#: behaviour, so that the plain-Python relay keeps that coverage (about 45 s, alongside too).
PURE_MODULES = (
    "test_relay_engines.py",
    "test_relay_fastpath.py",
    "test_relay_fast_decide.py",
    "test_relay_reactor.py",
    "test_relay_pairing.py",
    "test_relay_forwarding.py",
    "test_relay_pending.py",
    "test_relay_limits.py",
)

_TASKS_SUITE = "test_the_relay_suite_passes_on_the_tasks_engine"
_PURE_SUITE = "test_the_relay_suite_passes_as_plain_python"


def _start_suite(
    factory: pytest.TempPathFactory, name: str, modules: tuple[str, ...], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path, float]:
    root = Path(__file__).parent.parent
    output = factory.mktemp(name) / "pytest.txt"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # The reruns never start reruns of their own.
    deselect = [f"--deselect=tests/test_relay_engines.py::{t}" for t in (_TASKS_SUITE, _PURE_SUITE)]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*command, *deselect, *(f"tests/{m}" for m in modules)],
            cwd=root,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return process, output, time.monotonic()


@pytest.fixture(scope="module", autouse=True)
def reruns(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The tasks-engine run of ``TASKS_MODULES`` and the plain-Python run of ``PURE_MODULES``,
    started with this module's first test so that they run alongside the others (they are mostly
    waiting, as they are); each None if not selected or not needed."""
    names = {item.name for item in request.session.items}
    suites: dict[str, tuple[subprocess.Popen[bytes], Path, float] | None] = {}
    suites[_TASKS_SUITE] = (
        _start_suite(
            tmp_path_factory,
            "tasks-suite",
            TASKS_MODULES,
            {ENGINE_VARIABLE: "tasks", "HYBRID_RELAY_ENGINE": "tasks"},
        )
        if _TASKS_SUITE in names and engine_override() != "tasks"
        else None
    )
    suites[_PURE_SUITE] = (
        _start_suite(tmp_path_factory, "pure-suite", PURE_MODULES, {compiled.ENV: "0"})
        if _PURE_SUITE in names and compiled.active
        else None
    )
    try:
        yield suites
    finally:
        for suite in suites.values():
            if suite is not None and suite[0].poll() is None:
                suite[0].kill()
                suite[0].wait()


def _suite_passed(suite: tuple[subprocess.Popen[bytes], Path, float], what: str) -> None:
    process, output, started = suite
    returncode = process.wait(timeout=300)
    seconds = time.monotonic() - started
    assert returncode == 0, (
        f"the relay tests failed {what} ({seconds:.0f} s):\n"
        + output.read_text(errors="replace")[-8000:]
    )


def test_the_relay_suite_passes_on_the_tasks_engine(reruns):
    suite = reruns[_TASKS_SUITE]
    if suite is None:
        pytest.skip("this whole run is on the tasks engine already")
    _suite_passed(suite, "on the tasks engine")


def test_the_relay_suite_passes_as_plain_python(reruns):
    suite = reruns[_PURE_SUITE]
    if suite is None:
        # tests/test_relay_native.py fails when a build is missing; this run is plain Python.
        pytest.skip(f"this whole run is plain Python already ({compiled.reason})")
    _suite_passed(suite, "as plain Python (HYBRID_RELAY_NATIVE=0)")
