"""Guessing a routing id (issue 12, point 9), through real sockets against a real relay.

Whoever saw the QR code knows the tunnel id; the routing id is then the only secret of a waiting
tunnel. It keeps at least 16 random bits (a longer node prefix is refused), and failed
``/cable/connect`` attempts are budgeted per client and per tunnel id, so that a brute force takes
hours while a tunnel waits two minutes. The honest desktop, from another address, still pairs.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys

import pytest
import trio
from relay_helpers import (
    connect_url,
    new_tunnel_id,
    new_url,
    open_ws,
    parse_response,
    routing_id_of,
    running_relay,
    upgrade_request,
)

from relay.config import ConfigError, RelayConfig

ROUTING_SPACE = 2**16  # random ids under a 1-byte prefix


async def attempt(port: int, path: str, source: str) -> int:
    """One /cable/connect from ``source``; the HTTP status (101 closes at once)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
        async with stream:
            await stream.send_all(upgrade_request(path))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return parse_response(data).status


def wrong_guess(prefix: str, real: str) -> str:
    while True:
        guess = prefix + secrets.token_hex(2).upper()
        if guess != real:
            return guess


@pytest.mark.parametrize("prefix", [b"\x0a\x0b", b"\x01\x02\x03"])
def test_a_node_prefix_leaving_fewer_than_16_random_bits_is_refused(prefix) -> None:
    with pytest.raises(ConfigError, match="16 random bits"):
        RelayConfig(node_prefix=prefix)
    done = subprocess.run(
        [sys.executable, "-m", "relay", "--node-prefix", prefix.hex()],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "16 random bits" in done.stderr, done.stderr


async def test_guessing_from_one_address_is_limited_logged_and_the_desktop_still_pairs(
    caplog,
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_relay(node_prefix=b"\x0a") as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            real = routing_id_of(authenticator)
            statuses: list[int] = []
            started = trio.current_time()
            while trio.current_time() - started < 2.0:
                path = f"/cable/connect/{wrong_guess('0A', real)}/{tid}"
                statuses.append(await attempt(relay.port, path, "127.0.0.2"))
            elapsed = trio.current_time() - started
            evaluated = statuses.count(404)
            limited = statuses.count(429)
            config = relay.config
            assert set(statuses) <= {404, 429}
            assert evaluated <= config.connect_failure_burst + config.connect_failure_rate * elapsed
            assert limited > 0
            # Even the right routing id is not looked up while the guesser is over budget.
            assert await attempt(relay.port, f"/cable/connect/{real}/{tid}", "127.0.0.2") == 429
            expected_guesses = ROUTING_SPACE / 2
            brute_force_s = expected_guesses / config.connect_failure_rate
            assert brute_force_s > 100 * config.wait_timeout
            print(
                f"\nguessing from one address: {len(statuses)} attempts in {elapsed:.1f} s, "
                f"{evaluated} looked up, {limited} refused with 429; expected brute force "
                f"{brute_force_s / 3600:.1f} h (wait deadline {config.wait_timeout:g} s)"
            )
            # The honest desktop (another address) joins with the right routing id.
            async with open_ws(connect_url(relay, real, tid)) as initiator:
                await initiator.send_message(b"hello")
                assert await authenticator.get_message() == b"hello"
    events = [r.getMessage() for r in caplog.records]
    assert any("connect_guessing" in text for text in events), events


async def test_guessing_from_many_addresses_is_limited_per_tunnel_id() -> None:
    async with running_relay(node_prefix=b"\x0a", connect_failure_burst=4) as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            real = routing_id_of(authenticator)
            statuses: list[int] = []
            started = trio.current_time()
            for host in range(2, 40):  # 38 addresses, each within its own budget
                for _ in range(relay.config.connect_failure_burst):
                    path = f"/cable/connect/{wrong_guess('0A', real)}/{tid}"
                    statuses.append(await attempt(relay.port, path, f"127.0.1.{host}"))
            elapsed = trio.current_time() - started
            config = relay.config
            evaluated = statuses.count(404)
            assert evaluated <= (
                config.tunnel_connect_failure_burst + config.tunnel_connect_failure_rate * elapsed
            )
            assert statuses.count(429) > 0
            brute_force_s = (ROUTING_SPACE / 2) / config.tunnel_connect_failure_rate
            assert brute_force_s > 100 * config.wait_timeout
            del authenticator
