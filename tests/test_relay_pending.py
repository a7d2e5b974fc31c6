"""What a waiting tunnel may buffer before its initiator joins (issue 12, point 7).

An authenticator has nothing to send before the handshake, so the pending buffer is capped in
bytes per tunnel (small by default) and in total per node; beyond either the tunnel closes with
1008 (``pending_overflow``). The memory a waiting tunnel costs with a full buffer is measured on a
relay process.
"""

from __future__ import annotations

import secrets

import pytest
import trio
from relay_helpers import connect_url, new_tunnel_id, new_url, open_ws, routing_id_of, running_relay
from relay_process import masked_frame, raw_ws, read_close_code, relay_process

from relay.config import DEFAULT_MAX_PENDING_BYTES


async def test_one_message_over_the_byte_cap_closes_with_1008():
    async with running_relay() as relay:
        async with open_ws(new_url(relay, new_tunnel_id())) as authenticator:
            await authenticator.send_message(b"x" * (DEFAULT_MAX_PENDING_BYTES + 1))
            with trio.fail_after(5):
                try:
                    await authenticator.get_message()
                except Exception as exc:  # ConnectionClosed
                    assert exc.reason.code == 1008, exc  # type: ignore[attr-defined]
        assert relay.stats.tunnel_closes["pending_overflow"] == 1
        assert relay.tunnels.pending_bytes == 0


async def test_small_messages_adding_up_past_the_cap_close_with_1008(tmp_path):
    async with running_relay(max_pending_bytes=3000) as relay:
        stream, status, _ = await raw_ws(relay.port, f"/cable/new/{new_tunnel_id()}")
        async with stream:
            assert status == 101
            await stream.send_all(masked_frame(b"a" * 1400) + masked_frame(b"b" * 1400))
            await trio.sleep(0.1)
            assert relay.tunnels.pending_bytes == 2800
            await stream.send_all(masked_frame(b"c" * 300))
            assert await read_close_code(stream) == 1008
        assert relay.tunnels.pending_bytes == 0


async def test_the_node_total_caps_all_waiting_tunnels_and_pairing_frees_it():
    async with running_relay(max_pending_bytes=1000, max_pending_bytes_total=2500) as relay:
        held = []
        try:
            for _ in range(2):
                tid = new_tunnel_id()
                stream, status, headers = await raw_ws(relay.port, f"/cable/new/{tid}")
                held.append((stream, tid, headers["x-cable-routing-id"]))
                await stream.send_all(masked_frame(b"p" * 1000))
            await trio.sleep(0.1)
            assert relay.tunnels.pending_bytes == 2000
            third, status, _ = await raw_ws(relay.port, f"/cable/new/{new_tunnel_id()}")
            async with third:
                await third.send_all(masked_frame(b"q" * 600))  # 2600 > 2500
                assert await read_close_code(third) == 1008
            # The first tunnel pairs: its buffer is delivered and leaves the node's total.
            stream, tid, rid = held[0]
            async with open_ws(connect_url(relay, rid, tid)) as initiator:
                assert await initiator.get_message() == b"p" * 1000
                assert relay.tunnels.pending_bytes == 1000
                fourth, status, _ = await raw_ws(relay.port, f"/cable/new/{new_tunnel_id()}")
                async with fourth:
                    await fourth.send_all(masked_frame(b"r" * 900))
                    await trio.sleep(0.1)
                    assert relay.tunnels.pending_bytes == 1900
        finally:
            for stream, _, _ in held:
                await stream.aclose()


async def test_honest_pairing_is_untouched_by_the_caps():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(connect_url(relay, rid, tid)) as initiator:
                big = secrets.token_bytes(60_000)  # after pairing the full message size applies
                await authenticator.send_message(big)
                assert await initiator.get_message() == big


WAITING = 300


@pytest.mark.parametrize(
    ("size", "count"),
    [(DEFAULT_MAX_PENDING_BYTES // 6 - 8, 6), (64 * 1024, 6)],
    ids=["full-buffer", "six-64KiB-messages"],
)
async def test_memory_per_waiting_tunnel_with_full_pending_buffers(tmp_path, size, count):
    """Each waiting tunnel's client sends what it may (or the old limit, 6 x 64 KiB)."""
    async with relay_process(tmp_path) as relay:
        await trio.sleep(0.5)
        before = relay.rss_kib()
        streams = []
        try:
            for _ in range(WAITING):
                stream, status, _ = await raw_ws(relay.port, f"/cable/new/{new_tunnel_id()}")
                assert status == 101
                streams.append(stream)
                with trio.move_on_after(1):  # the relay may close on us mid-write
                    try:
                        await stream.send_all(
                            b"".join(masked_frame(b"m" * size) for _ in range(count))
                        )
                    except trio.BrokenResourceError:
                        pass
            await trio.sleep(1.5)
            during = relay.rss_kib()
        finally:
            for stream in streams:
                await stream.aclose()
    per_tunnel = (during - before) / WAITING
    print(f"\n{WAITING} waiting tunnels, {count} x {size} bytes each: {per_tunnel:.1f} KiB each")
    assert per_tunnel < 40, per_tunnel
