"""Relay configuration: every limit with its documented default, and validation.

The command line (``relay/__main__.py``) maps each field to a flag and an environment variable; the
operators' guide (``relay/README.md``) lists the same defaults.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hybrid.wire import ROUTING_ID_LEN
from relay.errors import ConfigError

__all__ = ["ConfigError", "RelayConfig"]


#: The reference relay's defaults (protocol notes section 14) unless noted.
DEFAULT_WAIT_TIMEOUT = 120.0
DEFAULT_TUNNEL_LIFETIME = 180.0
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024
DEFAULT_MAX_MESSAGES = 64
DEFAULT_PENDING_MESSAGES = 6
DEFAULT_MAX_TUNNELS = 10_000
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_REQUEST_HEAD = 8 * 1024
DEFAULT_CLOSE_TIMEOUT = 1.0
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Long enough for a balancer checking /healthz every 1-2 s to see a few 503s in a row.
DEFAULT_DRAIN_DELAY = 5.0
#: Well under common proxy idle timeouts (nginx 60 s, many cloud balancers 60 s).
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_RATE_BURST = 20


@dataclass
class RelayConfig:
    """Everything one relay instance needs; defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 0
    #: Fixed leading bytes of every routing id (0..2 bytes) naming this node behind a balancer.
    node_prefix: bytes = b""
    #: Seconds a /cable/new socket waits for its initiator before it is closed (1008).
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    #: Seconds a tunnel may live from the authenticator's connect, paired or not (1008).
    tunnel_lifetime: float = DEFAULT_TUNNEL_LIFETIME
    #: Largest single WebSocket message in bytes; larger closes the tunnel (1009).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Messages each peer may send in one tunnel; one more closes the tunnel (1008).
    max_messages: int = DEFAULT_MAX_MESSAGES
    #: Messages an authenticator may send before its initiator joins (buffered, then forwarded).
    max_pending_messages: int = DEFAULT_PENDING_MESSAGES
    #: Tunnels (waiting + paired) this node holds at once; /cable/new beyond it gets 503.
    max_tunnels: int = DEFAULT_MAX_TUNNELS
    #: Open connections from one client IP address at once; beyond it gets 429.
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    #: Seconds a client has from TCP accept to a complete HTTP request (and TLS handshake).
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: Largest HTTP request head in bytes; larger gets 431.
    max_request_head: int = DEFAULT_MAX_REQUEST_HEAD
    #: Seconds to wait for a peer's close frame after the relay sends its own.
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    #: Seconds live tunnels get to finish after SIGTERM/SIGINT before they are closed (1001).
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: Seconds after SIGTERM during which the listener stays open and /healthz answers 503, so a
    #: load balancer takes the node out before it stops accepting.
    drain_delay: float = DEFAULT_DRAIN_DELAY
    #: When non-empty, requests whose Origin header is present and not listed get 403.
    allowed_origins: tuple[str, ...] = ()
    #: Seconds between the relay's WebSocket pings on each tunnel socket; a peer that has not
    #: answered the previous ping by the next one is closed (ping_timeout). 0 turns pings off.
    ping_interval: float = DEFAULT_PING_INTERVAL
    #: /cable/new and /cable/connect requests per second per client address, each endpoint with
    #: its own token bucket; beyond it 429 with Retry-After. 0 turns rate limiting off.
    rate_limit: float = 0.0
    #: Requests a client address may make at once before rate_limit applies (bucket size).
    rate_burst: int = DEFAULT_RATE_BURST
    #: Addresses or networks (CIDR) of proxies whose PROXY header and X-Forwarded-For are
    #: believed; those headers from any other peer are refused.
    trusted_proxies: tuple[str, ...] = ()
    #: Expect a PROXY protocol v1/v2 header on every connection from a trusted proxy.
    proxy_protocol: bool = False
    #: HOST:PORT of a separate listener for /metrics and /healthz (then /metrics is not served
    #: on the public port). None: everything on the public port.
    admin: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a value the relay cannot run with."""
        if not isinstance(self.node_prefix, bytes) or len(self.node_prefix) >= ROUTING_ID_LEN:
            raise ConfigError(
                f"node prefix must be 0 to {ROUTING_ID_LEN - 1} bytes "
                f"(0 to {2 * (ROUTING_ID_LEN - 1)} hex digits)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        positive = (
            "wait_timeout",
            "tunnel_lifetime",
            "max_message_size",
            "max_messages",
            "max_tunnels",
            "max_connections_per_address",
            "handshake_timeout",
            "max_request_head",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        for name in (
            "max_pending_messages",
            "close_timeout",
            "shutdown_grace",
            "drain_delay",
            "ping_interval",
            "rate_limit",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must not be negative")
        if self.rate_burst < 1:
            raise ConfigError("rate-burst must be at least 1")
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"trusted-proxies: {network!r} is not an IP address or network (CIDR)"
                ) from None
        if self.proxy_protocol and not self.trusted_proxies:
            raise ConfigError("proxy-protocol needs --trusted-proxies (whose headers to believe)")
        if self.admin is not None:
            self.admin_address()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and a key")

    def admin_address(self) -> tuple[str, int]:
        """``admin`` as (host, port)."""
        host, sep, port = (self.admin or "").rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"admin: expected HOST:PORT, got {self.admin!r}")
        return host, int(port)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
