"""Request dispatch: one accepted connection from its first byte to the tunnel it joins, if any.

Why the opening handshake is written here on raw trio streams instead of
``trio_websocket.serve_websocket``: the relay must answer plain HTTP (``/healthz``, ``/metrics``),
refuse bad requests with exact status codes *before* any upgrade (400/403/404/405/409/410/426/429/
503), bound the time and bytes a client may spend on its request head (one deadline covers TLS,
request and 101), and count connections per client address. trio-websocket's server reads the
request through wsproto's handshake layer, which rejects non-upgrade requests itself and spawns a
reader task and a message queue per socket. Doing the handshake ourselves (``relay.http``) keeps
all of that in one deadline-scoped function; after the 101 the connection task runs its side of the
tunnel (``relay.tunnel``) on ``relay.websocket.WebSocket``. Any RFC 6455 client (trio-websocket,
websockets, browsers) can talk to it.

The order of checks: per-address connection limit, request head (size, syntax), ``decide``
(``relay.requests``: target, method, upgrade headers, version, subprotocol, Origin), then live
state: 410 contact, 503 shutting down, and for ``/cable/new`` 409 duplicate / 503 full / 503 no
routing id, for ``/cable/connect`` 404 no such waiting tunnel.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Final

import trio

from hybrid.wire import ROUTING_ID_HEADER
from relay import logs
from relay.config import RelayConfig
from relay.descriptors import HONEST_HOLD, DescriptorBudget
from relay.guard import FailureBudget, client_key
from relay.http import (
    BadRequest,
    ClientGone,
    Request,
    finish_request,
    read_request,
    response_bytes,
    send_response,
    send_switching_protocols,
)
from relay.logs import log_event, tunnel_tag
from relay.metrics import CONTENT_TYPE, RelayMetrics, Stats
from relay.proxy import (
    ForwardedError,
    ProxyHeaderError,
    TrustedProxies,
    forwarded_client,
    might_be_proxy_header,
    read_proxy_header,
    read_start,
)
from relay.ratelimit import RateLimiter
from relay.rawio import STREAM_ERRORS
from relay.requests import (
    HEALTH_PATH,
    METRICS_PATH,
    ConnectTunnel,
    ContactTunnel,
    NewTunnel,
    PlainGet,
    Refusal,
    Upgrade,
    decide,
)
from relay.routing import RoutingIdsExhausted, routing_id_hex
from relay.tunnel import Tunnel, Tunnels, TunnelSocket
from relay.websocket import WebSocket

#: Longest a refused over-limit client may keep its socket while we read its request and answer.
_QUICK_REFUSAL_TIMEOUT: Final = 1.0
_ROUTING_ID_HEADER: Final = ROUTING_ID_HEADER.encode("ascii")

#: What a successful handshake leads to: the tunnel, this side's socket, and whether it is the
#: authenticator (the tunnel's owner).
Accepted = tuple[Tunnel, WebSocket, bool]


# The four plans are plain classes, not NamedTuples: compiled (relay/native.py), a class is built
# in C, where a NamedTuple's constructor is a Python function; two are built per tunnel.


class Refuse:
    """Answer ``refusal`` and close (already counted and logged)."""

    __slots__ = ("refusal", "head_only")

    def __init__(self, refusal: Refusal, head_only: bool = False) -> None:
        self.refusal = refusal
        self.head_only = head_only


class Serve:
    """Answer a plain GET of /healthz or /metrics and close."""

    __slots__ = ("get", "head_only")

    def __init__(self, get: PlainGet, head_only: bool) -> None:
        self.get = get
        self.head_only = head_only


class Open:
    """Send the authenticator its 101 (``line`` names the routing id); ``tunnel`` is registered."""

    __slots__ = ("tunnel", "request", "key", "line", "routing_hex", "address")

    def __init__(
        self, tunnel: Tunnel, request: Request, key: bytes, line: bytes, routing_hex: str,
        address: str,
    ) -> None:  # fmt: skip
        self.tunnel = tunnel
        self.request = request
        self.key = key
        self.line = line
        self.routing_hex = routing_hex
        self.address = address


class Join:
    """Send the initiator its 101; ``tunnel`` is claimed (paired)."""

    __slots__ = ("tunnel", "request", "key", "latency", "address")

    def __init__(
        self, tunnel: Tunnel, request: Request, key: bytes, latency: float, address: str
    ) -> None:
        self.tunnel = tunnel
        self.request = request
        self.key = key
        self.latency = latency
        self.address = address


Plan = Refuse | Serve | Open | Join


async def send_all_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    """Write a whole response; a client that is gone already is not an error."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


_FORWARDED_FOR: Final = b"x-forwarded-for"


class Client:
    """Who is on the other end of one connection, as far as limits and logs are concerned."""

    __slots__ = ("address", "counted")

    def __init__(self, address: str, counted: str | None) -> None:
        #: The real client: the TCP peer, or what a trusted proxy said it forwards.
        self.address = address
        #: The address this connection is counted under for the per-address limit, if any.
        self.counted = counted


class Dispatcher:
    """Serves every accepted connection of one relay node."""

    def __init__(
        self,
        config: RelayConfig,
        stats: Stats,
        metrics: RelayMetrics,
        tunnels: Tunnels,
        descriptors: DescriptorBudget | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.metrics = metrics
        self.tunnels = tunnels
        #: Set when draining starts (SIGTERM): /healthz answers 503 and /cable/new is refused
        #: with 503, so the balancer sends new tunnels elsewhere; /cable/connect still pairs.
        self.draining = False
        #: Set once the listener closes: every new tunnel request is refused.
        self.closing = False
        self.connections = 0
        self.handshakes = 0
        self._per_address: Counter[str] = Counter()
        #: Every socket held (counted or being refused), against the descriptor budget.
        self.sockets = 0
        self._polite_refusals = 0
        self.descriptors = descriptors or DescriptorBudget.measure()
        self.connect_failures = FailureBudget(
            config.connect_failure_burst, config.connect_failure_rate
        )
        self.tunnel_connect_failures = FailureBudget(
            config.tunnel_connect_failure_burst, config.tunnel_connect_failure_rate
        )
        #: Token buckets per client address for /cable/new and /cable/connect (None: off).
        self.new_limiter: RateLimiter | None = None
        self.connect_limiter: RateLimiter | None = None
        if config.rate_limit > 0:
            self.new_limiter = RateLimiter(config.rate_limit, config.rate_burst)
            self.connect_limiter = RateLimiter(config.rate_limit, config.rate_burst)
        #: Peers whose PROXY header and X-Forwarded-For are believed.
        self.trusted = TrustedProxies(config.trusted_proxies)
        #: ``bool(self.trusted)`` and the config's limits, read once (config is fixed at start;
        #: each was a Python-level call per connection).
        self.trusting = bool(self.trusted)
        self.address_limit = config.address_limit
        self.tunnel_limit = config.tunnel_limit

    async def handle(self, stream: trio.abc.Stream, peer: str) -> None:
        """One connection's task, from accept to close; never raises."""
        self.stats.connections_accepted += 1
        self.sockets += 1
        client = Client(peer, None)
        try:
            if self.sockets > self.descriptors.connections:
                # Out of descriptors: answer at once and keep nothing, so accept never runs dry.
                await self._refuse_now(stream, Refusal(503, "fd_limit", "relay is full"), peer)
                return
            if not (self.trusting and peer in self.trusted):
                # A trusted proxy is counted under the client it forwards, once known.
                if not self._may_hold(peer):
                    await self._refuse_over_limit(stream, peer)
                    return
                self._per_address[peer] += 1
                client.counted = peer
            self.connections += 1
            try:
                await self._serve_connection(stream, client)
            finally:
                self.connections -= 1
                self._uncount(client)
        except Exception as exc:  # noqa: BLE001 - one bad connection must never stop the relay
            log_event("connection_error", logging.ERROR, client=client.address, error=repr(exc))
        finally:
            self.sockets -= 1
            if type(stream) is trio.SocketStream:
                # What SocketStream.aclose does, minus a scheduler round trip.
                stream.socket.close()
            else:
                await trio.aclose_forcefully(stream)

    def _uncount(self, client: Client) -> None:
        counted = client.counted
        if counted is not None:
            client.counted = None
            self._per_address[counted] -= 1
            if not self._per_address[counted]:
                del self._per_address[counted]

    def _recount(self, client: Client, address: str) -> bool:
        """Count ``client`` under its real ``address``; False if that address is at its limit."""
        client.address = address
        if client.counted == address:
            return True
        self._uncount(client)
        if not self._may_hold(address):
            return False
        self._per_address[address] += 1
        client.counted = address
        return True

    def _may_hold(self, address: str) -> bool:
        """Whether one more connection from ``address`` fits its limit and the descriptor reserve.

        Past the reserve line only clients holding fewer than ``HONEST_HOLD`` connections get in,
        so one flooding address cannot take the last descriptors from everyone else.
        """
        held = self._per_address[address]
        return held < self.address_limit and not (
            held >= HONEST_HOLD
            and self.sockets > self.descriptors.connections - self.descriptors.reserve
        )

    async def _refuse_over_limit(self, stream: trio.abc.Stream, address: str) -> None:
        refusal = Refusal(429, "address_limit", "too many connections from this address")
        if self._polite_refusals >= self.descriptors.reserve // 2:
            # Many at once is a flood, not a client that lost count: do not hold descriptors.
            await self._refuse_now(stream, refusal, address)
            return
        # Read the request first: closing with unread bytes would reset the connection and the
        # client might never see why it was refused.
        self._polite_refusals += 1
        try:
            with trio.move_on_after(min(_QUICK_REFUSAL_TIMEOUT, self.config.handshake_timeout)):
                try:
                    await read_request(stream, self.config.max_request_head)
                except (BadRequest, ClientGone):
                    pass
                await self.refuse(stream, refusal, address)
        finally:
            self._polite_refusals -= 1

    async def _refuse_now(self, stream: trio.abc.Stream, refusal: Refusal, address: str) -> None:
        """Answer without reading the request (the caller closes at once)."""
        with trio.move_on_after(0.1):
            await self.refuse(stream, refusal, address)

    async def refuse(
        self,
        stream: trio.abc.Stream,
        refusal: Refusal,
        address: str,
        head_only: bool = False,
        detail: str | None = None,
    ) -> None:
        """Answer ``refusal`` (count it, log it); the caller closes the connection."""
        await send_all_quietly(
            stream, self.refusal_bytes(self.refusal(refusal, address, head_only, detail))
        )

    async def _serve_connection(self, stream: trio.abc.Stream, client: Client) -> None:
        self.handshakes += 1
        try:
            with trio.move_on_after(self.config.handshake_timeout) as deadline:
                accepted = await self._handshake(stream, client)
        finally:
            self.handshakes -= 1
        if deadline.cancelled_caught:
            self.stats.refusals["handshake_timeout"] += 1
            log_event("refused", reason="handshake_timeout", status=408, client=client.address)
            with trio.move_on_after(0.2):
                await send_response(stream, 408, b"opening handshake took too long\n")
            return
        if accepted is None:
            return
        tunnel, ws, is_authenticator = accepted
        if is_authenticator:
            await self.tunnels.run_authenticator(tunnel, ws)
        else:
            await self.tunnels.run_initiator(tunnel, ws)

    async def _identify(self, stream: trio.abc.Stream, client: Client) -> bytes | None:
        """With ``--proxy-protocol``: read the PROXY header of a trusted proxy and count the
        connection under the client it names; refuse one from anyone else. Returns the bytes
        read past it (the start of the request), or None if the connection was refused."""
        peer = client.address
        if peer in self.trusted:
            try:
                source, rest = await read_proxy_header(stream)
            except ProxyHeaderError as exc:
                await self.refuse(
                    stream,
                    Refusal(400, "proxy_malformed", "malformed PROXY protocol header"),
                    peer,
                    detail=str(exc),
                )
                return None
            except EOFError:
                self.stats.refusals["incomplete_request"] += 1
                return None
            if source is not None and not self._recount(client, source):
                await self._refuse_limit(stream, client.address)
                return None
            return rest
        start = await read_start(stream)
        if start and might_be_proxy_header(start):
            await self.refuse(
                stream,
                Refusal(400, "proxy_untrusted", "PROXY protocol header from an untrusted peer"),
                peer,
                detail="PROXY header from a peer not in --trusted-proxies",
            )
            return None
        return start

    async def _refuse_limit(self, stream: trio.abc.Stream, address: str) -> None:
        await send_all_quietly(stream, self.refusal_bytes(self._limit(address)))

    async def _handshake(self, stream: trio.abc.Stream, client: Client) -> Accepted | None:
        config = self.config
        start = b""
        if config.proxy_protocol:
            identified = await self._identify(stream, client)
            if identified is None:
                return None
            start = identified
        try:
            request = await read_request(stream, config.max_request_head, start)
        except BadRequest as exc:
            await self._carry_out(stream, self.bad_request(exc, client.address))
            return None
        except ClientGone:
            self.stats.refusals["incomplete_request"] += 1
            return None
        return await self._carry_out(stream, self.plan(request, client))

    async def _carry_out(self, stream: trio.abc.Stream, plan: Plan) -> Accepted | None:
        """Send what ``plan`` says on ``stream``; the tunnel and socket if it was an upgrade."""
        if type(plan) is Refuse:
            await send_all_quietly(stream, self.refusal_bytes(plan))
            return None
        if type(plan) is Serve:
            await send_all_quietly(stream, self.plain_bytes(plan))
            return None
        if type(plan) is Open:
            tunnel = plan.tunnel
            registered = False
            try:
                trailing = await send_switching_protocols(stream, plan.request, plan.key, plan.line)
                registered = True
            except STREAM_ERRORS:
                return None
            finally:
                if not registered:
                    self.tunnels.unregister(tunnel)
            ws = WebSocket(stream, trailing, self.config.max_message_size)
            self.opened(plan, ws)
            return tunnel, ws, True
        assert type(plan) is Join
        try:
            trailing = await send_switching_protocols(stream, plan.request, plan.key)
        except BaseException as exc:
            # Also on cancellation: this task must still leave the tunnel.
            self.tunnels.join_failed(plan.tunnel)
            if isinstance(exc, STREAM_ERRORS):
                return None
            raise
        ws = WebSocket(stream, trailing, self.config.max_message_size)
        self.joined(plan)
        return plan.tunnel, ws, False

    def opened(self, plan: Open, ws: TunnelSocket) -> None:
        """The authenticator's 101 went out on ``ws``: its tunnel waits for an initiator."""
        self.tunnels.opened(plan.tunnel, ws)
        logs.tunnel_opened(plan.tunnel.tag, plan.routing_hex, plan.address)

    def joined(self, plan: Join) -> None:
        """The initiator's 101 went out."""
        logs.tunnel_paired(plan.tunnel.tag, round(plan.latency * 1000), plan.address)

    def bad_request(self, exc: BadRequest, address: str) -> Refuse:
        """The refusal of a request head that did not parse (counted and logged)."""
        reason = "request_too_large" if exc.status == 431 else "malformed"
        return self.refusal(Refusal(exc.status, reason, str(exc)), address)

    def refusal(
        self, refusal: Refusal, address: str, head_only: bool = False, detail: str | None = None
    ) -> Refuse:
        """Count and log ``refusal``; what to answer (the caller closes the connection after)."""
        self.stats.refusals[refusal.reason] += 1
        if detail is None:
            log_event("refused", reason=refusal.reason, status=refusal.status, client=address)
        else:
            log_event(
                "refused",
                reason=refusal.reason,
                status=refusal.status,
                client=address,
                detail=detail,
            )
        return Refuse(refusal, head_only)

    @staticmethod
    def refusal_bytes(plan: Refuse) -> bytes:
        refusal = plan.refusal
        return response_bytes(
            refusal.status,
            (refusal.message + "\n").encode("utf-8"),
            headers=refusal.headers,
            head_only=plan.head_only,
        )

    def _limit(self, address: str) -> Refuse:
        return self.refusal(
            Refusal(429, "address_limit", "too many connections from this address"), address
        )

    def plan(self, request: Request, client: Client) -> Plan:
        """Decide what to do with one whole request head, before any await (both engines).

        Counts, logs and changes live state (registers or claims the tunnel) as the decision
        requires; the caller only sends what the plan says.
        """
        config = self.config
        address = client.address
        # One pass over the names (compiled, a C loop of length-first compares; the usual
        # request has no X-Forwarded-For).
        forwarded: list[bytes] | None = None
        for name, value in request.headers:
            if name == _FORWARDED_FOR:
                if forwarded is None:
                    forwarded = []
                forwarded.append(value)
        if forwarded:
            # Believed only from a trusted proxy (behind PROXY protocol: the client it names).
            if address not in self.trusted:
                return self.refusal(
                    Refusal(
                        403,
                        "forwarded_untrusted",
                        "X-Forwarded-For is accepted only from trusted proxies",
                    ),
                    address,
                    detail="X-Forwarded-For from a peer not in --trusted-proxies",
                )
            try:
                real = forwarded_client(forwarded, address, self.trusted)
            except ForwardedError as exc:
                return self.refusal(
                    Refusal(400, "forwarded_malformed", "malformed X-Forwarded-For"),
                    address,
                    detail=str(exc),
                )
            if not self._recount(client, real):
                return self._limit(real)
            address = real
        elif client.counted is None and not self._recount(client, address):
            # A trusted proxy's own request (or one it forwarded without saying for whom).
            return self._limit(address)
        decision = decide(
            request.method,
            request.target,
            request.headers,
            config.allowed_origins,
            request.version,
            lower_names=True,  # a Request's names are lower-case
        )
        head_only = request.method == b"HEAD"
        if isinstance(decision, Refusal):
            return self.refusal(decision, address, head_only)
        if isinstance(decision, PlainGet):
            if decision.path == METRICS_PATH and config.admin is not None:
                return self.refusal(
                    Refusal(404, "unknown_path", "no such endpoint"), address, head_only
                )
            return Serve(decision, head_only)
        assert isinstance(decision, Upgrade)
        try:
            finish_request(request)
        except BadRequest as exc:
            return self.refusal(Refusal(exc.status, "malformed", str(exc)), address)
        route = decision.route
        if isinstance(route, ContactTunnel):
            return self.refusal(
                Refusal(410, "contact_unsupported", "this relay does not hold linked contacts"),
                address,
            )
        limiter = self.new_limiter if isinstance(route, NewTunnel) else self.connect_limiter
        if limiter is not None:
            wait = limiter.take(address, self.tunnels.now())
            if wait:
                retry = (("Retry-After", limiter.retry_after(wait)),)
                return self.refusal(
                    Refusal(429, "rate_limited", "too many requests from this address", retry),
                    address,
                )
        if self.draining:
            if self.closing:
                return self.refusal(Refusal(503, "shutting_down", "relay shutting down"), address)
            if isinstance(route, NewTunnel):
                return self.refusal(
                    Refusal(503, "draining", "relay draining: use another node"), address
                )
        if isinstance(route, NewTunnel):
            return self._plan_open(request, decision.key, route, address)
        assert isinstance(route, ConnectTunnel)
        return self._plan_join(request, decision.key, route, address)

    async def handle_admin(self, stream: trio.abc.Stream, address: str) -> None:
        """A connection to the admin listener: /metrics and /healthz only; never raises."""
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                try:
                    request = await read_request(stream, self.config.max_request_head)
                except (BadRequest, ClientGone):
                    return
                decision = decide(request.method, request.target, request.headers)
                head_only = request.method == b"HEAD"
                if isinstance(decision, PlainGet):
                    await self._serve_plain(stream, decision, head_only)
                elif isinstance(decision, Refusal) and decision.status == 405:
                    await send_response(stream, 405, b"use GET\n", headers=decision.headers)
                else:
                    await send_response(
                        stream, 404, b"the admin listener serves /metrics and /healthz\n"
                    )
        except Exception as exc:  # noqa: BLE001 - never let one request stop the listener
            log_event("connection_error", logging.ERROR, client=address, error=repr(exc))
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_plain(self, stream: trio.abc.Stream, get: PlainGet, head_only: bool) -> None:
        await send_all_quietly(stream, self.plain_bytes(Serve(get, head_only)))

    def plain_bytes(self, plan: Serve) -> bytes:
        """The response to a plain GET of /healthz or /metrics."""
        head_only = plan.head_only
        if plan.get.path == HEALTH_PATH:
            status = 503 if self.draining else 200
            text = "shutting_down" if self.closing else "draining" if self.draining else "ok"
            body = json.dumps(
                {
                    "status": text,
                    "tunnels_waiting": self.tunnels.waiting(),
                    "tunnels_paired": self.tunnels.paired(),
                }
            ).encode("ascii")
            return response_bytes(
                status, body, content_type="application/json", head_only=head_only
            )
        return response_bytes(
            200, self.metrics.render(), content_type=CONTENT_TYPE, head_only=head_only
        )

    def _plan_open(self, request: Request, key: bytes, route: NewTunnel, address: str) -> Plan:
        tunnels = self.tunnels
        if route.tunnel_id in tunnels.by_id:
            return self.refusal(
                Refusal(409, "duplicate_tunnel", "tunnel id already in use"), address
            )
        full = tunnels.waiting_quota_full(address)
        if full is not None:
            return self.refusal(
                Refusal(429, "waiting_limit", f"too many waiting tunnels from this {full}"),
                address,
            )
        if tunnels.under_pressure():
            tunnels.sweep_idle()
        if len(tunnels.by_id) >= self.tunnel_limit:
            return self.refusal(
                Refusal(503, "tunnel_limit", "relay is at its tunnel limit"), address
            )
        try:
            tunnel = tunnels.register(route.tunnel_id, address)
        except RoutingIdsExhausted:
            return self.refusal(
                Refusal(503, "routing_ids_exhausted", "no free routing id"), address
            )
        routing_hex = routing_id_hex(tunnel.routing_id)
        line = b"%s: %s\r\n" % (_ROUTING_ID_HEADER, routing_hex.encode())
        return Open(tunnel, request, key, line, routing_hex, address)

    def _plan_join(self, request: Request, key: bytes, route: ConnectTunnel, address: str) -> Plan:
        client = client_key(address)
        failures, tunnel_failures = self.connect_failures, self.tunnel_connect_failures
        if failures.exhausted(client) or tunnel_failures.exhausted(route.tunnel_id):
            # Not even looked up: a guesser learns nothing from attempts past its budget.
            failures.failed(client)
            wait = max(failures.retry_after(client), tunnel_failures.retry_after(route.tunnel_id))
            return self.refusal(
                Refusal(
                    429,
                    "connect_rate_limited",
                    "too many failed connects; try again later",
                    (("Retry-After", str(wait)),),
                ),
                address,
            )
        claimed = self.tunnels.claim(route.routing_id, route.tunnel_id)
        if claimed is None:
            emptied = failures.failed(client)
            emptied_tunnel = tunnel_failures.failed(route.tunnel_id)
            if emptied or emptied_tunnel:
                log_event(
                    "connect_guessing",
                    logging.WARNING,
                    client=address,
                    tunnel=tunnel_tag(route.tunnel_id),
                    limited="client" if emptied else "tunnel",
                )
            return self.refusal(
                Refusal(404, "unknown_tunnel", "no tunnel waiting under that id"), address
            )
        tunnel, latency = claimed
        return Join(tunnel, request, key, latency, address)
