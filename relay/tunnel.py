"""Tunnel lifecycle: the registry of live tunnels, pairing, forwarding and how a tunnel ends.

Life of a tunnel (docs: relay/README.md, protocol notes sections 7 and 14):

* ``/cable/new/<tid>`` registers the tunnel id at once (``Tunnels.register``; a concurrent
  duplicate gets 409 from the dispatcher), and after the 101 the authenticator's connection task
  becomes the tunnel's owner (``run_authenticator``): it runs the authenticator->initiator
  direction itself, in a cancel scope whose deadline is the wait timeout until an initiator joins
  and ``tunnel_lifetime`` (from the authenticator's upgrade) after that.
* Messages the authenticator sends before its initiator joins are buffered (at most
  ``max_pending_messages`` holding at most ``max_pending_bytes``, and ``max_pending_bytes_total``
  over the node) and delivered first, in order; one more message or byte closes the tunnel with
  1008 (``pending_overflow``). While waiting, the socket's message limit is the byte cap, so an
  oversized message is refused from its frame header, never buffered. Nothing is dropped.
* ``/cable/connect/<rid>/<tid>`` pairs synchronously (``Tunnels.claim``: the waiting entry leaves
  the waiting state before any await, so exactly one initiator wins; later ones get 404), and after
  the 101 the initiator's connection task (``run_initiator``) flushes the pending buffer and then
  runs the initiator->authenticator direction, bounded by the same lifetime.
* Both directions run the same ``_pump``; ``_Side`` says which counters, quota and end reasons
  belong to it. When either side ends, the first recorded ``End`` (``relay.reasons``) wins and both
  directions are cancelled; each task sends its own socket the close code the table gives it. The
  last task out logs the tunnel's end.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Final, Protocol

import trio

from relay import logs
from relay.config import PRESSURE_SHARE, RelayConfig
from relay.errors import (
    FrameError,
    MessageTooBigError,
    PeerClosed,
    TextFrameError,
    WebSocketEnded,
)
from relay.guard import Quota, client_key, network_key
from relay.logs import tunnel_tag
from relay.metrics import Stats
from relay.reasons import ENDS, FRAMING, LIFETIME, PENDING_OVERFLOW, SHUTDOWN, WAIT_TIMEOUT, End
from relay.routing import RoutingIdAllocator
from relay.websocket import WebSocket
from relay.wsframe import CLOSE_PROTOCOL_ERROR, write_binary


class TunnelSocket(Protocol):
    """What the registry and the keep-alive need of one side's socket, in either engine."""

    def limit_message_size(self, max_message_size: int) -> None: ...

    def silent(self) -> bool: ...

    async def ping(self, frame: bytes) -> None: ...


class State(Enum):
    OPENING = "opening"
    WAITING = "waiting"
    PAIRED = "paired"
    ENDED = "ended"


class Tunnel:
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
        "sinks",
        "pending",
        "pending_bytes",
        "quota_keys",
        "paired",
        "tasks",
        "owner_scope",
        "initiator_scope",
        "end",
        "codes",
        "counts",
    )

    def __init__(
        self, tunnel_id: bytes, routing_id: bytes, lifetime: float, created: float
    ) -> None:
        self.tunnel_id = tunnel_id
        self.routing_id = routing_id
        self.tag = tunnel_tag(tunnel_id)
        self.state = State.OPENING
        self.created = created
        self.end_of_life = self.created + lifetime
        # When the owner stops waiting for an initiator; set when it starts waiting.
        self.wait_end = float("inf")
        # Each side's socket: a ``WebSocket`` (tasks engine) or a reactor connection.
        self.authenticator: Any = None
        self.initiator: Any = None
        # Where each direction's messages go: [to initiator, to authenticator]. The first stays
        # None until the pending buffer has been flushed.
        self.sinks: list[Any] = [None, None]
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        # (client, network) while this tunnel counts against their waiting quotas, else None.
        self.quota_keys: tuple[str, str] | None = None
        self.paired = False
        # Connection tasks still working on this tunnel; the last one out logs its end.
        self.tasks = 1
        # What stops each side's work (``cancel()``, a settable ``deadline``): the task's cancel
        # scope, or the reactor connection itself.
        self.owner_scope: Any = None
        self.initiator_scope: Any = None
        self.end: End | None = None
        # Close codes for (authenticator, initiator).
        self.codes = (1001, 1001)
        # messages/bytes (to initiator, to authenticator)
        self.counts = [0, 0, 0, 0]

    def finish(self, end: End, framing_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        """Record why the tunnel ends (first call wins) and stop both directions."""
        if self.end is None:
            self.end = end
            auth, init = end.authenticator_code, end.initiator_code
            self.codes = (
                framing_code if auth == FRAMING else auth,
                framing_code if init == FRAMING else init,
            )
        if self.state is State.WAITING:
            # A dying tunnel must not be joined in the moments before its owner unregisters it.
            self.state = State.ENDED
        if self.owner_scope is not None:
            self.owner_scope.cancel()
        if self.initiator_scope is not None:
            self.initiator_scope.cancel()


class _Side:
    """What one direction's pump needs to know about the side it reads from (a plain class:
    compiled, its fields are read in C; a NamedTuple's go through Python's attribute lookup)."""

    __slots__ = (
        "sink", "offset", "closed", "gone", "text_frame", "too_big", "framing", "quota",
        "other_gone",
    )  # fmt: skip

    def __init__(
        self, sink: int, offset: int, closed: End, gone: End, text_frame: End, too_big: End,
        framing: End, quota: End, other_gone: End,
    ) -> None:  # fmt: skip
        #: Index into ``Tunnel.sinks`` of where this side's messages go.
        self.sink = sink
        #: Offset of this direction's (messages, bytes) in ``Tunnel.counts`` and
        #: ``Stats.forwarded``.
        self.offset = offset
        self.closed = closed
        self.gone = gone
        self.text_frame = text_frame
        self.too_big = too_big
        self.framing = framing
        self.quota = quota
        #: The end when writing to the other side fails.
        self.other_gone = other_gone

    def ended(self, exc: WebSocketEnded) -> End:
        if isinstance(exc, PeerClosed):
            return self.closed
        if isinstance(exc, TextFrameError):
            return self.text_frame
        if isinstance(exc, MessageTooBigError):
            return self.too_big
        if isinstance(exc, FrameError):
            return self.framing
        return self.gone


def _side(name: str, other: str, sink: int) -> _Side:
    return _Side(
        sink,
        2 * sink,
        ENDS[f"{name}_closed"],
        ENDS[f"{name}_gone"],
        ENDS[f"{name}_text_frame"],
        ENDS[f"{name}_too_big"],
        ENDS[f"{name}_framing"],
        ENDS[f"{name}_quota"],
        ENDS[f"{other}_gone"],
    )


AUTHENTICATOR: Final = _side("authenticator", "initiator", 0)
INITIATOR: Final = _side("initiator", "authenticator", 1)


def _frames(batch: list[bytes]) -> tuple[bytearray, int]:
    """Server frames for every message of ``batch`` in one buffer (one write), and payload bytes."""
    out = bytearray()
    nbytes = 0
    for data in batch:
        write_binary(out, data)
        nbytes += len(data)
    return out, nbytes


class Tunnels:
    """The live tunnels of one relay node and the code that runs them from upgrade to end."""

    def __init__(
        self, config: RelayConfig, stats: Stats, observe_pairing: Callable[[float], None]
    ) -> None:
        self.config = config
        self.stats = stats
        self._observe_pairing = observe_pairing
        #: trio's clock; the reactor sets the clock's own method for its run (one call, not three).
        self.now: Callable[[], float] = trio.current_time
        self._routing = RoutingIdAllocator(config.node_prefix)
        #: The number of tunnels from which the node is under pressure (config is fixed at start).
        self._pressure_line = PRESSURE_SHARE * config.tunnel_limit
        self.by_id: dict[bytes, Tunnel] = {}
        self._routing_ids: set[bytes] = set()
        #: Bytes buffered for initiators that have not joined yet, over all tunnels.
        self.pending_bytes = 0
        self.waiting_per_client = Quota(config.max_waiting_per_address or 1)
        self.waiting_per_network = Quota(config.max_waiting_per_network or 1)
        # Waiting tunnels, oldest first: where the pressure sweep looks for idle ones.
        self._waiting: dict[bytes, Tunnel] = {}
        # Set when the last tunnel leaves, while someone waits for that (shutdown only).
        self._empty: trio.Event | None = None

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, tunnel_id: bytes) -> bool:
        return tunnel_id in self.by_id

    def waiting(self) -> int:
        return sum(1 for t in self.by_id.values() if t.state is State.WAITING)

    def paired(self) -> int:
        return sum(1 for t in self.by_id.values() if t.state is State.PAIRED)

    # -- registration ------------------------------------------------------------------------

    def waiting_quota_full(self, address: str) -> str | None:
        """Which waiting quota ``address`` has used up ("address" or "network"), if any."""
        if self.waiting_per_client.full(client_key(address)):
            return "address"
        if self.waiting_per_network.full(network_key(address)):
            return "network"
        return None

    def register(self, tunnel_id: bytes, address: str | None = None) -> Tunnel:
        """A new tunnel under ``tunnel_id``; raises ``RoutingIdsExhausted`` if none is free.

        With ``address`` the tunnel counts against that client's and network's waiting quotas
        until it pairs or ends.
        """
        routing_id = self._routing.allocate(self._routing_ids)
        tunnel = Tunnel(tunnel_id, routing_id, self.config.tunnel_lifetime, self.now())
        self.by_id[tunnel_id] = tunnel
        self._routing_ids.add(routing_id)
        if address is not None:
            keys = (client_key(address), network_key(address))
            self.waiting_per_client.take(keys[0])
            self.waiting_per_network.take(keys[1])
            tunnel.quota_keys = keys
        return tunnel

    def _release_quota(self, tunnel: Tunnel) -> None:
        self._waiting.pop(tunnel.tunnel_id, None)
        keys = tunnel.quota_keys
        if keys is not None:
            tunnel.quota_keys = None
            self.waiting_per_client.give_back(keys[0])
            self.waiting_per_network.give_back(keys[1])

    def under_pressure(self) -> bool:
        """Whether the node is near its tunnel limit."""
        return len(self.by_id) >= self._pressure_line

    def sweep_idle(self, budget: int = 64) -> int:
        """Near the limit: end waiting tunnels that sent nothing for ``pressure_wait_timeout``.

        Looks at most at ``budget`` of the oldest waiting tunnels; returns how many it ended.
        """
        cutoff = self.now() - self.config.pressure_wait_timeout
        ended = 0
        for tunnel in list(self._waiting.values())[:budget]:
            if tunnel.created > cutoff:
                break  # oldest first: the rest are younger still
            if tunnel.state is State.WAITING and not tunnel.pending:
                tunnel.finish(WAIT_TIMEOUT)
                self.unregister(tunnel)
                ended += 1
            else:
                # Sent something (or no longer waiting): look at it again later, not first.
                self._waiting.pop(tunnel.tunnel_id, None)
                if tunnel.state is State.WAITING:
                    self._waiting[tunnel.tunnel_id] = tunnel
        return ended

    def opened(self, tunnel: Tunnel, ws: TunnelSocket) -> None:
        """The authenticator's 101 went out: the tunnel waits for its initiator."""
        tunnel.authenticator = ws
        # Until an initiator joins, no single message may exceed what the pending buffer holds.
        ws.limit_message_size(min(self.config.max_message_size, self.config.max_pending_bytes))
        if tunnel.end is None:
            tunnel.state = State.WAITING
            self._waiting[tunnel.tunnel_id] = tunnel
        self.stats.tunnels_opened += 1

    def claim(self, routing_id: bytes, tunnel_id: bytes) -> tuple[Tunnel, float] | None:
        """Pair an initiator with the waiting tunnel, before any await; None if none waits.

        Returns the tunnel and the pairing latency.
        """
        tunnel = self.by_id.get(tunnel_id)
        now = self.now()
        if (
            tunnel is None
            or tunnel.state is not State.WAITING
            or (tunnel.routing_id != routing_id)
            # Past the wait deadline the owner's scope may be cancelled already, unnoticed.
            or now >= tunnel.wait_end
        ):
            return None
        # Claim the tunnel before any await so that exactly one initiator joins it.
        tunnel.state = State.PAIRED
        tunnel.paired = True
        tunnel.tasks += 1
        self._release_quota(tunnel)
        if tunnel.authenticator is not None:
            tunnel.authenticator.limit_message_size(self.config.max_message_size)
        if tunnel.owner_scope is not None:
            # The owner no longer waits for an initiator: only the lifetime bounds it now.
            tunnel.owner_scope.deadline = tunnel.end_of_life
        latency = now - tunnel.created
        self.stats.pairings += 1
        self._observe_pairing(latency)
        return tunnel, latency

    def join_failed(self, tunnel: Tunnel) -> None:
        """The initiator's 101 could not be sent: it leaves the tunnel, which ends."""
        tunnel.finish(ENDS["initiator_gone"])
        self.leave(tunnel)

    def _drop_pending(self, tunnel: Tunnel) -> None:
        self.pending_bytes -= tunnel.pending_bytes
        tunnel.pending_bytes = 0

    def unregister(self, tunnel: Tunnel) -> None:
        self._release_quota(tunnel)
        self._drop_pending(tunnel)
        tunnel.pending.clear()  # release the buffered bytes now, not when the tasks end
        if self.by_id.get(tunnel.tunnel_id) is tunnel:
            del self.by_id[tunnel.tunnel_id]
            self._routing_ids.discard(tunnel.routing_id)
            if self._empty is not None and not self.by_id:
                self._empty.set()
        tunnel.state = State.ENDED

    # -- what both engines do the same way --------------------------------------------------

    def side_ended(self, tunnel: Tunnel, side: _Side, exc: WebSocketEnded) -> None:
        """``side``'s socket stopped delivering with ``exc``: record how the tunnel ends."""
        end = side.ended(exc)
        if (
            isinstance(exc, MessageTooBigError)
            and tunnel.sinks[side.sink] is None
            and not tunnel.paired
        ):
            # Over the waiting-phase message limit, which is the pending byte cap.
            tunnel.finish(PENDING_OVERFLOW)
        elif isinstance(exc, FrameError) and end is side.framing:
            tunnel.finish(end, exc.code)
        else:
            tunnel.finish(end)

    def hold_pending(self, tunnel: Tunnel, batch: list[bytes]) -> bool:
        """Buffer ``batch`` for an initiator not there yet; False (tunnel ended) if over a cap."""
        config = self.config
        pending = tunnel.pending
        nbytes = sum(map(len, batch))
        if len(batch) > config.max_pending_messages - len(pending) or (
            not tunnel.paired
            and (
                tunnel.pending_bytes + nbytes > config.max_pending_bytes
                or self.pending_bytes + nbytes > config.max_pending_bytes_total
            )
        ):
            tunnel.finish(PENDING_OVERFLOW)
            return False
        pending.extend(batch)
        tunnel.pending_bytes += nbytes
        self.pending_bytes += nbytes
        return True

    def take_pending(self, tunnel: Tunnel) -> list[bytes]:
        """The buffered messages, oldest first, now out of the buffer and its byte counts."""
        batch = tunnel.pending[:]
        tunnel.pending.clear()
        self._drop_pending(tunnel)
        return batch

    def forwarded(self, tunnel: Tunnel, offset: int, messages: int, nbytes: int) -> None:
        """Count ``messages`` written in one direction (``offset``: 0 to the initiator, 2 back)."""
        forwarded = self.stats.forwarded
        forwarded[offset] += messages
        forwarded[offset + 1] += nbytes
        counts = tunnel.counts
        counts[offset] += messages
        counts[offset + 1] += nbytes

    def owner_done(self, tunnel: Tunnel) -> tuple[int, str]:
        """The owner's part is over: count the end, unregister; its close code and text."""
        tunnel.owner_scope = None
        if tunnel.end is None:
            tunnel.finish(SHUTDOWN)
        end = tunnel.end or SHUTDOWN
        # Counted before the tunnel leaves the registry, so whoever sees it gone sees why.
        self.stats.tunnel_closes[end.label] += 1
        self.unregister(tunnel)
        return tunnel.codes[0], end.text

    def initiator_done(self, tunnel: Tunnel) -> tuple[int, str]:
        """The initiator's part is over: its close code and text."""
        tunnel.initiator_scope = None
        if tunnel.end is None:
            tunnel.finish(SHUTDOWN)
        return tunnel.codes[1], (tunnel.end or SHUTDOWN).text

    # -- running -----------------------------------------------------------------------------

    async def run_initiator(self, tunnel: Tunnel, ws: WebSocket) -> None:
        """The initiator's connection task: pending messages, then initiator->authenticator."""
        tunnel.initiator = ws
        try:
            with trio.CancelScope(deadline=tunnel.end_of_life) as scope:
                tunnel.initiator_scope = scope
                if tunnel.end is None:
                    tunnel.sinks[1] = tunnel.authenticator
                    if await self._flush_pending(tunnel, ws):
                        await self._pump(tunnel, ws, INITIATOR)
                else:
                    scope.cancel()
            if scope.cancelled_caught and tunnel.end is None:
                tunnel.finish(LIFETIME)
        finally:
            code, text = self.initiator_done(tunnel)
            try:
                await ws.close(code, text, self.config.close_timeout)
            finally:
                self.leave(tunnel)

    async def run_authenticator(self, tunnel: Tunnel, ws: WebSocket) -> None:
        """The authenticator's connection task owns the tunnel from here to its end."""
        end_of_life = tunnel.end_of_life
        wait_end = tunnel.wait_end = trio.current_time() + self.config.wait_timeout
        try:
            deadline = end_of_life if tunnel.paired else min(wait_end, end_of_life)
            with trio.CancelScope(deadline=deadline) as scope:
                tunnel.owner_scope = scope
                if tunnel.end is not None:
                    scope.cancel()
                await self._pump(tunnel, ws, AUTHENTICATOR)
            if scope.cancelled_caught and tunnel.end is None:
                if not tunnel.paired and wait_end <= end_of_life:
                    tunnel.finish(WAIT_TIMEOUT)
                else:
                    tunnel.finish(LIFETIME)
        finally:
            await self._end_tunnel(tunnel)

    async def _flush_pending(self, tunnel: Tunnel, initiator: WebSocket) -> bool:
        """Deliver what the authenticator sent before the initiator joined; False if it failed."""
        while tunnel.pending:
            batch = self.take_pending(tunnel)
            out, nbytes = _frames(batch)
            try:
                await initiator.send_frames(out)
            except WebSocketEnded:
                tunnel.finish(ENDS["initiator_gone"])
                return False
            self.forwarded(tunnel, 0, len(batch), nbytes)
        # No await between the empty check above and this: later messages cannot overtake.
        tunnel.sinks[0] = initiator
        return True

    async def _pump(self, tunnel: Tunnel, source: WebSocket, side: _Side) -> None:
        """Forward ``source``'s messages to the other side until either ends.

        While the other side is not there yet (only the authenticator's direction, before the
        initiator joined) messages go to the tunnel's pending buffer instead.
        """
        limit = self.config.max_messages
        sinks = tunnel.sinks
        sink = side.sink
        count = 0
        while True:
            try:
                batch = await source.receive_batch()
            except WebSocketEnded as exc:
                self.side_ended(tunnel, side, exc)
                return
            # Messages past the quota are not forwarded; the ones before it are.
            over_quota = count + len(batch) > limit
            if over_quota:
                batch = batch[: max(0, limit - count)]
            count += len(batch)
            destination = sinks[sink]
            if destination is None:
                if not self.hold_pending(tunnel, batch):
                    return
            elif batch:
                out, nbytes = _frames(batch)
                try:
                    await destination.send_frames(out)
                except WebSocketEnded:
                    tunnel.finish(side.other_gone)
                    return
                self.forwarded(tunnel, side.offset, len(batch), nbytes)
            if over_quota:
                tunnel.finish(side.quota)
                return

    async def _end_tunnel(self, tunnel: Tunnel) -> None:
        code, text = self.owner_done(tunnel)
        try:
            # The initiator's task, if any, closes its own socket meanwhile.
            if tunnel.authenticator is not None:
                await tunnel.authenticator.close(code, text, self.config.close_timeout)
        finally:
            self.leave(tunnel)

    def leave(self, tunnel: Tunnel) -> None:
        """A connection task is done with ``tunnel``; the last one logs how it went."""
        tunnel.tasks -= 1
        if tunnel.tasks:
            return
        logs.tunnel_closed(
            tunnel.tag,
            tunnel.end.label if tunnel.end is not None else None,
            tunnel.paired,
            round((self.now() - tunnel.created) * 1000),
            tunnel.counts,
        )

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self, grace: Callable[[], float]) -> None:
        """After accepting stopped: waiting tunnels can never pair; paired ones get the grace."""
        for tunnel in list(self.by_id.values()):
            if tunnel.state is not State.PAIRED:
                tunnel.finish(SHUTDOWN)
        with trio.move_on_after(grace()):
            await self._wait_empty()
        for tunnel in list(self.by_id.values()):
            tunnel.finish(SHUTDOWN)
        # Owners now send their close frames; give them the close timeout, then cut what remains.
        with trio.move_on_after(self.config.close_timeout + 0.5):
            await self._wait_empty()

    async def _wait_empty(self) -> None:
        while self.by_id:
            self._empty = trio.Event()
            await self._empty.wait()
