"""Keep-alive pings: idle tunnels are pinged, answered pings keep them, a silent peer is closed."""

from __future__ import annotations

import struct

import trio
from prometheus_client.parser import text_string_to_metric_families
from relay_helpers import (
    connect_url,
    expect_close,
    new_tunnel_id,
    new_url,
    open_tunnel,
    open_ws,
    parse_response,
    running_relay,
    upgrade_request,
)


class RawClient:
    """A WebSocket client written on a bare socket, so the test decides whether to pong."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        self.stream = stream
        self.buffer = buffered

    @classmethod
    async def connect(cls, port: int, path: str) -> tuple[RawClient, dict[str, str]]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(upgrade_request(path))
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        response = parse_response(head + b"\r\n\r\n")
        assert response.status == 101
        return cls(stream, rest), response.headers

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        while True:
            if len(self.buffer) >= 2:
                length = self.buffer[1] & 0x7F
                start = 2
                if length == 126:
                    (length,) = struct.unpack_from("!H", self.buffer, 2)
                    start = 4
                if len(self.buffer) >= start + length:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[start : start + length]
                    self.buffer = self.buffer[start + length :]
                    return opcode, payload
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise EOFError
            self.buffer += chunk

    async def send(self, opcode: int, payload: bytes) -> None:
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.stream.send_all(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


def closes(relay) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(relay.metrics_text()):
        for sample in family.samples:
            if sample.name == "hybrid_relay_tunnel_closes_total":
                values[sample.labels["reason"]] = sample.value
    return values


async def test_an_idle_tunnel_is_pinged_and_survives_while_pongs_come_back():
    async with running_relay(ping_interval=0.2) as relay:
        tunnel_id = new_tunnel_id()
        client, headers = await RawClient.connect(relay.port, f"/cable/new/{tunnel_id}")
        async with client.stream:
            routing_id = headers["x-cable-routing-id"]
            async with open_ws(connect_url(relay, routing_id, tunnel_id)) as initiator:
                pings = 0
                with trio.fail_after(5):
                    while pings < 5:  # five intervals, well past the silence limit
                        opcode, payload = await client.frame()
                        assert opcode == 0x9, opcode
                        pings += 1
                        await client.send(0xA, payload)
                # Still one live tunnel: both peers answered (trio-websocket pongs by itself).
                assert relay.paired_tunnels() == 1
                await initiator.send_message(b"after a long pause")
                opcode, payload = await client.frame()
                while opcode == 0x9:
                    await client.send(0xA, payload)
                    opcode, payload = await client.frame()
                assert (opcode, payload) == (0x2, b"after a long pause")


async def test_a_silent_peer_is_closed_with_a_clear_reason():
    async with running_relay(ping_interval=0.2) as relay:
        tunnel_id = new_tunnel_id()
        async with open_ws(new_url(relay, tunnel_id)) as authenticator:
            routing_id = [
                v.decode()
                for k, v in authenticator.handshake_headers
                if k.lower() == b"x-cable-routing-id"
            ][0]
            # The initiator upgrades, then never reads or answers anything.
            silent, _ = await RawClient.connect(
                relay.port, f"/cable/connect/{routing_id}/{tunnel_id}"
            )
            async with silent.stream:
                started = trio.current_time()
                assert await expect_close(authenticator, timeout=3) == 1001
                assert authenticator.closed.reason == "initiator stopped answering pings"
                elapsed = trio.current_time() - started
                assert 0.3 <= elapsed < 2, elapsed
        with trio.fail_after(3):
            while relay.live_tunnels():
                await trio.sleep(0.02)
        assert closes(relay) == {"ping_timeout": 1}


async def test_pings_can_be_turned_off():
    async with running_relay(ping_interval=0) as relay:
        async with open_tunnel(relay) as tunnel:
            await trio.sleep(0.3)
            await tunnel.initiator.send_message(b"x")
            assert await tunnel.authenticator.get_message() == b"x"
        client, _ = await RawClient.connect(relay.port, f"/cable/new/{new_tunnel_id()}")
        async with client.stream:
            with trio.move_on_after(0.5) as waited:
                await client.frame()
            assert waited.cancelled_caught
