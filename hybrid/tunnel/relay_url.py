"""Checking a relay base URL (``--relay``, ``relay_url=``) before anything uses it.

A relay base URL is ``ws://host[:port]`` or ``wss://host[:port]``: the tunnel paths
(``/cable/new/...``, ``/cable/connect/...``) are appended to it, so a path, query or fragment can
only be a mistake, as can another scheme (``http://`` waits for an advert deadline and then fails
obscurely) or a port outside 1..65535.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hybrid.errors import HybridError

MAX_PORT = 65535


class RelayUrlError(HybridError, ValueError):
    """A relay base URL that cannot work: wrong scheme, a path, no host, a bad port."""


def validate_relay_url(text: str) -> str:
    """The relay base URL without a trailing slash; ``RelayUrlError`` says why it is unusable."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port  # raises ValueError when out of 0..65535 or not a number
    except ValueError:
        raise RelayUrlError(
            f"relay URL {text!r}: the port must be a number in 1..{MAX_PORT}"
        ) from None
    if parts.scheme not in ("ws", "wss"):
        raise RelayUrlError(
            f"relay URL {text!r} must start with ws:// or wss:// (a relay is a WebSocket "
            "server); it has " + (f"{parts.scheme}://" if parts.scheme else "no scheme")
        )
    if not parts.hostname:
        raise RelayUrlError(f"relay URL {text!r} names no host")
    if port is not None and not 1 <= port <= MAX_PORT:
        raise RelayUrlError(f"relay URL {text!r}: port {port} is outside 1..{MAX_PORT}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RelayUrlError(
            f"relay URL {text!r} must be a base URL (scheme, host, port) without a path: "
            "the tunnel paths /cable/new/... and /cable/connect/... are added to it"
        )
    if parts.username or parts.password:
        raise RelayUrlError(f"relay URL {text!r} must not carry a user name or password")
    return f"{parts.scheme}://{parts.netloc}"
