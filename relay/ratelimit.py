"""Token buckets keyed by client (address, network, ...): a reusable rate limiter, sans-IO.

``RateLimiter(rate, burst)`` gives each key a bucket of ``burst`` tokens refilled at ``rate``
tokens per second; ``take(key, now)`` spends one and returns 0.0, or, when the bucket is empty,
returns how many seconds until a token is back (what ``Retry-After`` should say) and spends
nothing. Time comes in as an argument (``trio.current_time()`` in the relay), so tests and other
callers drive it directly. Buckets are refilled lazily on use; memory is bounded by ``max_keys``:
full buckets carry no information and are dropped first, then the oldest ones.
"""

from __future__ import annotations

import math


class RateLimiter:
    """Per-key token buckets: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        # key -> (tokens left, time they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens of ``key``'s bucket: 0.0 if done, else seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = self.burst
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
        else:
            tokens, then = bucket
            tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate

    def retry_after(self, wait: float) -> str:
        """``wait`` seconds as a ``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        for key, (tokens, then) in list(buckets.items()):
            if tokens + (now - then) * self.rate >= self.burst:
                del buckets[key]
        if len(buckets) >= self.max_keys:
            # Every bucket is in use (many clients at once): forget the oldest half.
            for key in list(buckets)[: len(buckets) // 2]:
                del buckets[key]
