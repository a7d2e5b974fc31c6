"""The relay server: accepting connections, pairing tunnels and forwarding between their peers.

Why the opening handshake is written here on raw trio streams instead of
``trio_websocket.serve_websocket``: the relay must answer plain HTTP (``/healthz``, ``/metrics``),
refuse bad requests with exact status codes *before* any upgrade (400/403/404/405/409/410/426/429/
503), bound the time and bytes a client may spend on its request head (one deadline covers TLS,
request and 101), and count connections per client address. trio-websocket's server reads the
request through wsproto's handshake layer, which rejects non-upgrade requests itself and spawns a
reader task and a message queue per socket. Doing the handshake ourselves (``relay.http``) keeps
all of that in one deadline-scoped function, and after the 101 the tunnel runs on
``relay.websocket.WebSocket``: ``relay.wsframe`` frames, one task per direction, each read's
messages forwarded with one write, no per-message queue, log line or task hand-off. Any RFC 6455
client (trio-websocket, websockets, browsers) can talk to it.

Life of a tunnel (docs/protocol.md sections 7 and 14):

* ``/cable/new/<tid>`` registers the tunnel id at once (a concurrent duplicate gets 409), answers
  101 with ``X-caBLE-Routing-ID``, and the authenticator's connection task becomes the tunnel's
  owner: it runs the authenticator->initiator direction itself, in a cancel scope whose deadline
  is the wait timeout until an initiator joins and ``tunnel_lifetime`` (from the authenticator's
  upgrade) after that.
* Messages the authenticator sends before its initiator joins are buffered (at most
  ``max_pending_messages``, each within ``max_message_size``) and delivered first, in order; one
  more closes the tunnel with 1008. Nothing is dropped.
* ``/cable/connect/<rid>/<tid>`` pairs synchronously (the waiting entry leaves the waiting state
  before any await, so exactly one initiator wins; later ones get 404), answers 101, and the
  initiator's connection task flushes the pending buffer and then runs the
  initiator->authenticator direction, bounded by the same lifetime.
* When either side ends, the first recorded reason wins and both directions are cancelled; each
  task sends its own socket a close frame: 1000 after a clean close by the peer, 1001 after an
  abnormal disconnect (or shutdown), 1003 for a text frame, 1008 for a timeout or quota, 1009 for
  an oversized message. The last task out logs the tunnel's end.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import ssl
from collections import Counter
from enum import Enum

import trio
from trio.lowlevel import wait_readable

from hybrid.wire import ROUTING_ID_HEADER
from relay.config import RelayConfig
from relay.http import (
    BadRequest,
    ClientGone,
    Request,
    finish_request,
    read_request,
    send_response,
    send_switching_protocols,
)
from relay.logs import log_event, tunnel_tag
from relay.metrics import CONTENT_TYPE, RelayMetrics, Stats
from relay.rawio import STREAM_ERRORS, raw_listener_socket
from relay.requests import (
    HEALTH_PATH,
    ConnectTunnel,
    ContactTunnel,
    NewTunnel,
    PlainGet,
    Refusal,
    Upgrade,
    decide,
)
from relay.routing import RoutingIdAllocator, RoutingIdsExhausted, routing_id_hex
from relay.websocket import (
    MessageTooBig,
    PeerClosed,
    PeerProtocolError,
    TextFrame,
    WebSocket,
    WebSocketEnded,
)
from relay.wsframe import write_binary

__all__ = ["RelayConfig", "Relay", "serve"]

#: Longest a refused over-limit client may keep its socket while we read its request and answer.
_QUICK_REFUSAL_TIMEOUT = 1.0
_ROUTING_ID_HEADER = ROUTING_ID_HEADER.encode("ascii")
_ACCEPT_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_ACCEPT_BACKOFF = 0.1
_ACCEPT_BURST = 32
# What trio.SocketListener.accept skips: failures of one would-be connection, not the listener.
_IGNORABLE_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
_ACCEPT_LOGGER = logging.getLogger("trio.serve_listeners")


class _State(Enum):
    OPENING = "opening"
    WAITING = "waiting"
    PAIRED = "paired"
    ENDED = "ended"


class _Tunnel:
    """One tunnel's shared state.

    Each peer's connection task drives its own socket: the authenticator's task (the owner) reads
    the authenticator and forwards to the initiator, the initiator's task flushes the pending
    buffer and then forwards the other way. No task, nursery or event exists for a tunnel beyond
    those two tasks; whichever of them finishes last logs the tunnel's end.
    """

    __slots__ = (
        "tunnel_id",
        "routing_id",
        "tag",
        "state",
        "created",
        "end_of_life",
        "wait_end",
        "authenticator",
        "initiator",
        "forward_to",
        "pending",
        "paired",
        "tasks",
        "owner_scope",
        "initiator_scope",
        "end_reason",
        "codes",
        "close_text",
        "counts",
    )

    def __init__(self, tunnel_id: bytes, routing_id: bytes, lifetime: float) -> None:
        self.tunnel_id = tunnel_id
        self.routing_id = routing_id
        self.tag = tunnel_tag(tunnel_id)
        self.state = _State.OPENING
        self.created = trio.current_time()
        self.end_of_life = self.created + lifetime
        # When the owner stops waiting for an initiator; set when it starts waiting.
        self.wait_end = float("inf")
        self.authenticator: WebSocket | None = None
        self.initiator: WebSocket | None = None
        # Where authenticator messages go; None until the pending buffer has been flushed.
        self.forward_to: WebSocket | None = None
        self.pending: list[bytes] = []
        self.paired = False
        # Connection tasks still working on this tunnel; the last one out logs its end.
        self.tasks = 1
        self.owner_scope: trio.CancelScope | None = None
        self.initiator_scope: trio.CancelScope | None = None
        self.end_reason: str | None = None
        # Close codes for (authenticator, initiator).
        self.codes = (1001, 1001)
        self.close_text = ""
        # messages/bytes (to initiator, to authenticator)
        self.counts = [0, 0, 0, 0]

    def finish(self, reason: str, auth_code: int, init_code: int, text: str) -> None:
        """Record why the tunnel ends (first call wins) and stop both directions."""
        if self.end_reason is None:
            self.end_reason = reason
            self.codes = (auth_code, init_code)
            self.close_text = text
        if self.state is _State.WAITING:
            # A dying tunnel must not be joined in the moments before its owner unregisters it.
            self.state = _State.ENDED
        if self.owner_scope is not None:
            self.owner_scope.cancel()
        if self.initiator_scope is not None:
            self.initiator_scope.cancel()


def _frames(batch: list[bytes]) -> tuple[bytearray, int]:
    """Server frames for every message of ``batch`` in one buffer (one write), and payload bytes."""
    out = bytearray()
    nbytes = 0
    for data in batch:
        write_binary(out, data)
        nbytes += len(data)
    return out, nbytes


def _ended_by(side: str, exc: WebSocketEnded) -> tuple[str, int, int, str]:
    """(reason, code for this side, code for the other side, text) when ``side``'s socket ends."""
    if isinstance(exc, PeerClosed):
        return f"{side}_closed", 1000, 1000, f"{side} closed the tunnel"
    if isinstance(exc, TextFrame):
        return "text_frame", 1003, 1003, f"{side} sent a text frame"
    if isinstance(exc, MessageTooBig):
        return "message_too_big", 1009, 1009, f"{side} sent an oversized message"
    if isinstance(exc, PeerProtocolError):
        return "protocol_error", exc.ws_code, 1001, f"{side} broke WebSocket framing"
    return f"{side}_gone", 1001, 1001, f"{side} disconnected"


def _peer_address(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)
    try:
        return str(inner.socket.getpeername()[0])
    except (AttributeError, OSError, IndexError):
        return "unknown"


def _ssl_context(config: RelayConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except OSError as exc:  # ssl.SSLError is an OSError too
        detail = exc.strerror or str(exc)
        raise OSError(
            f"cannot load TLS certificate {config.tls_cert!r} and key {config.tls_key!r}: {detail}"
        ) from exc
    return context


class Relay:
    """A running relay instance; ``serve`` starts one and hands it to ``nursery.start``."""

    def __init__(self, config: RelayConfig) -> None:
        config.validate()
        self.config = config
        self.port = 0
        self.stats = Stats()
        self.metrics = RelayMetrics(self.stats, self._gauges)
        self._routing = RoutingIdAllocator(config.node_prefix)
        self._tunnels: dict[bytes, _Tunnel] = {}
        self._routing_ids: set[bytes] = set()
        self._per_address: Counter[str] = Counter()
        self._connections = 0
        self._handshakes = 0
        self._closing = False
        self._accept_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._shutdown_grace = config.shutdown_grace

    # -- public view -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self.config.tls else 'ws'}://{host}:{self.port}"

    def live_tunnels(self) -> int:
        """Tunnels registered on this node: opening, waiting or paired."""
        return len(self._tunnels)

    def waiting_tunnels(self) -> int:
        return sum(1 for t in self._tunnels.values() if t.state is _State.WAITING)

    def paired_tunnels(self) -> int:
        return sum(1 for t in self._tunnels.values() if t.state is _State.PAIRED)

    def open_connections(self) -> int:
        """TCP connections currently held, in any phase."""
        return self._connections

    def handshakes_in_progress(self) -> int:
        """Connections that have not yet finished their opening handshake."""
        return self._handshakes

    def metrics_text(self) -> str:
        return self.metrics.render().decode("utf-8")

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let paired tunnels finish for ``grace`` seconds, then close the rest."""
        if grace is not None:
            self._shutdown_grace = grace
        if not self._closing:
            self._closing = True
            log_event("shutdown_started", grace_s=self._shutdown_grace)
            if self._accept_scope is not None:
                self._accept_scope.cancel()
        await self._stopped.wait()

    # -- lifecycle ---------------------------------------------------------------------------

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {
            "tunnels_waiting": ("Tunnels waiting for their initiator.", self.waiting_tunnels()),
            "tunnels_paired": ("Tunnels with both peers joined.", self.paired_tunnels()),
            "connections_open": ("TCP connections held, in any phase.", self._connections),
            "handshakes_in_progress": (
                "Connections still in their opening handshake.",
                self._handshakes,
            ),
        }

    async def _run(self, task_status: trio.TaskStatus[Relay]) -> None:
        config = self.config
        context = _ssl_context(config) if config.tls else None
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
            await trio.open_tcp_listeners(config.port, host=config.host)
        )
        self.port = listeners[0].socket.getsockname()[1]
        if context is not None:
            listeners = [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    self._accept_scope = accepting.cancel_scope
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, connections)
                    log_event(
                        "listening",
                        host=config.host,
                        port=self.port,
                        tls=config.tls,
                        node_prefix=config.node_prefix.hex().upper(),
                    )
                    task_status.started(self)
                await self._drain()
                connections.cancel_scope.cancel()
        finally:
            self._stopped.set()
        log_event("shutdown_complete")

    async def _drain(self) -> None:
        """After accepting stopped: waiting tunnels can never pair; paired ones get the grace."""
        for tunnel in list(self._tunnels.values()):
            if tunnel.state is not _State.PAIRED:
                tunnel.finish("shutdown", 1001, 1001, "relay shutting down")
        with trio.move_on_after(self._shutdown_grace):
            while self._tunnels:
                await trio.sleep(0.05)
        for tunnel in list(self._tunnels.values()):
            tunnel.finish("shutdown", 1001, 1001, "relay shutting down")
        # Owners now send their close frames; give them the close timeout, then cut what remains.
        with trio.move_on_after(self.config.close_timeout + 0.5):
            while self._tunnels:
                await trio.sleep(0.05)

    # -- connections -------------------------------------------------------------------------

    async def _accept(self, listener: trio.abc.Listener[trio.abc.Stream], nursery) -> None:
        """``trio.serve_listeners`` without its per-connection wrapper task layer.

        On a plain TCP listener the loop accepts on the stdlib socket until the backlog is empty
        and only then waits: no scheduler round trip per connection, and the peer address comes
        with the accept instead of a getpeername call.
        """
        raw = raw_listener_socket(listener)
        async with listener:
            burst = 0
            while True:
                try:
                    if raw is None:
                        stream = await listener.accept()
                        address = _peer_address(stream)
                    else:
                        try:
                            sock, peer = raw.accept()
                        except BlockingIOError:
                            burst = 0
                            await wait_readable(raw)
                            continue
                        except OSError as exc:
                            if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                                # The client gave up before we accepted it, as in trio.
                                continue
                            if exc.errno == errno.EBADF:
                                raise trio.ClosedResourceError from None
                            raise
                        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                        address = str(peer[0]) if peer else "unknown"
                        burst += 1
                        if burst >= _ACCEPT_BURST:
                            # Let the handlers of a long burst run before accepting more.
                            burst = 0
                            await trio.lowlevel.checkpoint()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # Out of file descriptors or memory: back off like trio.serve_listeners.
                    _ACCEPT_LOGGER.error(
                        "accept returned %s (%s); retrying in %s seconds",
                        errno.errorcode[exc.errno],
                        os.strerror(exc.errno),
                        _ACCEPT_BACKOFF,
                    )
                    await trio.sleep(_ACCEPT_BACKOFF)
                else:
                    nursery.start_soon(self._handle, stream, address)

    async def _handle(self, stream: trio.abc.Stream, address: str) -> None:
        self.stats.connections_accepted += 1
        try:
            if self._per_address[address] >= self.config.max_connections_per_address:
                await self._refuse_over_limit(stream, address)
                return
            self._per_address[address] += 1
            self._connections += 1
            try:
                await self._serve_connection(stream, address)
            finally:
                self._connections -= 1
                self._per_address[address] -= 1
                if not self._per_address[address]:
                    del self._per_address[address]
        except Exception as exc:  # noqa: BLE001 - one bad connection must never stop the relay
            log_event("connection_error", logging.ERROR, client=address, error=repr(exc))
        finally:
            if type(stream) is trio.SocketStream:
                # What SocketStream.aclose does, minus a scheduler round trip.
                stream.socket.close()
            else:
                await trio.aclose_forcefully(stream)

    async def _refuse_over_limit(self, stream: trio.abc.Stream, address: str) -> None:
        # Read the request first: closing with unread bytes would reset the connection and the
        # client might never see why it was refused.
        with trio.move_on_after(min(_QUICK_REFUSAL_TIMEOUT, self.config.handshake_timeout)):
            try:
                await read_request(stream, self.config.max_request_head)
            except (BadRequest, ClientGone):
                pass
            await self._refuse(
                stream,
                Refusal(429, "address_limit", "too many connections from this address"),
                address,
            )

    async def _refuse(
        self, stream: trio.abc.Stream, refusal: Refusal, address: str, head_only: bool = False
    ) -> None:
        self.stats.refusals[refusal.reason] += 1
        log_event("refused", reason=refusal.reason, status=refusal.status, client=address)
        await send_response(
            stream,
            refusal.status,
            (refusal.message + "\n").encode("utf-8"),
            headers=refusal.headers,
            head_only=head_only,
        )

    async def _serve_connection(self, stream: trio.abc.Stream, address: str) -> None:
        self._handshakes += 1
        try:
            with trio.move_on_after(self.config.handshake_timeout) as deadline:
                accepted = await self._handshake(stream, address)
        finally:
            self._handshakes -= 1
        if deadline.cancelled_caught:
            self.stats.refusals["handshake_timeout"] += 1
            log_event("refused", reason="handshake_timeout", status=408, client=address)
            with trio.move_on_after(0.2):
                await send_response(stream, 408, b"opening handshake took too long\n")
            return
        if accepted is None:
            return
        tunnel, ws, is_authenticator = accepted
        if is_authenticator:
            await self._run_tunnel(tunnel, ws)
        else:
            await self._run_initiator(tunnel, ws)

    async def _handshake(
        self, stream: trio.abc.Stream, address: str
    ) -> tuple[_Tunnel, WebSocket, bool] | None:
        config = self.config
        try:
            request = await read_request(stream, config.max_request_head)
        except BadRequest as exc:
            reason = "request_too_large" if exc.status == 431 else "malformed"
            await self._refuse(stream, Refusal(exc.status, reason, str(exc)), address)
            return None
        except ClientGone:
            self.stats.refusals["incomplete_request"] += 1
            return None
        decision = decide(request.method, request.target, request.headers, config.allowed_origins)
        head_only = request.method == b"HEAD"
        if isinstance(decision, Refusal):
            await self._refuse(stream, decision, address, head_only)
            return None
        if isinstance(decision, PlainGet):
            await self._serve_plain(stream, decision, head_only)
            return None
        assert isinstance(decision, Upgrade)
        try:
            finish_request(request)
        except BadRequest as exc:
            await self._refuse(stream, Refusal(exc.status, "malformed", str(exc)), address)
            return None
        route = decision.route
        if isinstance(route, ContactTunnel):
            await self._refuse(
                stream,
                Refusal(410, "contact_unsupported", "this relay does not hold linked contacts"),
                address,
            )
            return None
        if self._closing:
            await self._refuse(
                stream, Refusal(503, "shutting_down", "relay shutting down"), address
            )
            return None
        if isinstance(route, NewTunnel):
            return await self._open_tunnel(stream, request, decision.key, route, address)
        assert isinstance(route, ConnectTunnel)
        return await self._join_tunnel(stream, request, decision.key, route, address)

    async def _serve_plain(self, stream: trio.abc.Stream, get: PlainGet, head_only: bool) -> None:
        if get.path == HEALTH_PATH:
            status = 503 if self._closing else 200
            body = json.dumps(
                {
                    "status": "shutting_down" if self._closing else "ok",
                    "tunnels_waiting": self.waiting_tunnels(),
                    "tunnels_paired": self.paired_tunnels(),
                }
            ).encode("ascii")
            await send_response(
                stream, status, body, content_type="application/json", head_only=head_only
            )
        else:
            await send_response(
                stream, 200, self.metrics.render(), content_type=CONTENT_TYPE, head_only=head_only
            )

    async def _open_tunnel(
        self, stream: trio.abc.Stream, request: Request, key: bytes, route: NewTunnel, address: str
    ) -> tuple[_Tunnel, WebSocket, bool] | None:
        tunnel_id = route.tunnel_id
        if tunnel_id in self._tunnels:
            await self._refuse(
                stream, Refusal(409, "duplicate_tunnel", "tunnel id already in use"), address
            )
            return None
        if len(self._tunnels) >= self.config.max_tunnels:
            await self._refuse(
                stream, Refusal(503, "tunnel_limit", "relay is at its tunnel limit"), address
            )
            return None
        try:
            routing_id = self._routing.allocate(self._routing_ids)
        except RoutingIdsExhausted:
            await self._refuse(
                stream, Refusal(503, "routing_ids_exhausted", "no free routing id"), address
            )
            return None
        tunnel = _Tunnel(tunnel_id, routing_id, self.config.tunnel_lifetime)
        self._tunnels[tunnel_id] = tunnel
        self._routing_ids.add(routing_id)
        registered = False
        try:
            routing_line = b"%s: %s\r\n" % (_ROUTING_ID_HEADER, routing_id_hex(routing_id).encode())
            trailing = await send_switching_protocols(stream, request, key, routing_line)
            registered = True
        except STREAM_ERRORS:
            return None
        finally:
            if not registered:
                self._unregister(tunnel)
        tunnel.authenticator = WebSocket(stream, trailing, self.config.max_message_size)
        if tunnel.end_reason is None:
            tunnel.state = _State.WAITING
        self.stats.tunnels_opened += 1
        log_event(
            "tunnel_opened",
            tunnel=tunnel.tag,
            routing_id=routing_id_hex(routing_id),
            client=address,
        )
        return tunnel, tunnel.authenticator, True

    async def _join_tunnel(
        self,
        stream: trio.abc.Stream,
        request: Request,
        key: bytes,
        route: ConnectTunnel,
        address: str,
    ) -> tuple[_Tunnel, WebSocket, bool] | None:
        tunnel = self._tunnels.get(route.tunnel_id)
        if (
            tunnel is None
            or tunnel.state is not _State.WAITING
            or (tunnel.routing_id != route.routing_id)
            # Past the wait deadline the owner's scope may be cancelled already, unnoticed.
            or trio.current_time() >= tunnel.wait_end
        ):
            await self._refuse(
                stream, Refusal(404, "unknown_tunnel", "no tunnel waiting under that id"), address
            )
            return None
        # Claim the tunnel before any await so that exactly one initiator joins it.
        tunnel.state = _State.PAIRED
        tunnel.paired = True
        tunnel.tasks += 1
        if tunnel.owner_scope is not None:
            # The owner no longer waits for an initiator: only the lifetime bounds it now.
            tunnel.owner_scope.deadline = tunnel.end_of_life
        latency = trio.current_time() - tunnel.created
        self.stats.pairings += 1
        self.metrics.pairing_latency.observe(latency)
        try:
            trailing = await send_switching_protocols(stream, request, key)
        except BaseException as exc:
            # Also on cancellation: this task must still leave the tunnel.
            tunnel.finish("initiator_gone", 1001, 1001, "initiator disconnected")
            self._leave(tunnel)
            if isinstance(exc, STREAM_ERRORS):
                return None
            raise
        ws = WebSocket(stream, trailing, self.config.max_message_size)
        tunnel.initiator = ws
        log_event(
            "tunnel_paired", tunnel=tunnel.tag, latency_ms=round(latency * 1000), client=address
        )
        return tunnel, ws, False

    def _unregister(self, tunnel: _Tunnel) -> None:
        if self._tunnels.get(tunnel.tunnel_id) is tunnel:
            del self._tunnels[tunnel.tunnel_id]
            self._routing_ids.discard(tunnel.routing_id)
        tunnel.state = _State.ENDED

    # -- tunnels -----------------------------------------------------------------------------

    async def _run_initiator(self, tunnel: _Tunnel, ws: WebSocket) -> None:
        """The initiator's connection task: pending messages, then initiator->authenticator."""
        try:
            with trio.CancelScope(deadline=tunnel.end_of_life) as scope:
                tunnel.initiator_scope = scope
                if tunnel.end_reason is None:
                    authenticator = tunnel.authenticator
                    assert authenticator is not None
                    if await self._flush_pending(tunnel, ws):
                        await self._pump_from_initiator(tunnel, ws, authenticator)
                else:
                    scope.cancel()
            if scope.cancelled_caught and tunnel.end_reason is None:
                tunnel.finish("lifetime", 1008, 1008, "tunnel lifetime exceeded")
        finally:
            tunnel.initiator_scope = None
            if tunnel.end_reason is None:
                tunnel.finish("shutdown", 1001, 1001, "relay shutting down")
            try:
                await ws.close(tunnel.codes[1], tunnel.close_text, self.config.close_timeout)
            finally:
                self._leave(tunnel)

    async def _run_tunnel(self, tunnel: _Tunnel, ws: WebSocket) -> None:
        """The authenticator's connection task owns the tunnel from here to its end."""
        end_of_life = tunnel.end_of_life
        wait_end = tunnel.wait_end = trio.current_time() + self.config.wait_timeout
        try:
            deadline = end_of_life if tunnel.paired else min(wait_end, end_of_life)
            with trio.CancelScope(deadline=deadline) as scope:
                tunnel.owner_scope = scope
                if tunnel.end_reason is not None:
                    scope.cancel()
                await self._pump_from_authenticator(tunnel, ws)
            if scope.cancelled_caught and tunnel.end_reason is None:
                if not tunnel.paired and wait_end <= end_of_life:
                    tunnel.finish("wait_timeout", 1008, 1008, "no initiator joined in time")
                else:
                    tunnel.finish("lifetime", 1008, 1008, "tunnel lifetime exceeded")
        finally:
            tunnel.owner_scope = None
            await self._end_tunnel(tunnel)

    async def _flush_pending(self, tunnel: _Tunnel, initiator: WebSocket) -> bool:
        """Deliver what the authenticator sent before the initiator joined; False if it failed."""
        stats = self.stats
        pending = tunnel.pending
        while pending:
            batch = pending[:]
            pending.clear()
            out, nbytes = _frames(batch)
            try:
                await initiator.send_frames(out)
            except WebSocketEnded:
                tunnel.finish("initiator_gone", 1001, 1001, "initiator disconnected")
                return False
            stats.messages_to_initiator += len(batch)
            stats.bytes_to_initiator += nbytes
            tunnel.counts[0] += len(batch)
            tunnel.counts[1] += nbytes
        # No await between the empty check above and this: later messages cannot overtake.
        tunnel.forward_to = initiator
        return True

    async def _pump_from_authenticator(self, tunnel: _Tunnel, source: WebSocket) -> None:
        stats = self.stats
        limit = self.config.max_messages
        pending_limit = self.config.max_pending_messages
        pending = tunnel.pending
        count = 0
        sent = 0
        size = 0
        try:
            while True:
                try:
                    batch = await source.receive_batch()
                except WebSocketEnded as exc:
                    reason, own, other, text = _ended_by("authenticator", exc)
                    tunnel.finish(reason, own, other, text)
                    return
                # Messages past the quota are not forwarded; the ones before it are.
                over_quota = count + len(batch) > limit
                if over_quota:
                    batch = batch[: max(0, limit - count)]
                count += len(batch)
                destination = tunnel.forward_to
                if destination is None:
                    room = pending_limit - len(pending)
                    pending.extend(batch[:room])
                    if len(batch) > room:
                        tunnel.finish(
                            "pending_overflow",
                            1008,
                            1008,
                            "too many messages before the initiator joined",
                        )
                        return
                elif batch:
                    out, nbytes = _frames(batch)
                    try:
                        await destination.send_frames(out)
                    except WebSocketEnded:
                        tunnel.finish("initiator_gone", 1001, 1001, "initiator disconnected")
                        return
                    stats.messages_to_initiator += len(batch)
                    stats.bytes_to_initiator += nbytes
                    sent += len(batch)
                    size += nbytes
                if over_quota:
                    tunnel.finish(
                        "message_quota", 1008, 1008, "authenticator sent too many messages"
                    )
                    return
        finally:
            tunnel.counts[0] += sent
            tunnel.counts[1] += size

    async def _pump_from_initiator(
        self, tunnel: _Tunnel, source: WebSocket, destination: WebSocket
    ) -> None:
        stats = self.stats
        limit = self.config.max_messages
        count = 0
        size = 0
        try:
            while True:
                try:
                    batch = await source.receive_batch()
                except WebSocketEnded as exc:
                    reason, own, other, text = _ended_by("initiator", exc)
                    tunnel.finish(reason, other, own, text)
                    return
                over_quota = count + len(batch) > limit
                if over_quota:
                    batch = batch[: max(0, limit - count)]
                if batch:
                    out, nbytes = _frames(batch)
                    try:
                        await destination.send_frames(out)
                    except WebSocketEnded:
                        tunnel.finish(
                            "authenticator_gone", 1001, 1001, "authenticator disconnected"
                        )
                        return
                    count += len(batch)
                    size += nbytes
                    stats.messages_to_authenticator += len(batch)
                    stats.bytes_to_authenticator += nbytes
                if over_quota:
                    tunnel.finish("message_quota", 1008, 1008, "initiator sent too many messages")
                    return
        finally:
            tunnel.counts[2] += count
            tunnel.counts[3] += size

    async def _end_tunnel(self, tunnel: _Tunnel) -> None:
        if tunnel.end_reason is None:
            tunnel.finish("shutdown", 1001, 1001, "relay shutting down")
        # Counted before the tunnel leaves the registry, so whoever sees it gone sees why.
        self.stats.tunnel_closes[tunnel.end_reason or "shutdown"] += 1
        self._unregister(tunnel)
        try:
            # The initiator's task, if any, closes its own socket meanwhile.
            if tunnel.authenticator is not None:
                await tunnel.authenticator.close(
                    tunnel.codes[0], tunnel.close_text, self.config.close_timeout
                )
        finally:
            self._leave(tunnel)

    def _leave(self, tunnel: _Tunnel) -> None:
        """A connection task is done with ``tunnel``; the last one logs how it went."""
        tunnel.tasks -= 1
        if tunnel.tasks:
            return
        log_event(
            "tunnel_closed",
            tunnel=tunnel.tag,
            reason=tunnel.end_reason,
            paired=tunnel.paired,
            duration_ms=round((trio.current_time() - tunnel.created) * 1000),
            messages_to_initiator=tunnel.counts[0],
            bytes_to_initiator=tunnel.counts[1],
            messages_to_authenticator=tunnel.counts[2],
            bytes_to_authenticator=tunnel.counts[3],
        )


async def serve(
    config: RelayConfig, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a relay until cancelled (or until ``Relay.shutdown`` finishes).

    ``running = await nursery.start(serve, config)`` returns the ``Relay`` once it accepts
    connections: ``running.port``, ``running.base_url``, ``running.live_tunnels()``.
    """
    await Relay(config)._run(task_status)
