"""Relay configuration: every limit with its documented default, and validation.

The command line (``relay/__main__.py``) maps each field to a flag and an environment variable; the
operators' guide (``relay/README.md``) lists the same defaults.
"""

from __future__ import annotations

import ipaddress
import os
import select
from dataclasses import dataclass, field

from hybrid.wire import ROUTING_ID_LEN
from relay.errors import ConfigError

__all__ = ["ConfigError", "RelayConfig"]


#: The reference relay's defaults (docs/protocol.md section 14) unless noted.
DEFAULT_WAIT_TIMEOUT = 120.0
DEFAULT_TUNNEL_LIFETIME = 180.0
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024
DEFAULT_MAX_MESSAGES = 64
DEFAULT_PENDING_MESSAGES = 6
#: An authenticator has nothing to send before the handshake; what it may buffer is kept small,
#: per tunnel and in total on the node (issue 12: 1,000 tunnels held 422 MB with no byte cap).
DEFAULT_MAX_PENDING_BYTES = 4096
DEFAULT_MAX_PENDING_BYTES_TOTAL = 32 * 1024 * 1024
#: Memory one waiting tunnel costs the relay (measured: sockets, tasks, parser, bookkeeping),
#: before whatever its pending buffer holds; the default tunnel limit is sized from it.
WAITING_TUNNEL_BYTES = int(6.7 * 1024)
#: Share of the machine's memory (or of the cgroup's limit) the default tunnel limit may use.
TUNNEL_MEMORY_SHARE = 0.25
MIN_DEFAULT_MAX_TUNNELS = 1_000
MAX_DEFAULT_MAX_TUNNELS = 1_000_000
#: Waiting (unpaired) tunnels one client may hold, as a share of its connection limit, and one
#: /24 (IPv4) or /64 (IPv6) network, as a multiple of that.
WAITING_SHARE_OF_CONNECTIONS = 0.5
NETWORK_WAITING_MULTIPLE = 4
#: Near the tunnel limit (this share of it), tunnels that sent nothing wait at most this long.
PRESSURE_SHARE = 0.8
DEFAULT_PRESSURE_WAIT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_REQUEST_HEAD = 8 * 1024
DEFAULT_CLOSE_TIMEOUT = 1.0
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Routing ids keep at least this many random bits whatever the node prefix (issue 12): a client
#: who saw the QR code knows the tunnel id, and must not be able to guess the rest.
MIN_RANDOM_ROUTING_BITS = 16
#: Failed /cable/connect attempts: per client, then per tunnel id (burst, then per second). A
#: brute force of 16 random bits then takes hours, not the seconds a tunnel waits.
DEFAULT_CONNECT_FAILURE_BURST = 16
DEFAULT_CONNECT_FAILURE_RATE = 1.0
DEFAULT_TUNNEL_CONNECT_FAILURE_BURST = 32
DEFAULT_TUNNEL_CONNECT_FAILURE_RATE = 0.5


_DERIVED = (
    "max_tunnels",
    "max_connections_per_address",
    "max_waiting_per_address",
    "max_waiting_per_network",
)

#: Long enough for a balancer checking /healthz every 1-2 s to see a few 503s in a row.
DEFAULT_DRAIN_DELAY = 5.0
#: Well under common proxy idle timeouts (nginx 60 s, many cloud balancers 60 s).
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_RATE_BURST = 20


#: The values of ``RelayConfig.engine``.
ENGINES = ("auto", "reactor", "tasks")


def reactor_available() -> bool:
    """Whether this platform has what the reactor engine needs (Linux epoll)."""
    return hasattr(select, "epoll")


@dataclass
class RelayConfig:
    """Everything one relay instance needs; defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 0
    #: Fixed leading byte of every routing id (0 or 1 byte) naming this node behind a balancer.
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
    #: Bytes those messages may hold per tunnel, and over all tunnels of this node (over: 1008).
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    max_pending_bytes_total: int = DEFAULT_MAX_PENDING_BYTES_TOTAL
    #: Tunnels (waiting + paired) this node holds at once; /cable/new beyond it gets 503.
    #: None (the default) sizes it from memory (``default_max_tunnels``); see ``tunnel_limit``.
    max_tunnels: int | None = None
    #: Waiting tunnels per client (IPv4 address, IPv6 /64) and per /24 or /64; beyond: 429.
    #: None: half of ``max_connections_per_address``, and four times that per network.
    max_waiting_per_address: int | None = None
    max_waiting_per_network: int | None = None
    #: Seconds a tunnel that sent nothing may wait while the node is near ``max_tunnels``.
    pressure_wait_timeout: float = DEFAULT_PRESSURE_WAIT_TIMEOUT
    #: Open connections from one client IP address at once; beyond it gets 429. None (the
    #: default) fits it to the file descriptors at start (``relay.descriptors``).
    max_connections_per_address: int | None = None
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
    #: Failed /cable/connect attempts one client may make at once, then per second (429 beyond).
    connect_failure_burst: int = DEFAULT_CONNECT_FAILURE_BURST
    connect_failure_rate: float = DEFAULT_CONNECT_FAILURE_RATE
    #: The same per tunnel id, whoever tries (guessing from many addresses).
    tunnel_connect_failure_burst: int = DEFAULT_TUNNEL_CONNECT_FAILURE_BURST
    tunnel_connect_failure_rate: float = DEFAULT_TUNNEL_CONNECT_FAILURE_RATE
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
    #: How connections are served: "reactor" (one callback loop over a relay-owned epoll set,
    #: plain TCP on Linux only), "tasks" (one trio task per connection, every listener) or
    #: "auto" (the reactor where it applies, else tasks). Same behaviour either way.
    engine: str = "auto"

    #: The limits left to their defaults, which the relay may fit to its descriptors at start.
    derived: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.derived = frozenset(name for name in _DERIVED if getattr(self, name) is None)
        if self.max_tunnels is None:
            self.max_tunnels = default_max_tunnels(self.max_pending_bytes)
        if self.max_connections_per_address is None:
            self.max_connections_per_address = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
        self.resolve_waiting_limits()
        self.validate()

    def uses_reactor(self) -> bool:
        """Whether connections are served by the reactor (``relay.reactor``) rather than tasks."""
        if self.engine == "tasks":
            return False
        return reactor_available() and self.tls_cert is None and not self.proxy_protocol

    def fit_to_descriptors(self, connections: int, per_address: int) -> None:
        """Fit the limits left to their defaults to ``connections`` sockets at once.

        ``per_address`` becomes the per-address connection limit, the waiting quotas follow it,
        and ``max_tunnels`` is at most ``connections`` (a waiting tunnel holds one socket).
        """
        if "max_connections_per_address" in self.derived:
            self.max_connections_per_address = per_address
        if "max_tunnels" in self.derived:
            self.max_tunnels = max(1, min(self.tunnel_limit, connections))
        if "max_waiting_per_address" in self.derived:
            self.max_waiting_per_address = None
        if "max_waiting_per_network" in self.derived:
            self.max_waiting_per_network = None
        self.resolve_waiting_limits()

    def validate(self) -> None:
        """Raise ConfigError for a value the relay cannot run with."""
        max_prefix = ROUTING_ID_LEN - MIN_RANDOM_ROUTING_BITS // 8
        if not isinstance(self.node_prefix, bytes) or len(self.node_prefix) > max_prefix:
            raise ConfigError(
                f"node prefix must be 0 to {max_prefix} bytes (0 to {2 * max_prefix} hex digits): "
                f"a routing id keeps at least {MIN_RANDOM_ROUTING_BITS} random bits"
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
            "max_waiting_per_address",
            "max_waiting_per_network",
            "pressure_wait_timeout",
            "connect_failure_burst",
            "connect_failure_rate",
            "tunnel_connect_failure_burst",
            "tunnel_connect_failure_rate",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        for name in (
            "max_pending_messages",
            "max_pending_bytes",
            "max_pending_bytes_total",
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
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "reactor" and not reactor_available():
            raise ConfigError(
                "engine 'reactor' needs Linux epoll (select.epoll); use 'auto' or 'tasks'"
            )
        if self.engine == "reactor" and (self.tls_cert is not None or self.proxy_protocol):
            raise ConfigError(
                "engine 'reactor' serves plain TCP without --proxy-protocol only; "
                "use 'auto' (then TLS and PROXY protocol run on 'tasks') or 'tasks'"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and a key")

    def resolve_waiting_limits(self) -> None:
        """Derive the waiting quotas left unset from the per-address connection limit."""
        if self.max_waiting_per_address is None:
            derived = int(self.address_limit * WAITING_SHARE_OF_CONNECTIONS)
            self.max_waiting_per_address = max(1, derived)
        if self.max_waiting_per_network is None:
            self.max_waiting_per_network = self.max_waiting_per_address * NETWORK_WAITING_MULTIPLE

    @property
    def address_limit(self) -> int:
        """``max_connections_per_address`` as resolved (always a number)."""
        assert self.max_connections_per_address is not None
        return self.max_connections_per_address

    @property
    def tunnel_limit(self) -> int:
        """``max_tunnels`` as resolved at construction (always a number)."""
        assert self.max_tunnels is not None
        return self.max_tunnels

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


def memory_bytes() -> int:
    """The memory this process may use: physical memory, or a smaller cgroup (v2 or v1) limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 1 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit:
                text = limit.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_max_tunnels(max_pending_bytes: int, memory: int | None = None) -> int:
    """Tunnels that fit in ``TUNNEL_MEMORY_SHARE`` of memory when each waits with a full buffer."""
    available = memory_bytes() if memory is None else memory
    per_tunnel = WAITING_TUNNEL_BYTES + max_pending_bytes
    fitting = int(available * TUNNEL_MEMORY_SHARE) // per_tunnel
    return max(MIN_DEFAULT_MAX_TUNNELS, min(MAX_DEFAULT_MAX_TUNNELS, fitting))
