"""The real client address behind proxies: PROXY protocol v1/v2, X-Forwarded-For, trusted peers.

Behind a load balancer the relay's TCP peer is the balancer, so per-address limits and the
``client`` log field would describe the balancer. Two ways carry the real client:

* the PROXY protocol (HAProxy ``send-proxy`` / ``send-proxy-v2``, nginx stream
  ``proxy_protocol on``): a header before the first HTTP byte, text (v1) or binary (v2), parsed
  here sans-IO by ``parse_proxy_header``;
* ``X-Forwarded-For`` (nginx ``proxy_set_header``, HAProxy ``option forwardfor``), a request
  header: ``forwarded_client`` takes the right-most address not itself a trusted proxy.

Both are believed only from peers in ``--trusted-proxies``: anyone could write them, and believing
an untrusted one would let a client pick the address its limits are counted against. A PROXY
header or ``X-Forwarded-For`` from any other peer is refused.

Specification: "The PROXY protocol, versions 1 & 2" (haproxy.org, doc/proxy-protocol.txt).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, NoReturn

import trio

from relay.errors import ForwardedError, ProxyHeaderError
from relay.rawio import raw_socket, receive_some

V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line allowed by the specification, CRLF included.
V1_MAX: Final = 107
#: v2 address blocks longer than this are refused (TLVs are allowed but bounded).
V2_MAX_BODY: Final = 2048
_V2_HEAD = struct.Struct("!12sBBH")
_V4_ADDRESSES = struct.Struct("!4s4sHH")
_V6_ADDRESSES = struct.Struct("!16s16sHH")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header: ``source`` is the client address, or None when the proxy speaks
    for itself (v2 ``LOCAL``, v1 ``UNKNOWN``: health checks); ``length`` bytes were consumed."""

    source: str | None
    length: int


def _address(text: str) -> str:
    try:
        return str(_normalize(ipaddress.ip_address(text)))
    except ValueError:
        raise ProxyHeaderError(f"PROXY header: {text[:60]!r} is not an IP address") from None


def _normalize(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) count as the IPv4 address they carry."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError(f"PROXY header: bad port {text[:10]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY header: port {port} out of range")
    return port


def might_be_proxy_header(data: bytes) -> bool:
    """Whether ``data`` (the first bytes of a connection) starts like a PROXY header."""
    n = min(len(data), len(V2_SIGNATURE))
    return data[:n] == V2_SIGNATURE[:n] or data[: min(n, 6)] == V1_PREFIX[: min(n, 6)]


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY v1 or v2 header at the start of ``data``; None if more bytes are needed.

    Raises ``ProxyHeaderError`` naming what is wrong.
    """
    if data[:1] == b"P":
        if len(data) < len(V1_PREFIX):
            return None if V1_PREFIX.startswith(data) else _bad_start()
        if not data.startswith(V1_PREFIX):
            _bad_start()
        newline = data.find(b"\n", 0, V1_MAX)
        if newline < 0:
            if len(data) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 header: no CRLF within 107 bytes")
            return None
        if data[newline - 1] != 13:
            raise ProxyHeaderError("PROXY v1 header: the line must end with CRLF")
        return ProxyHeader(_parse_v1(data[len(V1_PREFIX) : newline - 1]), newline + 1)
    if len(data) < _V2_HEAD.size:
        return None if V2_SIGNATURE.startswith(data[:12]) else _bad_start()
    signature, version_command, family, length = _V2_HEAD.unpack_from(data)
    if signature != V2_SIGNATURE:
        _bad_start()
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header: version {version_command >> 4}, expected 2")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 header: unknown command {command}")
    if length > V2_MAX_BODY:
        raise ProxyHeaderError(f"PROXY v2 header: {length} bytes of addresses is too long")
    total = _V2_HEAD.size + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the proxy's own connection (health check); addresses ignored
        return ProxyHeader(None, total)
    body = data[_V2_HEAD.size : total]
    if family == 0x11:  # TCP over IPv4
        if length < _V4_ADDRESSES.size:
            raise ProxyHeaderError("PROXY v2 header: IPv4 address block too short")
        source = ipaddress.IPv4Address(_V4_ADDRESSES.unpack_from(body)[0])
        return ProxyHeader(str(source), total)
    if family == 0x21:  # TCP over IPv6
        if length < _V6_ADDRESSES.size:
            raise ProxyHeaderError("PROXY v2 header: IPv6 address block too short")
        source6 = ipaddress.IPv6Address(_V6_ADDRESSES.unpack_from(body)[0])
        return ProxyHeader(str(_normalize(source6)), total)
    if family == 0x00:  # UNSPEC: the proxy does not know; treat like LOCAL
        return ProxyHeader(None, total)
    raise ProxyHeaderError(f"PROXY v2 header: unsupported address family 0x{family:02x}")


def _bad_start() -> NoReturn:
    raise ProxyHeaderError("expected a PROXY protocol header (v1 or v2) from this proxy")


def _parse_v1(line: bytes) -> str | None:
    parts = line.split(b" ")
    if parts[0] == b"UNKNOWN":
        return None
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(
            "PROXY v1 header: expected 'TCP4|TCP6 <source> <destination> <sport> <dport>'"
        )
    try:
        source_text, dest_text = parts[1].decode("ascii"), parts[2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header: addresses are not ASCII") from None
    version = 4 if parts[0] == b"TCP4" else 6
    for text in (source_text, dest_text):
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            raise ProxyHeaderError(f"PROXY v1 header: {text[:60]!r} is not an address") from None
        if parsed.version != version:
            raise ProxyHeaderError(f"PROXY v1 header: {text!r} is not an IPv{version} address")
    _port(parts[3])
    _port(parts[4])
    return _address(source_text)


async def read_start(stream: trio.abc.Stream) -> bytes:
    """The first bytes of a connection: enough to tell a PROXY header from an HTTP request."""
    raw = raw_socket(stream)
    buf = b""
    while True:
        data = await receive_some(stream, raw, 4096, yield_when_ready=False)
        if not data:
            return buf
        buf += data
        if len(buf) >= len(V2_SIGNATURE) or not might_be_proxy_header(buf):
            return buf


async def read_proxy_header(stream: trio.abc.Stream) -> tuple[str | None, bytes]:
    """Read a PROXY header off ``stream``: (client address or None, the bytes after it).

    Raises ``ProxyHeaderError`` for a malformed or missing header, ``EOFError`` if the peer left.
    """
    raw = raw_socket(stream)
    buf = b""
    while True:
        data = await receive_some(stream, raw, 4096, yield_when_ready=False)
        if not data:
            raise EOFError("connection closed before a whole PROXY header")
        buf += data
        # parse_proxy_header bounds the header itself (107 bytes for v1, 2 KiB for v2).
        header = parse_proxy_header(buf)
        if header is not None:
            return header.source, buf[header.length :]


class TrustedProxies:
    """The peers whose PROXY headers and X-Forwarded-For are believed (``--trusted-proxies``)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: str) -> bool:
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            parsed = _normalize(ipaddress.ip_address(address))
        except ValueError:
            trusted = False
        else:
            trusted = any(parsed in network for network in self.networks)
        if len(self._cache) >= 4096:
            # Bounded: untrusted clients must not grow it without limit.
            self._cache.clear()
        self._cache[address] = trusted
        return trusted


def forwarded_client(values: list[bytes], peer: str, trusted: TrustedProxies) -> str:
    """The client address from ``X-Forwarded-For`` values sent by the trusted ``peer``.

    Walks the chain from the right (the entry the peer itself appended) and returns the first
    address that is not a trusted proxy; a chain of trusted proxies only yields its left end.
    """
    chain: list[str] = []
    for value in values:
        for item in value.split(b","):
            text = item.strip().decode("latin-1")
            if not text:
                raise ForwardedError("X-Forwarded-For has an empty entry")
            chain.append(text)
    client = peer
    for text in reversed(chain):
        try:
            client = str(_normalize(ipaddress.ip_address(text)))
        except ValueError:
            raise ForwardedError(
                f"X-Forwarded-For entry {text[:60]!r} is not an IP address"
            ) from None
        if client not in trusted:
            break
    return client
