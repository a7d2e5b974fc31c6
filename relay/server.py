"""One relay node: its listeners, its parts, its public view, start-up and shutdown.

The work is split by phase of a connection:

* ``relay.accept``: the accept loop, taking connections off each listener;
* ``relay.dispatch``: one connection's opening handshake, refusals and plain HTTP endpoints, up to
  the tunnel it opens or joins;
* ``relay.tunnel``: the registry of live tunnels, pairing, forwarding in both directions and how a
  tunnel ends (close codes from the table in ``relay.reasons``).

``Relay`` ties them together and is what ``serve`` hands to ``nursery.start``.
"""

from __future__ import annotations

import logging
import ssl

import trio

from relay import compiled
from relay.accept import accept_loop
from relay.config import RelayConfig
from relay.descriptors import DescriptorBudget
from relay.dispatch import Dispatcher
from relay.keepalive import keep_alive
from relay.logs import log_event
from relay.metrics import RelayMetrics, Stats
from relay.rawio import raw_listener_socket
from relay.reactor import Reactor
from relay.tunnel import Tunnels

__all__ = ["RelayConfig", "Relay", "serve"]


def _ssl_context(config: RelayConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)  # type: ignore[arg-type]
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
        # Fitted before anything reads the limits: defaults follow the descriptors available.
        self.descriptors = DescriptorBudget.measure()
        config.fit_to_descriptors(
            self.descriptors.connections, self.descriptors.per_address_default()
        )
        self.port = 0
        #: Port of the admin listener (``config.admin``), 0 when there is none.
        self.admin_port = 0
        self.stats = Stats()
        self.metrics = RelayMetrics(self.stats, self._gauges)
        self.tunnels = Tunnels(config, self.stats, self.metrics.pairing_latency.observe)
        self.dispatcher = Dispatcher(
            config, self.stats, self.metrics, self.tunnels, self.descriptors
        )
        #: The reactor serving every connection (``relay.reactor``), or None: a task each.
        self.reactor: Reactor | None = None
        if config.uses_reactor():
            self.reactor = Reactor(self.dispatcher, self.tunnels)
        #: Which engine serves connections: "reactor" or "tasks".
        self.engine = "reactor" if self.reactor is not None else "tasks"
        #: Whether the per-connection modules run compiled (``relay.native``) or as Python.
        self.native = compiled.active
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
        return len(self.tunnels)

    def waiting_tunnels(self) -> int:
        return self.tunnels.waiting()

    def paired_tunnels(self) -> int:
        return self.tunnels.paired()

    def open_connections(self) -> int:
        """TCP connections currently held, in any phase."""
        return self.dispatcher.connections

    def handshakes_in_progress(self) -> int:
        """Connections that have not yet finished their opening handshake."""
        return self.dispatcher.handshakes

    def metrics_text(self) -> str:
        return self.metrics.render().decode("utf-8")

    async def shutdown(self, grace: float | None = None, drain_delay: float | None = None) -> None:
        """Drain, stop accepting, let paired tunnels finish for ``grace`` s, then close the rest.

        Draining (``drain_delay`` seconds, default ``config.drain_delay``): the listener stays
        open, ``/healthz`` answers 503 and ``/cable/new`` is refused with 503 so that a load
        balancer moves new tunnels to other nodes, while waiting tunnels can still pair and live
        ones carry on. Then the listener closes and waiting tunnels are closed with 1001.
        Returns when the relay has stopped; a second call just waits for that.
        """
        if grace is not None:
            self._shutdown_grace = grace
        dispatcher = self.dispatcher
        if not dispatcher.draining:
            dispatcher.draining = True
            delay = self.config.drain_delay if drain_delay is None else drain_delay
            if delay > 0:
                log_event("drain_started", drain_s=delay, tunnels=len(self.tunnels))
                with trio.move_on_after(delay):
                    await self._stopped.wait()
            dispatcher.closing = True
            log_event("shutdown_started", grace_s=self._shutdown_grace)
            if self._accept_scope is not None:
                self._accept_scope.cancel()
        await self._stopped.wait()

    # -- lifecycle ---------------------------------------------------------------------------

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {
            "tunnels_waiting": ("Tunnels waiting for their initiator.", self.waiting_tunnels()),
            "tunnels_paired": ("Tunnels with both peers joined.", self.paired_tunnels()),
            "connections_open": (
                "TCP connections held, in any phase.",
                self.dispatcher.connections,
            ),
            "handshakes_in_progress": (
                "Connections still in their opening handshake.",
                self.dispatcher.handshakes,
            ),
            "draining": (
                "1 while the node drains or shuts down (/healthz answers 503), else 0.",
                1 if self.dispatcher.draining else 0,
            ),
        }

    async def _run(self, task_status: trio.TaskStatus[Relay]) -> None:
        config = self.config
        context = _ssl_context(config) if config.tls else None
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
            await trio.open_tcp_listeners(config.port, host=config.host)
        )
        self.port = listeners[0].socket.getsockname()[1]  # type: ignore[attr-defined]
        if context is not None:
            listeners = [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
        admin: list[trio.SocketListener] = []
        if config.admin is not None:
            admin_host, admin_port = config.admin_address()
            admin = list(await trio.open_tcp_listeners(admin_port, host=admin_host))
            self.admin_port = admin[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as connections:
                if config.ping_interval > 0:
                    connections.start_soon(keep_alive, self.tunnels, config.ping_interval)
                # The admin listener stays open through draining and the grace period.
                for admin_listener in admin:
                    connections.start_soon(
                        accept_loop, admin_listener, connections, self.dispatcher.handle_admin
                    )
                reactor = self.reactor
                if reactor is not None:
                    connections.start_soon(reactor.run)
                async with trio.open_nursery() as accepting:
                    self._accept_scope = accepting.cancel_scope
                    if reactor is not None:
                        accepting.start_soon(_reactor_accepts, reactor, listeners)
                    else:
                        for listener in listeners:
                            accepting.start_soon(
                                accept_loop, listener, connections, self.dispatcher.handle
                            )
                    if not self.native and not compiled.turned_off():
                        log_event(
                            "not_compiled",
                            logging.WARNING,
                            reason=compiled.reason,
                            hint="python -m relay.native builds the compiled modules (about 40 s, "
                            "needs mypy and a C compiler); as plain Python a tunnel costs about "
                            "1.8 times the CPU",
                        )
                    log_event(
                        "listening",
                        host=config.host,
                        port=self.port,
                        tls=config.tls,
                        node_prefix=config.node_prefix.hex().upper(),
                        fd_limit=self.descriptors.soft_limit,
                        fd_budget=self.descriptors.connections,
                        fd_reserve=self.descriptors.reserve,
                        max_connections_per_address=config.max_connections_per_address,
                        max_waiting_per_address=config.max_waiting_per_address,
                        max_waiting_per_network=config.max_waiting_per_network,
                        max_tunnels=config.max_tunnels,
                        admin_port=self.admin_port or None,
                        engine=self.engine,
                        native=self.native,
                    )
                    task_status.started(self)
                await self.tunnels.drain(lambda: self._shutdown_grace)
                connections.cancel_scope.cancel()
        finally:
            self._stopped.set()
        log_event("shutdown_complete")


async def _reactor_accepts(
    reactor: Reactor, listeners: list[trio.abc.Listener[trio.abc.Stream]]
) -> None:
    """Hand the listeners to the reactor until accepting is cancelled, then close them."""
    try:
        for listener in listeners:
            raw = raw_listener_socket(listener)
            assert raw is not None, "the reactor serves plain TCP listeners only"
            reactor.add_listener(raw)
        await trio.sleep_forever()
    finally:
        reactor.stop_accepting()
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def serve(
    config: RelayConfig, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a relay until cancelled (or until ``Relay.shutdown`` finishes).

    ``running = await nursery.start(serve, config)`` returns the ``Relay`` once it accepts
    connections: ``running.port``, ``running.base_url``, ``running.live_tunnels()``.
    """
    await Relay(config)._run(task_status)
