"""File descriptors: how many sockets this relay can hold, and what it keeps for honest clients.

Every connection costs a descriptor, and an ``accept`` that finds none left (``EMFILE``) leaves the
connection in the backlog, honest or not: at the common soft limit of 1,024, 1,100 silent sockets
from one address kept a relay in an ``EMFILE`` loop where no honest pairing got through (issue 12,
point 8). So the relay budgets descriptors itself, from the soft ``RLIMIT_NOFILE`` it runs with:

* ``connections``: sockets it holds at once, the limit minus what is open at start and a few spare
  (a connection beyond it is answered 503 at once and closed, so ``accept`` never runs dry);
* ``reserve``: the last part of that budget goes only to clients holding fewer than
  ``HONEST_HOLD`` connections (a phone or a desktop holds one), so neither one address nor many
  heavy ones can take the last descriptors;
* the per-address default (``per_address_default``): a quarter of what is left outside the
  reserve, at most the historical 1,024, so four abusive addresses are needed to reach the reserve.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

#: Descriptors kept free for transient needs: a socket being refused, TLS files, log rotation.
SPARE = 16
#: Listener sockets and the like opened after the budget is measured.
STARTUP_EXTRA = 8
#: A client with fewer connections than this may use the reserve.
HONEST_HOLD = 8
MAX_PER_ADDRESS_DEFAULT = 1024
MIN_PER_ADDRESS_DEFAULT = 8


def soft_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process (a large number if unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def open_descriptors() -> int:
    """Descriptors open in this process now (Linux ``/proc``; a guess elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 32


@dataclass(frozen=True)
class DescriptorBudget:
    """The relay's descriptor budget (see the module docstring)."""

    soft_limit: int
    in_use: int
    connections: int
    reserve: int

    @classmethod
    def measure(cls) -> DescriptorBudget:
        return cls.for_limit(soft_limit(), open_descriptors() + STARTUP_EXTRA)

    @classmethod
    def for_limit(cls, limit: int, in_use: int) -> DescriptorBudget:
        connections = max(1, limit - in_use - SPARE)
        reserve = max(min(16, connections // 2), connections // 8)
        return cls(limit, in_use, connections, reserve)

    def per_address_default(self) -> int:
        share = (self.connections - self.reserve) // 4
        return max(MIN_PER_ADDRESS_DEFAULT, min(MAX_PER_ADDRESS_DEFAULT, share))
