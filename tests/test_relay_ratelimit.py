"""Rate limiting per client address: the token bucket itself, and 429 + Retry-After on sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
from relay_helpers import (
    connect_url,
    expect_rejected,
    new_tunnel_id,
    new_url,
    open_ws,
    raw_http,
    routing_id_of,
    running_relay,
    upgrade_request,
)

from relay.ratelimit import RateLimiter


def test_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(0.5)
    assert limiter.take("b", 0.0) == 0.0  # each key has its own bucket
    assert limiter.take("a", 0.25) == pytest.approx(0.25)  # refilled half a token
    assert limiter.take("a", 0.5) == 0.0
    assert limiter.take("a", 0.5) == pytest.approx(0.5)
    # Refill stops at the burst size.
    assert [limiter.take("a", 100.0) for _ in range(4)][-1] == pytest.approx(0.5)
    assert limiter.retry_after(0.01) == "1" and limiter.retry_after(2.3) == "3"


def test_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", now=0.0)
        assert len(limiter) <= 100
    # A client that was limited is still limited right after pruning kept it.
    limiter.take("victim", 0.0)
    assert limiter.take("victim", 0.0) > 0


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


async def test_rate_limited_client_gets_429_with_retry_after():
    async with running_relay(rate_limit=1, rate_burst=2) as relay:
        statuses = []
        retry = []
        for _ in range(3):
            response = await raw_http(relay.port, upgrade_request(f"/cable/new/{new_tunnel_id()}"))
            statuses.append(response.status)
            retry.append(response.headers.get("retry-after"))
        assert statuses == [101, 101, 429]
        assert retry[2] == "1"
        assert relay.stats.refusals["rate_limited"] == 1
        # /cable/connect has its own bucket: the phone's retries do not block its desktop.
        tunnel_id = new_tunnel_id()
        await trio.sleep(1.05)
        async with open_ws(new_url(relay, tunnel_id)) as authenticator:
            routing_id = routing_id_of(authenticator)
            async with open_ws(connect_url(relay, routing_id, tunnel_id)) as initiator:
                await initiator.send_message(b"paired")
                assert await authenticator.get_message() == b"paired"
            for _ in range(2):
                await expect_rejected(connect_url(relay, routing_id, new_tunnel_id()))
            rejected = await expect_rejected(connect_url(relay, routing_id, new_tunnel_id()))
            assert rejected.status_code == 429
        # Plain endpoints are never limited.
        for _ in range(5):
            health = await raw_http(relay.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert health.status == 200


async def test_rate_limit_counts_the_real_client_behind_a_trusted_proxy():
    async with running_relay(rate_limit=0.5, rate_burst=1, trusted_proxies=("127.0.0.1",)) as relay:
        statuses = []
        for client in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
            extra = f"X-Forwarded-For: {client}\r\n"
            response = await raw_http(
                relay.port, upgrade_request(f"/cable/new/{new_tunnel_id()}", extra=extra)
            )
            statuses.append(response.status)
        assert statuses == [101, 101, 429]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate-limit", "-1"], "rate-limit must not be negative"),
        (["--rate-burst", "0"], "rate-burst"),
    ],
)
def test_rate_options_are_validated(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", *argv], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    assert message in result.stderr
