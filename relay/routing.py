"""Routing ids: the 3-byte label a node hands out at ``/cable/new`` (docs/protocol.md section 14).

A routing id is this node's fixed prefix (0 or 1 byte, ``--node-prefix``) followed by random
bytes from ``secrets``: at least 16 random bits, so that knowing the tunnel id (from the QR code)
is not enough to join a tunnel by guessing (``relay.guard`` limits the guesses). A load balancer
in front of several nodes routes ``/cable/connect/<rid>/...`` by the prefix alone, and a node
pairs by tunnel id locally. Ids are
unpredictable and never shared by two live tunnels: a draw that collides is re-drawn. The random
source is injectable for tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container

from hybrid.wire import ROUTING_ID_LEN
from relay.errors import RoutingIdsExhausted

#: Draws before giving up; only reachable when almost every id under the prefix is live.
MAX_DRAWS = 32


def routing_id_hex(routing_id: bytes) -> str:
    """The wire form: 6 upper-case hex digits, as deployed browsers write it."""
    return routing_id.hex().upper()


class RoutingIdAllocator:
    """Draws fresh routing ids under a node prefix, avoiding the ids in ``live``."""

    def __init__(
        self, node_prefix: bytes = b"", randbytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        if len(node_prefix) >= ROUTING_ID_LEN:
            raise ValueError(f"node prefix must be shorter than {ROUTING_ID_LEN} bytes")
        self.node_prefix = node_prefix
        self._random_len = ROUTING_ID_LEN - len(node_prefix)
        self._randbytes = randbytes

    def belongs_here(self, routing_id: bytes) -> bool:
        """Whether ``routing_id`` could have been issued by this node."""
        return routing_id.startswith(self.node_prefix)

    def allocate(self, live: Container[bytes]) -> bytes:
        for _ in range(MAX_DRAWS):
            candidate = self.node_prefix + self._randbytes(self._random_len)
            if candidate not in live:
                return candidate
        raise RoutingIdsExhausted("no free routing id under this node's prefix")
