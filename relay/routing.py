"""Routing ids: the 3-byte label a node hands out at ``/cable/new`` (docs/protocol.md section 14).

A routing id is this node's fixed prefix (0 or 1 byte, ``--node-prefix``) followed by random bytes
from the operating system (``os.urandom``): at least 16 random bits, so that knowing the tunnel id
(from the QR code) is not enough to join a tunnel by guessing (``relay.guard`` limits the
guesses). A load balancer in front of several nodes routes ``/cable/connect/<rid>/...`` by the
prefix alone, and a node pairs by tunnel id locally. Ids are unpredictable and never shared by two
live tunnels: a draw that collides is re-drawn. The random source is injectable for tests.

The default source, ``pooled_random``, reads ``os.urandom`` a page at a time and hands it out in
slices: one ``getrandom`` per 1,365 tunnels instead of one per tunnel. A forked child starts with
an empty pool, so two processes never hand out the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from typing import Final

from hybrid.wire import ROUTING_ID_LEN
from relay.errors import RoutingIdsExhausted

#: Draws before giving up; only reachable when almost every id under the prefix is live.
MAX_DRAWS: Final = 32


_POOL_SIZE: Final = 4096
_pool = b""
_taken = 0


def pooled_random(n: int) -> bytes:
    """``n`` bytes from ``os.urandom``, read ``_POOL_SIZE`` bytes at a time (``n`` at most that)."""
    global _pool, _taken
    start = _taken
    end = start + n
    if end > len(_pool):
        _pool = os.urandom(max(_POOL_SIZE, n))
        start, end = 0, n
    _taken = end
    return _pool[start:end]


def _forget_pool() -> None:
    global _pool, _taken
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def routing_id_hex(routing_id: bytes) -> str:
    """The wire form: 6 upper-case hex digits, as deployed browsers write it."""
    return routing_id.hex().upper()


class RoutingIdAllocator:
    """Draws fresh routing ids under a node prefix, avoiding the ids in ``live``."""

    def __init__(
        self, node_prefix: bytes = b"", randbytes: Callable[[int], bytes] = pooled_random
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
