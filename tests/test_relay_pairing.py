"""Pairing, forwarding and refusals of a real relay, driven by real WebSocket clients."""

from __future__ import annotations

import re

import pytest
import trio
import trio_websocket
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


async def test_happy_path_forwards_binary_messages_both_ways_and_cleans_up():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            assert tunnel.authenticator.subprotocol == "fido.cable"
            assert tunnel.initiator.subprotocol == "fido.cable"
            assert re.fullmatch(r"[0-9A-F]{6}", tunnel.routing_id)
            assert relay.live_tunnels() == 1
            await tunnel.initiator.send_message(b"\x01" * 81)
            assert await tunnel.authenticator.get_message() == b"\x01" * 81
            await tunnel.authenticator.send_message(b"\x02" * 81)
            await tunnel.authenticator.send_message(b"")
            await tunnel.authenticator.send_message(bytes(range(256)))
            assert await tunnel.initiator.get_message() == b"\x02" * 81
            assert await tunnel.initiator.get_message() == b""
            assert await tunnel.initiator.get_message() == bytes(range(256))
        await wait_until(lambda: relay.live_tunnels() == 0)


async def test_101_carries_routing_id_exactly_once_and_echoes_subprotocol():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        response = await raw_http(relay.port, upgrade_request(f"/cable/new/{tid}"))
        assert response.status == 101
        assert response.headers["sec-websocket-protocol"] == "fido.cable"
        assert re.fullmatch(r"[0-9A-F]{6}", response.headers["x-cable-routing-id"])
        # Exact header name and a single occurrence, read from the raw bytes.
        tid2 = new_tunnel_id()
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(upgrade_request(f"/cable/new/{tid2}"))
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
        head = data.split(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 101 ")
        assert head.count(b"\r\nX-caBLE-Routing-ID: ") == 1


async def test_lower_case_hex_ids_are_accepted():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid.lower())) as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(connect_url(relay, rid.lower(), tid.lower())) as initiator:
                await initiator.send_message(b"hi")
                assert await authenticator.get_message() == b"hi"


async def test_messages_sent_before_the_initiator_joins_are_delivered_in_order():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            for i in range(3):
                await authenticator.send_message(bytes([i]) * 10)
            await trio.sleep(0.05)
            async with open_ws(connect_url(relay, routing_id_of(authenticator), tid)) as initiator:
                await authenticator.send_message(b"\x09")
                got = [await initiator.get_message() for _ in range(4)]
                assert got == [b"\x00" * 10, b"\x01" * 10, b"\x02" * 10, b"\x09"]


async def test_fragmented_message_is_reassembled_into_one():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            # trio-websocket cannot fragment; write the frames by hand through its wsproto.
            from wsproto.events import BytesMessage

            ws = tunnel.initiator
            conn = ws._wsproto  # noqa: SLF001 - reach the frame layer to send continuation frames
            stream = ws._stream  # noqa: SLF001
            data = conn.send(BytesMessage(data=b"abc", message_finished=False))
            data += conn.send(BytesMessage(data=b"def", message_finished=True))
            await stream.send_all(data)
            assert await tunnel.authenticator.get_message() == b"abcdef"


@pytest.mark.parametrize("closer", ["authenticator", "initiator"])
async def test_clean_close_by_one_side_closes_the_other_with_1000(closer):
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            first = getattr(tunnel, closer)
            other = tunnel.initiator if closer == "authenticator" else tunnel.authenticator
            await first.aclose()
            assert await expect_close(other) == 1000
        await wait_until(lambda: relay.live_tunnels() == 0)


async def test_text_frame_closes_both_sides_with_1003():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            await tunnel.initiator.send_message("hello")
            assert await expect_close(tunnel.authenticator) == 1003
            assert await expect_close(tunnel.initiator) == 1003
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert relay.stats.tunnel_closes["text_frame"] == 1


async def test_oversized_or_fragmented_text_closes_with_1003_at_its_first_frame():
    async with running_relay(max_message_size=1024) as relay:
        async with open_tunnel(relay) as tunnel:
            await tunnel.initiator.send_message("x" * 5000)
            assert await expect_close(tunnel.authenticator) == 1003
        async with open_tunnel(relay) as tunnel:
            # trio-websocket sends a str as one frame; a raw first fragment needs the stream.
            stream = tunnel.initiator._stream  # the client's trio stream (test-only access)
            await stream.send_all(b"\x01\x82\x00\x00\x00\x00he")  # text, FIN clear, masked
            assert await expect_close(tunnel.authenticator) == 1003
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert relay.stats.tunnel_closes["text_frame"] == 2


async def test_duplicate_new_is_refused_with_409_and_leaves_the_first_working():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rejected = await expect_rejected(new_url(relay, tid))
            assert rejected.status_code == 409
            async with open_ws(connect_url(relay, routing_id_of(authenticator), tid)) as initiator:
                # Still 409 while paired.
                assert (await expect_rejected(new_url(relay, tid.lower()))).status_code == 409
                await initiator.send_message(b"ok")
                assert await authenticator.get_message() == b"ok"
        assert relay.stats.refusals["duplicate_tunnel"] == 2


async def test_second_connect_is_refused_and_unknown_tunnel_is_404():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            url = connect_url(relay, tunnel.routing_id, tunnel.tunnel_id)
            assert (await expect_rejected(url)).status_code == 404
            await tunnel.initiator.send_message(b"still here")
            assert await tunnel.authenticator.get_message() == b"still here"
        unknown = connect_url(relay, "ABCDEF", new_tunnel_id())
        assert (await expect_rejected(unknown)).status_code == 404


async def test_connect_with_the_wrong_routing_id_is_404():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
            wrong = f"{(int(rid, 16) ^ 1):06X}"
            assert (await expect_rejected(connect_url(relay, wrong, tid))).status_code == 404
            async with open_ws(connect_url(relay, rid, tid)) as initiator:
                await initiator.send_message(b"x")
                assert await authenticator.get_message() == b"x"


MALFORMED_PATHS = [
    "/cable/new/" + "A" * 31,
    "/cable/new/" + "A" * 33,
    "/cable/new/" + "G" * 32,
    "/cable/new/" + "A" * 32 + "/",
    "/cable/new/" + "A" * 32 + "?x=1",
    "/cable/new/" + "A" * 32 + "/extra",
    "/cable/new/%41" + "A" * 30,
    "/cable/new/",
    "/cable/new",
    "/cable/connect/ABCDE/" + "A" * 32,
    "/cable/connect/ABCDEF0/" + "A" * 32,
    "/cable/connect/ABCDEF/" + "A" * 31,
    "/cable/connect/ABCDEF",
    "/cable/connect/ABCDEF/" + "A" * 32 + "/",
    "/cable/connect/../new/" + "A" * 32,
    "/cable/../cable/new/" + "A" * 32,
    "/cable/./new/" + "A" * 32,
    "/cable/other/" + "A" * 32,
    "/cable",
    "/cable/",
    "/cable/contact/",
    "/cable/contact/a=b",
]


@pytest.mark.parametrize("path", MALFORMED_PATHS)
async def test_malformed_paths_get_400_before_any_upgrade(path):
    async with running_relay() as relay:
        response = await raw_http(relay.port, upgrade_request(path))
        assert response.status == 400, path
        assert relay.live_tunnels() == 0


async def test_missing_subprotocol_is_400():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        response = await raw_http(
            relay.port, upgrade_request(f"/cable/new/{tid}", subprotocol=None)
        )
        assert response.status == 400
        other = upgrade_request(f"/cable/new/{tid}", subprotocol="chat, superchat")
        assert (await raw_http(relay.port, other)).status == 400
        rejected = await expect_rejected(new_url(relay, tid), subprotocols=[])
        assert rejected.status_code == 400
        assert relay.live_tunnels() == 0
        # Offered among others, it is chosen.
        listed = upgrade_request(f"/cable/new/{tid}", subprotocol="chat, fido.cable")
        response = await raw_http(relay.port, listed)
        assert response.status == 101
        assert response.headers["sec-websocket-protocol"] == "fido.cable"


async def test_non_get_and_non_upgrade_requests_are_refused():
    async with running_relay() as relay:
        path = f"/cable/new/{new_tunnel_id()}"
        for method in ("POST", "PUT", "DELETE", "HEAD"):
            response = await raw_http(relay.port, upgrade_request(path, method=method))
            assert response.status == 405, method
        plain = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        assert (await raw_http(relay.port, plain)).status == 400
        old = upgrade_request(path, version="8")
        response = await raw_http(relay.port, old)
        assert response.status == 426
        assert response.headers["sec-websocket-version"] == "13"
        assert (await raw_http(relay.port, b"garbage\r\n\r\n")).status == 400
        unknown = b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await raw_http(relay.port, unknown)).status == 404
        assert relay.live_tunnels() == 0


async def test_contact_path_is_410_gone():
    async with running_relay() as relay:
        response = await raw_http(relay.port, upgrade_request("/cable/contact/AAECAwQ"))
        assert response.status == 410
        assert b"contact" in response.body


async def test_refusals_leave_live_tunnels_untouched():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            for path in MALFORMED_PATHS[:5]:
                await raw_http(relay.port, upgrade_request(path))
            await expect_rejected(new_url(relay, tunnel.tunnel_id))
            await tunnel.authenticator.send_message(b"fine")
            assert await tunnel.initiator.get_message() == b"fine"


async def test_authenticator_leaving_before_pairing_frees_the_tunnel_id():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert (await expect_rejected(connect_url(relay, rid, tid))).status_code == 404
        # The id can be used again afterwards.
        async with open_tunnel(relay, tid) as tunnel:
            await tunnel.initiator.send_message(b"again")
            assert await tunnel.authenticator.get_message() == b"again"


async def test_abrupt_disconnect_before_pairing_is_cleaned_up():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        await stream.send_all(upgrade_request(f"/cable/new/{tid}"))
        await stream.receive_some(4096)
        await wait_until(lambda: relay.live_tunnels() == 1)
        await trio.aclose_forcefully(stream)
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert relay.stats.tunnel_closes["authenticator_gone"] == 1


@pytest.mark.parametrize("victim", ["authenticator", "initiator"])
async def test_abrupt_disconnect_after_pairing_closes_the_peer_with_1001(victim):
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            ws = getattr(tunnel, victim)
            other = tunnel.initiator if victim == "authenticator" else tunnel.authenticator
            await trio.aclose_forcefully(ws._stream)  # noqa: SLF001 - drop TCP, no close frame
            assert await expect_close(other) == 1001
        await wait_until(lambda: relay.live_tunnels() == 0)
        assert relay.stats.tunnel_closes[f"{victim}_gone"] == 1


async def test_abrupt_disconnect_mid_message_closes_the_peer_with_1001():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            from wsproto.events import BytesMessage

            ws = tunnel.initiator
            frame = ws._wsproto.send(BytesMessage(data=b"x" * 1000))  # noqa: SLF001
            await ws._stream.send_all(frame[:500])  # noqa: SLF001 - half a frame
            await trio.sleep(0.05)
            await trio.aclose_forcefully(ws._stream)  # noqa: SLF001
            assert await expect_close(tunnel.authenticator) == 1001
        await wait_until(lambda: relay.live_tunnels() == 0)


async def test_connection_rejected_by_trio_websocket_reports_status():
    # A real client library sees the refusal as an HTTP status, never as an upgrade.
    async with running_relay() as relay:
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_ws(f"{relay.base_url}/cable/new/{'0' * 31}"):
                pass
        assert info.value.status_code == 400


async def test_frames_sent_right_behind_the_request_are_kept():
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage

    async with running_relay() as relay:
        tid = new_tunnel_id()
        client = Connection(ConnectionType.CLIENT)
        early = client.send(BytesMessage(data=b"pipelined"))
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(upgrade_request(f"/cable/new/{tid}") + early)
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
            rid = re.search(rb"X-caBLE-Routing-ID: ([0-9A-F]{6})", head).group(1).decode()
            async with open_ws(connect_url(relay, rid, tid)) as initiator:
                assert await initiator.get_message() == b"pipelined"


async def test_pings_are_answered_by_the_relay_and_not_forwarded():
    async with running_relay() as relay:
        async with open_tunnel(relay) as tunnel:
            with trio.fail_after(2):
                await tunnel.initiator.ping(b"are you there")
                await tunnel.authenticator.ping()
            await tunnel.initiator.send_message(b"after ping")
            assert await tunnel.authenticator.get_message() == b"after ping"


async def test_in_process_shutdown_closes_waiting_tunnels_and_returns():
    async with running_relay() as relay:
        async with open_ws(new_url(relay, new_tunnel_id())) as waiting:
            with trio.fail_after(3):
                await relay.shutdown(grace=1, drain_delay=0)
            assert await expect_close(waiting) == 1001
        assert relay.live_tunnels() == 0
        assert relay.open_connections() == 0


async def test_garbage_before_and_after_the_upgrade_never_disturbs_the_relay(caplog):
    import random

    rng = random.Random(1234)
    async with running_relay(handshake_timeout=1, wait_timeout=1) as relay:
        async with open_tunnel(relay) as tunnel:

            async def junk(i: int) -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
                noise = rng.randbytes(rng.randrange(1, 3000))
                if i % 2:
                    noise = upgrade_request(f"/cable/new/{new_tunnel_id()}") + noise
                async with stream:
                    try:
                        await stream.send_all(noise)
                        with trio.move_on_after(2):
                            while await stream.receive_some(65536):
                                pass
                    except trio.BrokenResourceError:
                        pass

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(junk, i)
            await tunnel.authenticator.send_message(b"unbothered")
            assert await tunnel.initiator.get_message() == b"unbothered"
        await wait_until(lambda: relay.open_connections() == 0, timeout=5)
        assert relay.live_tunnels() == 0
    assert not [r for r in caplog.records if r.getMessage() == "connection_error"]


async def _upgrade_and_hold(port: int, path: str, statuses: list[int], held: list) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    held.append(stream)
    await stream.send_all(upgrade_request(path))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(4096)
    statuses.append(int(head.split(b" ", 2)[1]))


async def test_racing_duplicates_pair_exactly_once():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        statuses: list[int] = []
        held: list[trio.SocketStream] = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(
                    _upgrade_and_hold, relay.port, f"/cable/new/{tid}", statuses, held
                )
        assert sorted(statuses) == [101] + [409] * 9
        assert relay.live_tunnels() == 1
        for stream in held:
            await stream.aclose()
        await wait_until(lambda: relay.live_tunnels() == 0)

        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
            statuses.clear()
            held.clear()
            path = f"/cable/connect/{rid}/{tid}"
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(_upgrade_and_hold, relay.port, path, statuses, held)
            assert sorted(statuses) == [101] + [404] * 9
            assert relay.stats.pairings == 1
            for stream in held:
                await stream.aclose()
