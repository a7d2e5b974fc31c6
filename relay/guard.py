"""Per-client budgets that keep one client (or one network) from spending what others need.

Three things live here, all pure bookkeeping with an injectable clock:

* ``client_key`` / ``network_key``: what counts as "one client" and "one network". An IPv4 address
  is one client and its /24 one network; an IPv6 client trivially holds a whole /64, so its /64 is
  both (RFC 6177 assigns at least a /64 per site).
* ``FailureBudget``: a token bucket of *failures* per key (``burst`` at once, then ``rate`` per
  second). The relay uses it for failed ``/cable/connect`` attempts per client and per tunnel id,
  so that guessing a routing id (at least 16 random bits) takes hours instead of the seconds a
  waiting tunnel lives. Honest clients do not fail, so they never notice it.
* ``Quota``: concurrent holdings per key (waiting tunnels per client and per network).

Memory is bounded: a budget forgets keys whose bucket is full again, and never holds more than
``max_keys`` (dropping the oldest).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import trio

IPV4_NETWORK_PREFIX: Final = 24
IPV6_CLIENT_PREFIX: Final = 64


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


#: Addresses already keyed: parsing with ``ipaddress`` costs more than the rest of a pairing's
#: bookkeeping, and the same clients come back. Emptied when full, so it stays bounded.
_KEYS: Final[dict[str, tuple[str, str]]] = {}
_KEYS_MAX: Final = 65536


def client_key(address: str) -> str:
    """One client: an IPv4 address, or an IPv6 /64."""
    keys = _KEYS.get(address)
    if keys is None:
        keys = _remember(address)
    return keys[0]


def network_key(address: str) -> str:
    """One network: an IPv4 /24, or an IPv6 /64."""
    keys = _KEYS.get(address)
    if keys is None:
        keys = _remember(address)
    return keys[1]


def _remember(address: str) -> tuple[str, str]:
    """Both keys of ``address``, from one parse of it."""
    if len(_KEYS) >= _KEYS_MAX:
        _KEYS.clear()
    ip = _ip(address)
    if ip is None:
        keys = (address, address)
    elif ip.version == 4:
        keys = (str(ip), str(ipaddress.ip_network(f"{ip}/{IPV4_NETWORK_PREFIX}", strict=False)))
    else:
        # An IPv6 client holds its whole /64: that is both the client and its network.
        network = str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
        keys = (network, network)
    _KEYS[address] = keys
    return keys


class FailureBudget:
    """Failures allowed per key: ``burst`` at once, refilled at ``rate`` per second."""

    def __init__(
        self,
        burst: float,
        rate: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.burst = float(burst)
        self.rate = float(rate)
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, time of last update); insertion order approximates age.
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: object, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        tokens, then = entry
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= self.burst:
            del self._buckets[key]  # full again: nothing to remember
        return tokens

    def exhausted(self, key: object) -> bool:
        """Whether ``key`` has no failure left to spend right now."""
        if key not in self._buckets:
            return self.burst < 1.0  # never failed (or refilled): no clock needed
        return self._tokens(key, self._clock()) < 1.0

    def failed(self, key: object) -> bool:
        """Spend one failure for ``key``; True if that emptied its budget (worth one log line)."""
        now = self._clock()
        tokens = max(0.0, self._tokens(key, now) - 1.0)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return tokens < 1.0

    def retry_after(self, key: object) -> int:
        """Whole seconds until ``key`` may fail once more."""
        missing = 1.0 - self._tokens(key, self._clock())
        return max(1, int(missing / self.rate + 0.999)) if missing > 0 else 0


class Quota:
    """Concurrent holdings per key, each key at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # A plain dict: a Counter answers a missing key through a Python __missing__.
        self._held: dict[str, int] = {}

    def full(self, key: str) -> bool:
        return self._held.get(key, 0) >= self.limit

    def take(self, key: str) -> None:
        held = self._held
        held[key] = held.get(key, 0) + 1

    def give_back(self, key: str) -> None:
        held = self._held
        left = held.get(key, 0) - 1
        if left <= 0:
            held.pop(key, None)
        else:
            held[key] = left

    def held(self, key: str) -> int:
        return self._held.get(key, 0)
