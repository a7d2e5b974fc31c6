"""WebSocket tunnel addressing: paths, header names, subprotocol and URL builders.

The relay and both clients import these names, so the wire vocabulary of the tunnel service is
defined once (docs/protocol.md section 7). Deployed browsers write tunnel and routing ids in
upper-case hex; relays accept either case. ``base_url`` replaces ``wss://<tunnel-server domain>``
for a local relay such as ``ws://127.0.0.1:8080``.
"""

from __future__ import annotations

from fido2.utils import websafe_encode

from hybrid.errors import UsageError
from hybrid.wire import (
    CLIENT_PAYLOAD_HEADER,
    CONNECT_PATH_PREFIX,
    CONTACT_PATH_PREFIX,
    NEW_PATH_PREFIX,
    ROUTING_ID_HEADER,
    ROUTING_ID_LEN,
    SIGNAL_CONNECTION_HEADER,
    SUBPROTOCOL,
    TUNNEL_ID_LEN,
)

__all__ = [
    "CLIENT_PAYLOAD_HEADER",
    "CONNECT_PATH_PREFIX",
    "CONTACT_PATH_PREFIX",
    "NEW_PATH_PREFIX",
    "ROUTING_ID_HEADER",
    "ROUTING_ID_LEN",
    "SIGNAL_CONNECTION_HEADER",
    "SUBPROTOCOL",
    "TUNNEL_ID_LEN",
    "TunnelAddressError",
    "connect_url",
    "contact_url",
    "new_url",
]


class TunnelAddressError(UsageError):
    """A tunnel id, routing id or base URL cannot form a tunnel URL."""


def _base(domain_id: int | None, base_url: str | None) -> str:
    if base_url is not None:
        if not base_url.startswith(("ws://", "wss://")):
            raise TunnelAddressError(
                f"relay base URL must start with ws:// or wss://: {base_url!r}"
            )
        return base_url.rstrip("/")
    if domain_id is None:
        raise TunnelAddressError("need a tunnel-server domain id or a relay base URL")
    from hybrid.tunnel.domains import tunnel_domain

    return "wss://" + tunnel_domain(domain_id)


def _check_len(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes | bytearray):
        raise TunnelAddressError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != length:
        raise TunnelAddressError(f"{name} must be {length} bytes, got {len(value)}")


def new_url(tunnel_id: bytes, *, domain_id: int | None = None, base_url: str | None = None) -> str:
    """URL the phone opens to create a pending tunnel: ``/cable/new/<TUNNEL_ID>``."""
    _check_len("tunnel id", tunnel_id, TUNNEL_ID_LEN)
    return _base(domain_id, base_url) + NEW_PATH_PREFIX + tunnel_id.hex().upper()


def connect_url(
    routing_id: bytes,
    tunnel_id: bytes,
    *,
    domain_id: int | None = None,
    base_url: str | None = None,
) -> str:
    """URL the desktop opens to join a tunnel: ``/cable/connect/<ROUTING_ID>/<TUNNEL_ID>``."""
    _check_len("routing id", routing_id, ROUTING_ID_LEN)
    _check_len("tunnel id", tunnel_id, TUNNEL_ID_LEN)
    return (
        _base(domain_id, base_url)
        + CONNECT_PATH_PREFIX
        + routing_id.hex().upper()
        + "/"
        + tunnel_id.hex().upper()
    )


def contact_url(
    contact_id: bytes, *, domain_id: int | None = None, base_url: str | None = None
) -> str:
    """URL the desktop opens to wake a linked phone: ``/cable/contact/<base64url(contact id)>``."""
    if not isinstance(contact_id, bytes | bytearray) or not contact_id:
        raise TunnelAddressError("contact id must be non-empty bytes")
    encoded = websafe_encode(contact_id)
    return _base(domain_id, base_url) + CONTACT_PATH_PREFIX + encoded
