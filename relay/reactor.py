"""The reactor engine: every plain-TCP connection of a node served from one callback loop.

Why: with one trio task per connection, most of a tunnel's CPU went to trio's machinery around
about seven task steps (each wait re-arms an EPOLLONESHOT registration, builds an abort closure and
passes through the scheduler; each connection enters two or three cancel scopes; see
``bench/PROFILE.md``), not to relaying. Here the listening sockets and every accepted socket sit in
one relay-owned epoll set, registered once (edge-triggered), and one trio task reacts to readiness
by calling plain methods: no task, cancel scope or wait per connection, one ``epoll_wait`` for many
events, deadlines in one heap.

What it shares with the tasks engine (``relay.dispatch``, ``relay.tunnel``, ``relay.websocket``), so
that behaviour is the same by construction: the request-head parser (``relay.http.HeadReader``),
the whole request decision (``Dispatcher.plan``: limits, refusals, registration, pairing), the
response bytes, the frame codec (``relay.wsframe``), the tunnel registry (``Tunnels``) and the end
table (``relay.reasons``). What it re-states in callback form, step for step: the per-connection
phase of ``Dispatcher.handle``, the forwarding of ``Tunnels._pump``, the tunnel endings of
``run_authenticator``/``run_initiator`` and the close handshake of ``WebSocket.close``.
``tests/test_relay_engines.py`` runs both engines side by side on the same byte streams.

Living inside trio: the reactor is one trio task. It takes every ready event with
``epoll.poll(0)`` and handles them; only when none is left does it wait, with
``trio.lowlevel.wait_readable`` on its epoll descriptor, so trio's scheduler stays in charge
(signals, the admin listener, the keep-alive and every other task run as before) and one trio wait
serves however many events arrived meanwhile. Under a steady load it yields with a checkpoint
after every ``_BATCH`` events. Its deadlines end a wait through a second task, the alarm, asleep
until the earliest of them, which writes to an eventfd in the epoll set; work handed to it from
other tasks (the keep-alive ending a silent tunnel, shutdown) is queued and wakes it the same way.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from itertools import count
from time import perf_counter
from typing import Any, Final

import trio
from trio.lowlevel import checkpoint, wait_readable

from relay import logs
from relay.accept import _ACCEPT_BACKOFF, _ACCEPT_CAPACITY_ERRNOS, _IGNORABLE_ACCEPT_ERRNOS
from relay.dispatch import _QUICK_REFUSAL_TIMEOUT, Client, Dispatcher, Join, Open, Refuse, Serve
from relay.errors import (
    BadRequest,
    ClientGone,
    FrameError,
    PeerClosed,
    PeerGone,
    WebSocketEnded,
)
from relay.http import (
    HeadReader,
    response_bytes,
    switching_bytes,
    trailing_bytes,
    whole_lean_request,
)
from relay.logs import log_event
from relay.reasons import ENDS, LIFETIME, SHUTDOWN, WAIT_TIMEOUT
from relay.requests import Refusal
from relay.tunnel import AUTHENTICATOR, INITIATOR, Tunnel, Tunnels, _frames, _Side
from relay.websocket import RECEIVE_SIZE
from relay.wsframe import (
    BINARY_HEADER_MEDIUM,
    BINARY_HEADER_SHORT,
    Close,
    FrameParser,
    Ping,
    close_frame,
    pong_frame,
)

_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT
_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_CONNECTION_EVENTS: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_HEAD_READ: Final = 4096
#: TCP_NODELAY, and TCP_NOTSENT_LOWAT at 16 KiB so that the kernel holds little unsent data for a
#: peer that does not read (the writer then keeps it and stops reading the other side).
_SOCKET_OPTIONS: Final = ((socket.TCP_NODELAY, 1),) + (
    ((socket.TCP_NOTSENT_LOWAT, 2**14),) if hasattr(socket, "TCP_NOTSENT_LOWAT") else ()
)
#: Events handled between two looks at trio's own work when trio has none due.
_BATCH: Final = 256
#: Connections accepted per listener readiness before other events get their turn.
_ACCEPT_BURST: Final = 64
_INF: Final = float("inf")
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop
_perf_counter: Final = perf_counter
_read: Final = os.read
_write: Final = os.write
_BINARY_SHORT: Final = BINARY_HEADER_SHORT.pack
_BINARY_MEDIUM: Final = BINARY_HEADER_MEDIUM.pack

# Connection phases.
_HEAD: Final = 0  # reading the request head
_FLUSH: Final = 1  # a response is queued; close once it is written (or at the deadline)
_OPEN: Final = 2  # a tunnel socket, forwarding
_CLOSING: Final = 3  # our close frame is out (or queued); waiting for the client's, then close
_DONE: Final = 4

# WebSocket states, as in relay.websocket.
_WS_OPEN: Final = 0
_WS_REMOTE_CLOSING: Final = 1
_WS_LOCAL_CLOSING: Final = 2
_WS_CLOSED: Final = 3


class Connection:
    """One accepted socket, from its first byte to its close; also a tunnel side's socket.

    As a tunnel side it stands in for both the task's ``WebSocket`` (``limit_message_size``,
    ``silent``, ``ping``) and its cancel scope (``cancel``, ``deadline``) in ``Tunnel``.
    """

    __slots__ = (
        "reactor",
        "fd",
        "client",
        "phase",
        "reader",
        "polite",
        "counted",
        "in_handshake",
        "_deadline",
        "out",
        "broken",
        "parser",
        "receive_size",
        "ws_state",
        "ended",
        "tunnel",
        "side",
        "owner",
        "stopped",
        "blocked",
        "readable",
        "waiters",
        "count",
        "ping_mark",
        "await_reply",
        "hup",
        "inflight",
        "timer_key",
        "timer_when",
    )

    def __init__(self, reactor: Reactor, fd: int, client: Client) -> None:
        self.reactor = reactor
        # The descriptor itself, no socket object: creating one costs a getsockname call and
        # more Python than reading and writing through os.read/os.write. Closed only by
        # Reactor._finish, once.
        self.fd = fd
        self.client = client
        self.phase = _HEAD
        self.reader: HeadReader | None = None
        self.polite = False
        self.counted = False
        self.in_handshake = False
        self._deadline = _INF
        self.out: bytearray | None = None
        self.broken = False
        self.parser: FrameParser | None = None
        self.receive_size = RECEIVE_SIZE
        self.ws_state = _WS_OPEN
        self.ended: WebSocketEnded | None = None
        self.tunnel: Tunnel | None = None
        self.side: _Side = AUTHENTICATOR
        self.owner = False
        # Set once this side's part of the tunnel is over (``cancel``): nothing more is forwarded.
        self.stopped = False
        # Not reading while the socket its messages go to has unwritten bytes (backpressure).
        self.blocked = False
        # Readiness seen while blocked, to act on once unblocked.
        self.readable = False
        self.waiters: list[Connection] | None = None
        self.count = 0
        self.ping_mark = -1
        self.await_reply = False
        # The peer shut down its side (EPOLLRDHUP) or the socket failed: with edge-triggered
        # readiness no new event follows, so reads go on to EOF instead of stopping short.
        self.hup = False
        # Forwarded batches still in ``out``: (counter offset, messages, bytes). They count as
        # forwarded once written, as in the tasks engine, where the send returns only then.
        self.inflight: list[tuple[int, int, int]] | None = None
        # This connection's live entry in the reactor's timer heap (0 / inf: none).
        self.timer_key = 0
        self.timer_when = _INF

    # -- what Tunnel needs of a side's cancel scope ----------------------------------------------

    @property
    def deadline(self) -> float:
        return self._deadline

    @deadline.setter
    def deadline(self, when: float) -> None:
        self.reactor.set_deadline(self, when)

    def cancel(self) -> None:
        """The tunnel ended (or this side must stop): close this side soon."""
        if not self.stopped and self.phase == _OPEN:
            self.stopped = True
            self.reactor.schedule(self)

    # -- what Tunnels and the keep-alive need of a side's socket ---------------------------------

    def limit_message_size(self, max_message_size: int) -> None:
        parser = self.parser
        assert parser is not None
        parser.max_message_size = max_message_size
        self.receive_size = max(4096, min(RECEIVE_SIZE, max_message_size + 14))

    def silent(self) -> bool:
        parser = self.parser
        return parser is not None and self.ping_mark >= 0 and parser.pongs == self.ping_mark

    async def ping(self, frame: bytes) -> None:
        """Send a keep-alive ping; skipped while the socket has unwritten bytes, as in tasks."""
        parser = self.parser
        if self.ws_state != _WS_OPEN or self.out or self.broken or parser is None:
            self.ping_mark = -1
            return
        self.ping_mark = parser.pongs
        self.write(frame)

    # -- writing --------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> bool:
        """Queue ``data`` after what is unwritten, writing what the kernel takes now.

        False if the socket is broken."""
        if self.broken:
            return False
        out = self.out
        if out is not None:
            out += data
            return True
        try:
            sent = _write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            return False
        if sent < len(data):
            self.out = bytearray(memoryview(data)[sent:])
        return True

    def send_frames(self, frames: bytes | bytearray) -> bool:
        """``WebSocket.send_frames``: False (PeerGone) when the socket cannot take them."""
        if self.ws_state != _WS_OPEN:
            return False
        return self.write(frames)


def _fast_clock(clock: trio.abc.Clock) -> Callable[[], float]:
    """A function reading ``clock``: for trio's own clock (its offset plus ``perf_counter``) the
    same sum computed here, compiled, instead of in the clock's Python method; for any other
    clock (tests' MockClock), the clock's method."""
    offset = getattr(clock, "offset", None)
    if type(clock).__name__ != "SystemClock" or not isinstance(offset, float):
        return clock.current_time

    def now() -> float:
        return offset + _perf_counter()

    return now


class Reactor:
    """The callback loop serving one node's plain-TCP connections (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher, tunnels: Tunnels) -> None:
        self.dispatcher = dispatcher
        self.tunnels = tunnels
        self.config = dispatcher.config
        # The limits read per connection, copied once (the config is fixed while the relay runs;
        # compiled, an attribute of this class is a C field, one of the config a Python lookup).
        config = self.config
        self._handshake_timeout = config.handshake_timeout
        self._max_request_head = config.max_request_head
        self._max_message_size = config.max_message_size
        self._wait_timeout = config.wait_timeout
        self._max_messages = config.max_messages
        self._close_timeout = config.close_timeout
        self.stats = dispatcher.stats
        self.epoll = select.epoll()
        self.connections: dict[int, Connection] = {}
        self.listeners: dict[int, socket.socket] = {}
        self._timers: list[tuple[float, int]] = []
        #: The connection of each live heap entry, by its key (see ``set_deadline``).
        self._timed: dict[int, Connection] = {}
        self._sequence = count(1)
        #: Connections whose tunnel side must end, queued by ``Connection.cancel``.
        self._soon: list[Connection] = []
        #: Connections with more to read after a full read, or unblocked.
        self._ready: list[Connection] = []
        #: Wakes the waiting reactor (from the alarm task or other tasks); in the epoll set.
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self._wake_fd, _IN)
        #: True while the reactor waits (only then does waking it need a write).
        self._waiting = False
        #: When the alarm task wakes the reactor next (trio time), and that task's scope.
        self._alarm_at = _INF
        self._alarm_scope: trio.CancelScope | None = None
        self._accept_paused_until = _INF
        self._accept_logged_at = -1.0
        self._accept_failures = 0
        self._nodelay_inherited: bool | None = None
        self._family: tuple[int, int, int] = (socket.AF_INET, socket.SOCK_STREAM, 0)
        self._families: dict[int, tuple[int, int, int]] = {}

    # -- listeners ----------------------------------------------------------------------------

    def add_listener(self, sock: socket.socket) -> None:
        # What trio.SocketStream sets on each socket of the tasks engine; Linux copies both from
        # the listener to every accepted socket (checked once, at the first accept).
        for option, value in _SOCKET_OPTIONS:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
        self.listeners[sock.fileno()] = sock
        # (family, type, proto) as plain ints, read once: the socket's properties convert to enums.
        self._families[sock.fileno()] = (int(sock.family), int(sock.type), sock.proto)
        self.epoll.register(sock.fileno(), _IN)

    def stop_accepting(self) -> None:
        """Take the listeners out of the loop (the caller closes them)."""
        for fd in list(self.listeners):
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        self.listeners.clear()
        self._families.clear()

    def _accept(self, fd: int, listener: socket.socket) -> None:
        # socket.accept without its per-call enum conversions of family and type.
        accept = listener._accept  # type: ignore[attr-defined]
        self._family = self._families[fd]
        for _ in range(_ACCEPT_BURST):
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                    continue
                if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                    self._pause_accepting(exc)
                    return
                raise
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
            except OSError:
                os.close(fd)
                continue
            try:
                self._admit(fd, peer)
            except Exception as exc:  # noqa: BLE001 - one bad connection must never stop the relay
                conn = self.connections.get(fd)
                if conn is not None:
                    self._abort(conn, exc)
                else:
                    os.close(fd)
                    log_event("connection_error", logging.ERROR, error=repr(exc))

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors or memory: back off like trio.serve_listeners, and say so."""
        self._accept_failures += 1
        now = time.monotonic()
        if now - self._accept_logged_at >= 1.0:
            assert exc.errno is not None
            log_event(
                "accept_failed",
                logging.ERROR,
                errno=errno.errorcode[exc.errno],
                error=os.strerror(exc.errno),
                failures=self._accept_failures,
                retry_s=_ACCEPT_BACKOFF,
            )
            self._accept_logged_at = now
            self._accept_failures = 0
        for fd in self.listeners:
            self.epoll.modify(fd, 0)
        self._accept_paused_until = self.tunnels.now() + _ACCEPT_BACKOFF

    def _resume_accepting(self) -> None:
        self._accept_paused_until = _INF
        for fd in self.listeners:
            self.epoll.modify(fd, _IN)

    # -- one connection's opening phase (Dispatcher.handle) -------------------------------------

    def _admit(self, fd: int, peer: Any) -> None:
        if self._nodelay_inherited is not True:
            self._set_nodelay(fd)
        dispatcher = self.dispatcher
        address = str(peer[0]) if peer else "unknown"
        dispatcher.stats.connections_accepted += 1
        dispatcher.sockets += 1
        client = Client(address, None)
        conn = Connection(self, fd, client)
        self.connections[conn.fd] = conn
        self.epoll.register(conn.fd, _CONNECTION_EVENTS)
        if dispatcher.sockets > dispatcher.descriptors.connections:
            # Out of descriptors: answer at once and keep nothing, so accept never runs dry.
            refusal = Refusal(503, "fd_limit", "relay is full")
            self._respond(conn, dispatcher.refusal_bytes(dispatcher.refusal(refusal, address)), 0.1)
            return
        if not (dispatcher.trusting and address in dispatcher.trusted):
            if not dispatcher._may_hold(address):
                if dispatcher._polite_refusals >= dispatcher.descriptors.reserve // 2:
                    self._respond(conn, dispatcher.refusal_bytes(dispatcher._limit(address)), 0.1)
                    return
                # Read the request first, so that the client sees why it is refused.
                dispatcher._polite_refusals += 1
                conn.polite = True
                timeout = min(_QUICK_REFUSAL_TIMEOUT, self._handshake_timeout)
                self.set_deadline(conn, self.tunnels.now() + timeout)
                return
            dispatcher._per_address[address] += 1
            client.counted = address
        dispatcher.connections += 1
        conn.counted = True
        dispatcher.handshakes += 1
        conn.in_handshake = True
        self.set_deadline(conn, self.tunnels.now() + self._handshake_timeout)

    def _set_nodelay(self, fd: int) -> None:
        # A socket object borrowing the descriptor, for getsockopt/setsockopt (then let go).
        sock = socket.socket(*self._family, fileno=fd)
        try:
            if self._nodelay_inherited is None:
                inherited = all(
                    sock.getsockopt(socket.IPPROTO_TCP, option) == value
                    for option, value in _SOCKET_OPTIONS
                )
                self._nodelay_inherited = inherited
                if inherited:
                    return
            for option, value in _SOCKET_OPTIONS:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        finally:
            sock.detach()

    def _read_head(self, conn: Connection) -> None:
        # No HeadReader until the first bytes are not a whole lean head (whole_lean_request).
        reader = conn.reader
        fd = conn.fd
        request = None
        try:
            while request is None:
                try:
                    data = _read(fd, _HEAD_READ)
                except BlockingIOError:
                    return
                except OSError:
                    if reader is None:
                        reader = conn.reader = HeadReader(self._max_request_head)
                    request = reader.lost()
                    break
                if reader is None:
                    request = whole_lean_request(data, self._max_request_head)
                    if request is not None:
                        break
                    reader = conn.reader = HeadReader(self._max_request_head)
                request = reader.feed(data)
                if request is None and len(data) < _HEAD_READ and data and not conn.hup:
                    return
        except BadRequest as exc:
            if conn.polite:
                self._refuse_polite(conn)
                return
            self._leave_handshake(conn)
            dispatcher = self.dispatcher
            plan = dispatcher.bad_request(exc, conn.client.address)
            self._respond(conn, dispatcher.refusal_bytes(plan), None)
            return
        except ClientGone:
            if conn.polite:
                self._refuse_polite(conn)
                return
            self._leave_handshake(conn)
            self.stats.refusals["incomplete_request"] += 1
            self._finish(conn)
            return
        conn.reader = None
        if conn.polite:
            self._refuse_polite(conn)
            return
        self._leave_handshake(conn)
        dispatcher = self.dispatcher
        decided = dispatcher.plan(request, conn.client)
        if isinstance(decided, Refuse):
            self._respond(conn, dispatcher.refusal_bytes(decided), None)
        elif isinstance(decided, Serve):
            self._respond(conn, dispatcher.plain_bytes(decided), None)
        elif isinstance(decided, Open):
            self._open(conn, decided)
        else:
            self._join(conn, decided)

    def _leave_handshake(self, conn: Connection) -> None:
        if conn.in_handshake:
            conn.in_handshake = False
            self.dispatcher.handshakes -= 1

    def _refuse_polite(self, conn: Connection) -> None:
        conn.reader = None
        dispatcher = self.dispatcher
        self._respond(conn, dispatcher.refusal_bytes(dispatcher._limit(conn.client.address)), None)

    def _handshake_expired(self, conn: Connection) -> None:
        if conn.polite:
            self._finish(conn)
            return
        self._leave_handshake(conn)
        address = conn.client.address
        self.stats.refusals["handshake_timeout"] += 1
        log_event("refused", reason="handshake_timeout", status=408, client=address)
        self._respond(conn, response_bytes(408, b"opening handshake took too long\n"), 0.2)

    def _respond(self, conn: Connection, data: bytes, timeout: float | None) -> None:
        """Write a whole response, then close; ``timeout`` None keeps the handshake deadline."""
        conn.reader = None
        if not conn.write(data) or conn.out is None:
            self._finish(conn)
            return
        conn.phase = _FLUSH
        if timeout is not None:
            self.set_deadline(conn, self.tunnels.now() + timeout)

    # -- upgrades (Dispatcher._carry_out) ---------------------------------------------------------

    def _upgrade(self, conn: Connection, plan: Open | Join, line: bytes) -> bool:
        """Send the 101; False if the socket could not take it."""
        if not conn.write(switching_bytes(plan.key, line)):
            return False
        conn.parser = FrameParser(self._max_message_size, refuse_text=True)
        conn.phase = _OPEN
        conn._deadline = _INF
        if conn.hup:
            # The client's FIN came with its request: no new event follows, so read to it.
            self._ready.append(conn)
        return True

    def _open(self, conn: Connection, plan: Open) -> None:
        tunnel = plan.tunnel
        if not self._upgrade(conn, plan, plan.line):
            self.tunnels.unregister(tunnel)
            self._finish(conn)
            return
        events = self._parse(conn, trailing_bytes(plan.request))
        conn.tunnel = tunnel
        conn.side = AUTHENTICATOR
        conn.owner = True
        self.dispatcher.opened(plan, conn)
        # Tunnels.run_authenticator, up to its pump.
        now = self.tunnels.now()
        end_of_life = tunnel.end_of_life
        wait_end = tunnel.wait_end = now + self._wait_timeout
        tunnel.owner_scope = conn
        self.set_deadline(conn, end_of_life if tunnel.paired else min(wait_end, end_of_life))
        if tunnel.end is not None:
            conn.cancel()
        if events:
            self._deliver(conn, events)

    def _join(self, conn: Connection, plan: Join) -> None:
        tunnel = plan.tunnel
        if not self._upgrade(conn, plan, b""):
            self.tunnels.join_failed(tunnel)
            self._finish(conn)
            return
        events = self._parse(conn, trailing_bytes(plan.request))
        conn.tunnel = tunnel
        conn.side = INITIATOR
        self.dispatcher.joined(plan)
        # Tunnels.run_initiator, up to its pump.
        tunnel.initiator = conn
        tunnel.initiator_scope = conn
        self.set_deadline(conn, tunnel.end_of_life)
        if tunnel.end is not None:
            conn.cancel()
            return
        tunnel.sinks[1] = tunnel.authenticator
        if not self._flush_pending(tunnel, conn):
            return
        if events:
            self._deliver(conn, events)

    def _flush_pending(self, tunnel: Tunnel, initiator: Connection) -> bool:
        """``Tunnels._flush_pending``: deliver what the authenticator sent before the join."""
        if tunnel.pending:
            batch = self.tunnels.take_pending(tunnel)
            out, nbytes = _frames(batch)
            if not initiator.send_frames(out):
                tunnel.finish(ENDS["initiator_gone"])
                return False
            if initiator.out is None:
                self.tunnels.forwarded(tunnel, 0, len(batch), nbytes)
            else:
                initiator.inflight = [(0, len(batch), nbytes)]
        tunnel.sinks[0] = initiator
        return True

    # -- forwarding (WebSocket.receive_batch and Tunnels._pump) ---------------------------------

    def _parse(self, conn: Connection, data: bytes) -> list[Any]:
        if not data:
            return []
        parser = conn.parser
        assert parser is not None
        return parser.receive(data)

    def _read_open(self, conn: Connection) -> None:
        if conn.blocked or conn.stopped:
            conn.readable = True
            return
        conn.readable = False
        size = conn.receive_size
        fd = conn.fd
        parser = conn.parser
        assert parser is not None
        while True:
            try:
                data = _read(fd, size)
            except BlockingIOError:
                return
            except OSError:
                self._end_side(conn, PeerGone("connection lost"))
                return
            if not data:
                self._end_side(conn, PeerGone("connection closed without a close frame"))
                return
            events = parser.receive(data)
            if events:
                self._deliver(conn, events)
            if conn.phase != _OPEN or conn.stopped:
                # What follows is read by the close handshake (_close_ws queues it).
                conn.readable = True
                return
            if conn.blocked:
                conn.readable = True
                return
            if len(data) == size:
                # There may be more already: read it after the other ready connections.
                self._ready.append(conn)
                return
            if not conn.hup:
                # A short read emptied the socket; the next bytes bring a new event.
                return

    def _deliver(self, conn: Connection, events: list[Any]) -> None:
        """The events of one read: messages forwarded, pings answered, then any terminal one."""
        if len(events) == 1 and type(events[0]) is bytes:
            if not conn.stopped:
                self._pump_one(conn, events[0])
            return
        messages: list[bytes] = []
        terminal: WebSocketEnded | None = None
        for event in events:
            kind = type(event)
            if kind is bytes:
                messages.append(event)
            elif kind is Ping:
                if not conn.write(pong_frame(event.payload)):
                    terminal = PeerGone("connection lost")
                    break
            elif kind is Close:
                terminal = PeerClosed(f"client closed with {event.code}")
                break
            else:
                assert isinstance(event, FrameError)
                terminal = event
                break
        if conn.stopped:
            if terminal is not None and conn.ended is None:
                conn.ended = terminal
            return
        if messages:
            self._pump(conn, messages)
        if terminal is not None:
            self._end_side(conn, terminal)

    def _end_side(self, conn: Connection, exc: WebSocketEnded) -> None:
        """This side's socket stopped delivering: how the pump ends on ``exc``."""
        if conn.ended is None:
            conn.ended = exc
        if conn.stopped or conn.phase != _OPEN:
            return
        if conn.ws_state == _WS_OPEN and type(exc) is PeerClosed:
            conn.ws_state = _WS_REMOTE_CLOSING
        tunnel = conn.tunnel
        assert tunnel is not None
        self.tunnels.side_ended(tunnel, conn.side, exc)
        # The tunnel may have ended before, without this side's scope (cancel) set.
        conn.cancel()

    def _pump(self, conn: Connection, batch: list[bytes]) -> None:
        tunnel = conn.tunnel
        assert tunnel is not None
        side = conn.side
        limit = self._max_messages
        over_quota = conn.count + len(batch) > limit
        if over_quota:
            batch = batch[: max(0, limit - conn.count)]
        conn.count += len(batch)
        # This engine's sides are Connections: typed so, compiled code reads their fields in C.
        destination: Connection | None = tunnel.sinks[side.sink]
        if destination is None:
            if not self.tunnels.hold_pending(tunnel, batch):
                return
        elif batch:
            out, nbytes = _frames(batch)
            if not destination.send_frames(out):
                tunnel.finish(side.other_gone)
                return
            self._sent(conn, destination, tunnel, side.offset, len(batch), nbytes)
        if over_quota:
            tunnel.finish(side.quota)

    def _pump_one(self, conn: Connection, message: bytes) -> None:
        """``_pump`` of the usual read, one message to a side that has nothing unwritten, framed
        here without a batch or frame buffer; anything else goes through ``_pump``."""
        tunnel = conn.tunnel
        assert tunnel is not None
        side = conn.side
        # This engine's sides are Connections: typed so, compiled code reads their fields in C.
        destination: Connection | None = tunnel.sinks[side.sink]
        n = len(message)
        if (
            destination is None
            or destination.out is not None
            or destination.broken
            or destination.ws_state != _WS_OPEN
            or conn.count >= self._max_messages
            or n >= 65536
        ):
            self._pump(conn, [message])
            return
        conn.count += 1
        if n < 126:
            frame = _BINARY_SHORT(0x82, n) + message
        else:
            frame = _BINARY_MEDIUM(0x82, 126, n) + message
        if not destination.write(frame):
            tunnel.finish(side.other_gone)
            return
        self._sent(conn, destination, tunnel, side.offset, 1, n)

    def _sent(
        self,
        conn: Connection,
        destination: Connection,
        tunnel: Tunnel,
        offset: int,
        messages: int,
        nbytes: int,
    ) -> None:
        """Messages from ``conn`` went to ``destination``: counted once written; until then
        ``conn`` is not read (backpressure)."""
        if destination.out is None:
            self.tunnels.forwarded(tunnel, offset, messages, nbytes)
            return
        # Read no more from this side until the other has taken what it was sent.
        if destination.inflight is None:
            destination.inflight = []
        destination.inflight.append((offset, messages, nbytes))
        conn.blocked = True
        if destination.waiters is None:
            destination.waiters = []
        destination.waiters.append(conn)

    def _writable(self, conn: Connection) -> None:
        out = conn.out
        if out is None:
            return
        try:
            sent = _write(conn.fd, out)
        except BlockingIOError:
            return
        except OSError:
            conn.broken = True
            conn.out = None
            self._write_failed(conn)
            return
        del out[:sent]
        if out:
            return
        conn.out = None
        self._drained(conn)

    def _release_waiters(self, conn: Connection) -> None:
        """The sources blocked on ``conn``'s unwritten bytes read again (those with data)."""
        waiters = conn.waiters
        if waiters:
            conn.waiters = None
            for source in waiters:
                source.blocked = False
                if source.readable and source.phase == _OPEN:
                    self._ready.append(source)

    def _drained(self, conn: Connection) -> None:
        inflight = conn.inflight
        tunnel = conn.tunnel
        if inflight is not None and tunnel is not None:
            conn.inflight = None
            for offset, messages, nbytes in inflight:
                self.tunnels.forwarded(tunnel, offset, messages, nbytes)
        self._release_waiters(conn)
        phase = conn.phase
        if phase == _FLUSH or (phase == _CLOSING and not conn.await_reply):
            self._finish(conn)

    def _write_failed(self, conn: Connection) -> None:
        """Unwritten bytes could not be written: as a failed send in the writer's task."""
        waiters = conn.waiters
        conn.waiters = None
        phase = conn.phase
        if phase == _FLUSH or phase == _CLOSING:
            self._finish(conn)
            return
        if phase != _OPEN:
            return
        tunnel = conn.tunnel
        if waiters and tunnel is not None:
            # The sources blocked on this socket see their send fail: the other side is gone.
            for source in waiters:
                source.blocked = False
                if source.tunnel is tunnel and not source.stopped:
                    tunnel.finish(source.side.other_gone)

    # -- how a tunnel side ends (run_authenticator, run_initiator, WebSocket.close) ------------

    def _deadline_passed(self, conn: Connection) -> None:
        phase = conn.phase
        if phase == _HEAD:
            self._handshake_expired(conn)
        elif phase == _OPEN:
            tunnel = conn.tunnel
            assert tunnel is not None
            if tunnel.end is None:
                if conn.owner and not tunnel.paired and tunnel.wait_end <= tunnel.end_of_life:
                    tunnel.finish(WAIT_TIMEOUT)
                else:
                    tunnel.finish(LIFETIME)
            conn.cancel()
        elif phase != _DONE:
            self._finish(conn)

    def _close_side(self, conn: Connection) -> None:
        """A side whose part is over: the end of its task in the tasks engine."""
        if conn.phase != _OPEN:
            return
        tunnel = conn.tunnel
        assert tunnel is not None
        for side in (tunnel.authenticator, tunnel.initiator):
            if type(side) is Connection and side.out is not None and side.phase == _OPEN:
                self._abandon_write(side)
        tunnels = self.tunnels
        code, text = tunnels.owner_done(tunnel) if conn.owner else tunnels.initiator_done(tunnel)
        self._close_ws(conn, code, text)

    def _abandon_write(self, conn: Connection) -> None:
        """The tunnel ended while a write to ``conn`` was unfinished: as in the tasks engine,
        whose writing task is cancelled mid-send, the rest is dropped (and not counted as
        forwarded) and no close frame can follow on that socket."""
        conn.out = None
        conn.inflight = None
        conn.broken = True
        self._release_waiters(conn)

    def _close_ws(self, conn: Connection, code: int, reason: str) -> None:
        """``WebSocket.close``: our close frame, then the client's (or EOF) within the timeout."""
        conn.phase = _CLOSING
        state = conn.ws_state
        if state == _WS_OPEN or state == _WS_REMOTE_CLOSING:
            conn.ws_state = _WS_LOCAL_CLOSING if state == _WS_OPEN else _WS_CLOSED
            if not conn.write(close_frame(code, reason)):
                self._finish(conn)
                return
        ended = type(conn.ended)
        if conn.ws_state != _WS_LOCAL_CLOSING or ended is PeerClosed or ended is PeerGone:
            # No reply to wait for: it came already, or the connection is gone.
            conn.ws_state = _WS_CLOSED
            if conn.out is None or conn.broken:
                self._finish(conn)
                return
        else:
            conn.await_reply = True
        self.set_deadline(conn, self.tunnels.now() + self._close_timeout)
        if conn.await_reply:
            # Whatever arrived while this side was not reading may hold the reply.
            self._ready.append(conn)

    def _read_closing(self, conn: Connection) -> None:
        if not conn.await_reply:
            return
        parser = conn.parser
        assert parser is not None
        size = conn.receive_size
        while True:
            try:
                data = _read(conn.fd, size)
            except BlockingIOError:
                return
            except OSError:
                self._finish(conn)
                return
            if not data:
                self._finish(conn)
                return
            # After a protocol error the parser ignores input: wait for EOF, like wsproto.
            if any(type(event) is Close for event in parser.receive(data)):
                conn.ws_state = _WS_CLOSED
                conn.await_reply = False
                if conn.out is None:
                    self._finish(conn)
                return

    def _finish(self, conn: Connection) -> None:
        """Close the socket and give back everything the connection held."""
        if conn.phase == _DONE:
            return
        was_open = conn.phase in (_OPEN, _CLOSING)
        conn.phase = _DONE
        conn._deadline = _INF
        if conn.timer_key:
            del self._timed[conn.timer_key]
            conn.timer_key = 0
        self.connections.pop(conn.fd, None)
        os.close(conn.fd)
        conn.out = None
        conn.reader = None
        dispatcher = self.dispatcher
        if conn.in_handshake:
            self._leave_handshake(conn)
        if conn.polite:
            conn.polite = False
            dispatcher._polite_refusals -= 1
        if conn.counted:
            conn.counted = False
            dispatcher.connections -= 1
            dispatcher._uncount(conn.client)
        dispatcher.sockets -= 1
        if conn.waiters:
            self._release_waiters(conn)
        tunnel = conn.tunnel
        if tunnel is not None and was_open:
            conn.tunnel = None
            self.tunnels.leave(tunnel)

    def _abort(self, conn: Connection, exc: Exception) -> None:
        """A bug met one connection: log it, end its tunnel, close it; others carry on."""
        log_event("connection_error", logging.ERROR, client=conn.client.address, error=repr(exc))
        tunnel = conn.tunnel
        if tunnel is not None and conn.phase == _OPEN:
            tunnel.finish(SHUTDOWN)
            if conn.owner:
                self.tunnels.owner_done(tunnel)
        self._finish(conn)

    # -- timers and queued work --------------------------------------------------------------

    def set_deadline(self, conn: Connection, when: float) -> None:
        """Make ``when`` the connection's deadline (inf: none).

        The heap holds at most one live entry per connection, as ``(when, key)`` with the
        connection found through ``_timed[key]``: a later deadline keeps the earlier entry, which
        re-arms itself when it comes due; an earlier one replaces it. A finished connection drops
        its key, so the heap never keeps a connection (or its buffers) alive, and entries left
        behind are two numbers each, gone when they come due.
        """
        conn._deadline = when
        if when >= conn.timer_when:
            return
        key = conn.timer_key
        if key:
            del self._timed[key]
        key = conn.timer_key = next(self._sequence)
        conn.timer_when = when
        self._timed[key] = conn
        _heappush(self._timers, (when, key))

    def schedule(self, conn: Connection) -> None:
        self._soon.append(conn)
        self._wake()

    def _wake(self) -> None:
        """End the reactor's wait, if it waits (one eventfd write; nothing while it runs)."""
        if self._waiting:
            self._waiting = False
            os.eventfd_write(self._wake_fd, 1)

    def _set_alarm(self, at: float) -> None:
        """Make sure the alarm task wakes the reactor by ``at``. An earlier alarm is kept: it
        wakes the reactor for nothing at worst, which then sets the next one."""
        if at < self._alarm_at:
            self._alarm_at = at
            scope = self._alarm_scope
            if scope is not None:
                scope.deadline = at

    async def _alarm_loop(self) -> None:
        """The reactor's deadlines as one trio sleep: the reactor waits on its epoll set alone
        (a cancel scope per wait cost about as much as the wait, bench/PROFILE.md round four),
        and this task wakes it when the earliest deadline it was given comes. Its scope moves
        only when a deadline earlier than the armed one appears, which under load is rare."""
        while True:
            with trio.CancelScope(deadline=self._alarm_at) as scope:
                self._alarm_scope = scope
                await trio.sleep_forever()
            self._alarm_scope = None
            if self.tunnels.now() >= self._alarm_at:
                self._alarm_at = _INF
                self._wake()

    def _run_due(self, now: float) -> float:
        """Expire deadlines and run queued work; seconds until the next deadline (inf if none)."""
        timers = self._timers
        timed = self._timed
        soon = self._soon
        ready = self._ready
        while True:
            while timers and timers[0][0] <= now:
                _, key = _heappop(timers)
                conn = timed.pop(key, None)
                if conn is None:
                    continue  # replaced by an earlier deadline, or the connection finished
                conn.timer_key = 0
                conn.timer_when = _INF
                if conn._deadline > now:
                    self.set_deadline(conn, conn._deadline)  # moved later meanwhile
                elif conn.phase != _DONE:
                    conn._deadline = _INF
                    # Each step of one connection is guarded here in place, as in _handle: one
                    # bad connection must never stop the relay. (A helper taking the step as
                    # ``self._method`` would make, compiled, a bound-method object and a Python
                    # call of each step.)
                    try:
                        self._deadline_passed(conn)
                    except Exception as exc:  # noqa: BLE001
                        self._abort(conn, exc)
            if now >= self._accept_paused_until:
                self._resume_accepting()
            if not soon and not ready:
                break
            while soon:
                batch = soon[:]
                soon.clear()
                for conn in batch:
                    try:
                        self._close_side(conn)
                    except Exception as exc:  # noqa: BLE001
                        self._abort(conn, exc)
            if ready:
                batch = ready[:]
                ready.clear()
                for conn in batch:
                    try:
                        self._on_ready(conn)
                    except Exception as exc:  # noqa: BLE001
                        self._abort(conn, exc)
        # Entries of finished or re-armed connections come off the top now, not when due: the
        # wait below is then bounded by a live deadline. Left there, they ended the idle wait
        # about once per closed connection a close timeout later, each a scheduler round trip
        # for nothing (see bench/PROFILE.md, round four).
        while timers and timers[0][1] not in timed:
            _heappop(timers)
        next_at = min(timers[0][0] if timers else _INF, self._accept_paused_until)
        return next_at - now

    def _on_ready(self, conn: Connection) -> None:
        phase = conn.phase
        if phase == _OPEN:
            self._read_open(conn)
        elif phase == _CLOSING:
            self._read_closing(conn)

    # -- the loop ----------------------------------------------------------------------------

    def _handle(self, fd: int, mask: int) -> None:
        conn = self.connections.get(fd)
        if conn is None:
            listener = self.listeners.get(fd)
            if listener is not None:
                self._accept(fd, listener)
            elif fd == self._wake_fd:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
            return
        try:
            if mask & _HANGUP:
                conn.hup = True
            if mask & _OUT and conn.out is not None:
                self._writable(conn)
            phase = conn.phase
            if phase == _OPEN:
                if mask != _OUT:
                    self._read_open(conn)
            elif phase == _HEAD:
                if mask != _OUT:
                    self._read_head(conn)
            elif phase == _CLOSING:
                if mask != _OUT:
                    self._read_closing(conn)
            elif phase == _FLUSH and mask & (select.EPOLLHUP | select.EPOLLERR):
                self._finish(conn)
        except Exception as exc:  # noqa: BLE001 - one bad connection must never stop the relay
            self._abort(conn, exc)

    async def run(self) -> None:
        """Serve until cancelled; then close every socket still held."""
        epoll = self.epoll
        # trio's clock, read by the reactor and the tunnel registry alike while this run lasts,
        # in as few steps as it allows (trio.current_time is three Python calls deep).
        self.tunnels.now = _fast_clock(trio.lowlevel.current_clock())
        logs.hold()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._alarm_loop)
                await self._run_loop()
        finally:
            self.tunnels.now = trio.current_time
            logs.release()
            for conn in list(self.connections.values()):
                self._finish(conn)
            epoll.close()
            os.close(self._wake_fd)

    async def _run_loop(self) -> None:
        poll = self.epoll.poll
        current_time = self.tunnels.now
        handled = 0
        epoll_fd = self.epoll.fileno()
        while True:
            now = current_time()
            wait = self._run_due(now)
            events = poll(0, _BATCH)
            if not events:
                logs.release()
                handled = 0
                if self._soon:
                    pass  # handed work meanwhile: the next round runs it
                elif wait <= 0.0:
                    await checkpoint()
                else:
                    self._set_alarm(now + wait)
                    self._waiting = True
                    try:
                        await wait_readable(epoll_fd)
                    finally:
                        self._waiting = False
                logs.hold()
                continue
            for fd, mask in events:
                self._handle(fd, mask)
            handled += len(events)
            if handled >= _BATCH:
                handled = 0
                self._run_due(current_time())
                logs.flush_held()
                await checkpoint()
