"""Each relay limit: over it, a clean refusal or close with a clear reason; others unharmed."""

from __future__ import annotations

import trio
from relay_helpers import (
    connect_url,
    expect_close,
    expect_rejected,
    new_tunnel_id,
    new_url,
    open_tunnel,
    open_ws,
    raw_http,
    routing_id_of,
    running_relay,
    upgrade_request,
    wait_until,
)


async def test_wait_deadline_closes_an_unpaired_authenticator_with_1008():
    async with running_relay(wait_timeout=0.3) as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
            start = trio.current_time()
            assert await expect_close(authenticator) == 1008
            assert 0.25 <= trio.current_time() - start < 2
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert (await expect_rejected(connect_url(relay, rid, tid))).status_code == 404
        assert relay.stats.tunnel_closes["wait_timeout"] == 1


async def test_paired_tunnel_is_not_closed_by_the_wait_deadline():
    async with running_relay(wait_timeout=0.2) as relay:
        async with open_tunnel(relay) as tunnel:
            await trio.sleep(0.4)
            await tunnel.initiator.send_message(b"alive")
            assert await tunnel.authenticator.get_message() == b"alive"


async def test_tunnel_lifetime_closes_both_sides_with_1008():
    async with running_relay(tunnel_lifetime=0.4) as relay:
        async with open_tunnel(relay) as tunnel:
            await tunnel.initiator.send_message(b"before")
            assert await tunnel.authenticator.get_message() == b"before"
            assert await expect_close(tunnel.authenticator) == 1008
            assert await expect_close(tunnel.initiator) == 1008
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert relay.stats.tunnel_closes["lifetime"] == 1


async def test_message_at_the_size_limit_passes_and_one_byte_more_closes_with_1009():
    async with running_relay(max_message_size=1000) as relay:
        async with open_tunnel(relay) as tunnel:
            await tunnel.initiator.send_message(b"a" * 1000)
            assert await tunnel.authenticator.get_message() == b"a" * 1000
            await tunnel.initiator.send_message(b"b" * 1001)
            assert await expect_close(tunnel.authenticator) == 1009
            assert await expect_close(tunnel.initiator) == 1009
        assert relay.stats.tunnel_closes["message_too_big"] == 1


async def test_huge_message_is_refused_without_being_buffered():
    async with running_relay(max_message_size=64 * 1024) as relay:
        async with open_tunnel(relay) as tunnel:
            await tunnel.authenticator.send_message(b"z" * (4 * 1024 * 1024))
            assert await expect_close(tunnel.initiator) == 1009
        await wait_until(lambda: relay.live_tunnels() == 0)


async def test_message_quota_per_peer_closes_with_1008():
    async with running_relay(max_messages=5) as relay:
        async with open_tunnel(relay) as tunnel:
            for i in range(5):
                await tunnel.initiator.send_message(bytes([i]))
                await tunnel.authenticator.send_message(bytes([i]))
            for i in range(5):
                assert await tunnel.authenticator.get_message() == bytes([i])
                assert await tunnel.initiator.get_message() == bytes([i])
            await tunnel.initiator.send_message(b"one too many")
            assert await expect_close(tunnel.authenticator) == 1008
            assert await expect_close(tunnel.initiator) == 1008
        assert relay.stats.tunnel_closes["message_quota"] == 1


async def test_pending_buffer_overflow_closes_with_1008():
    async with running_relay(max_pending_messages=2) as relay:
        async with open_ws(new_url(relay, new_tunnel_id())) as authenticator:
            for _ in range(3):
                await authenticator.send_message(b"early")
            assert await expect_close(authenticator) == 1008
        assert relay.stats.tunnel_closes["pending_overflow"] == 1


async def test_tunnel_limit_refuses_new_with_503_and_serves_existing():
    async with running_relay(max_tunnels=2) as relay:
        async with open_tunnel(relay) as first, open_tunnel(relay) as second:
            assert (await expect_rejected(new_url(relay, new_tunnel_id()))).status_code == 503
            await first.initiator.send_message(b"1")
            await second.authenticator.send_message(b"2")
            assert await first.authenticator.get_message() == b"1"
            assert await second.initiator.get_message() == b"2"
        await wait_until(lambda: relay.live_tunnels() == 0)
        async with open_tunnel(relay):
            pass
        assert relay.stats.refusals["tunnel_limit"] == 1


async def test_connections_per_address_limit_refuses_with_429():
    async with running_relay(max_connections_per_address=3) as relay:
        async with open_tunnel(relay) as tunnel:
            async with open_ws(new_url(relay, new_tunnel_id())):
                rejected = await expect_rejected(new_url(relay, new_tunnel_id()))
                assert rejected.status_code == 429
                health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                assert (await raw_http(relay.port, health)).status == 429
                await tunnel.initiator.send_message(b"unharmed")
                assert await tunnel.authenticator.get_message() == b"unharmed"
        await wait_until(lambda: relay.open_connections() == 0)
        assert (
            await raw_http(relay.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        ).status == 200
        assert relay.stats.refusals["address_limit"] == 2


async def test_origin_allow_list():
    async with running_relay(allowed_origins=("https://relay.example",)) as relay:
        path = f"/cable/new/{new_tunnel_id()}"
        bad = upgrade_request(path, extra="Origin: https://evil.example\r\n")
        assert (await raw_http(relay.port, bad)).status == 403
        good = upgrade_request(path, extra="Origin: https://relay.example\r\n")
        assert (await raw_http(relay.port, good)).status == 101
        # No Origin at all is allowed: relays must not require it.
        none = upgrade_request(f"/cable/new/{new_tunnel_id()}")
        assert (await raw_http(relay.port, none)).status == 101
        assert relay.stats.refusals["origin_forbidden"] == 1


async def test_oversized_request_head_is_431():
    async with running_relay(max_request_head=2048) as relay:
        request = upgrade_request(
            f"/cable/new/{new_tunnel_id()}", extra="X-Filler: " + "f" * 4000 + "\r\n"
        )
        assert (await raw_http(relay.port, request)).status == 431
        assert relay.live_tunnels() == 0


async def test_slow_and_silent_clients_are_cut_at_the_deadline_and_do_not_slow_pairing():
    deadline = 1.0
    async with running_relay(handshake_timeout=deadline) as relay:
        idle: list[trio.SocketStream] = []
        for i in range(60):
            stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
            if i % 3 == 1:
                await stream.send_all(b"GET /cable/new/")  # a request that never finishes
            idle.append(stream)

        async def dribble() -> None:
            # Slowloris: one byte at a time, forever; the deadline is total, not per read.
            stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
            idle.append(stream)
            request = upgrade_request(f"/cable/new/{new_tunnel_id()}")
            for byte in request:
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    return
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(dribble)
            await wait_until(lambda: relay.handshakes_in_progress() >= 60)
            started = trio.current_time()
            for _ in range(5):
                async with open_tunnel(relay) as tunnel:
                    await tunnel.initiator.send_message(b"honest")
                    assert await tunnel.authenticator.get_message() == b"honest"
            assert trio.current_time() - started < deadline / 2
            # After the deadline every slow client is gone: nothing held, sockets closed by us.
            await wait_until(lambda: relay.open_connections() == 0, timeout=deadline + 2)
            assert relay.handshakes_in_progress() == 0
            nursery.cancel_scope.cancel()
        for stream in idle:
            with trio.fail_after(1):
                try:
                    data = b""
                    while chunk := await stream.receive_some(4096):
                        data += chunk
                except trio.BrokenResourceError:
                    data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
            await stream.aclose()
        assert relay.stats.refusals["handshake_timeout"] >= 60
        assert relay.live_tunnels() == 0
