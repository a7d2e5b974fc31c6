"""The relay's forwarding path end to end, checked against wsproto on both ends of a real tunnel.

A wsproto client produces the byte stream a browser or phone could send -- random message sizes,
random fragmentation, pings between fragments -- and the stream reaches the relay cut at random
points. Whatever the relay batches per read, the peer (parsed by a wsproto client) must receive
exactly the same binary messages in the same order, the sender must get one pong per ping, and
a clean close must reach both sides as 1000.
"""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_helpers import new_tunnel_id, running_relay, upgrade_request
from wsproto.connection import CLIENT, Connection
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong

from tests.conftest import examples

FUZZ = settings(
    # Each example runs a whole tunnel through a real relay.
    max_examples=examples(0.1),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


async def raw_upgrade(port: int, path: str) -> tuple[trio.SocketStream, dict[bytes, bytes], bytes]:
    """A raw client stream after its 101; returns the headers and any bytes past the head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request(path))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 101 "), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return stream, headers, rest


class Reader:
    """Reads server frames from a raw stream through a wsproto client connection."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self.stream = stream
        self.conn = Connection(CLIENT)
        self.conn.receive_data(leftover)
        self.messages: list[bytes] = []
        self.pongs: list[bytes] = []
        self.close_code: int | None = None
        self._partial: list[bytes] = []

    def _drain_events(self) -> None:
        for event in self.conn.events():
            if isinstance(event, BytesMessage):
                self._partial.append(bytes(event.data))
                if event.message_finished:
                    self.messages.append(b"".join(self._partial))
                    self._partial = []
            elif isinstance(event, Pong):
                self.pongs.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
            else:
                raise AssertionError(f"unexpected event from the relay: {event!r}")

    async def until(self, done) -> None:
        self._drain_events()
        while not done():
            data = await self.stream.receive_some(1 << 20)
            if not data:
                break
            self.conn.receive_data(data)
            self._drain_events()


@st.composite
def client_streams(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    conn = Connection(CLIENT)
    chunks: list[bytes] = []
    messages: list[bytes] = []
    pings: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        size = draw(st.sampled_from([0, 1, 125, 126, 65535, 65536]) | st.integers(0, 70000))
        body = rng.randbytes(size)
        messages.append(body)
        cuts = sorted(rng.sample(range(size + 1), min(size, draw(st.integers(0, 3)))))
        bounds = [0, *cuts, size]
        for i in range(len(bounds) - 1):
            last = i == len(bounds) - 2
            chunks.append(
                conn.send(Message(body[bounds[i] : bounds[i + 1]], message_finished=last))
            )
            if rng.random() < 0.3:
                ping = rng.randbytes(rng.randint(0, 30))
                pings.append(ping)
                chunks.append(conn.send(Ping(ping)))
    data = b"".join(chunks)
    splits = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    closing = conn.send(CloseConnection(1000))
    return data, splits, messages, pings, closing, draw(st.booleans())


@FUZZ
@given(client_streams())
async def test_peer_receives_exactly_what_a_wsproto_client_sent(stream):
    data, splits, messages, pings, closing, from_initiator = stream
    async with running_relay(max_message_size=1 << 20, max_messages=100) as relay:
        tid = new_tunnel_id()
        auth, headers, auth_rest = await raw_upgrade(relay.port, f"/cable/new/{tid}")
        rid = headers[b"x-cable-routing-id"].decode()
        init, _, init_rest = await raw_upgrade(relay.port, f"/cable/connect/{rid}/{tid}")
        sender, receiver = (init, auth) if from_initiator else (auth, init)
        rests = (init_rest, auth_rest) if from_initiator else (auth_rest, init_rest)
        at_sender, at_receiver = Reader(sender, rests[0]), Reader(receiver, rests[1])
        with trio.fail_after(10):
            # Everyone reads while the sender writes: the relay applies backpressure, so a test
            # that wrote everything before reading could deadlock on full socket buffers.
            async with trio.open_nursery() as nursery:

                async def send_in_pieces() -> None:
                    start = 0
                    for cut in [*splits, len(data)]:
                        await sender.send_all(data[start:cut])
                        start = cut
                        await trio.sleep(0)

                nursery.start_soon(send_in_pieces)
                nursery.start_soon(
                    at_receiver.until, lambda: len(at_receiver.messages) >= len(messages)
                )
                nursery.start_soon(at_sender.until, lambda: len(at_sender.pongs) >= len(pings))
            assert at_receiver.messages == messages
            assert at_sender.pongs == pings
            await sender.send_all(closing)
            await at_sender.until(lambda: at_sender.close_code is not None)
            await at_receiver.until(lambda: at_receiver.close_code is not None)
        assert (at_sender.close_code, at_receiver.close_code) == (1000, 1000)
        assert at_sender.messages == [] and at_receiver.pongs == []
        await auth.aclose()
        await init.aclose()


def masked_frame(
    opcode: int, payload: bytes, *, first: int | None = None, length: bytes = b""
) -> bytes:
    """A client frame; ``first`` overrides the first byte, ``length`` the length field."""
    mask = b"\x11\x22\x33\x44"
    head = bytes([0x80 | opcode if first is None else first])
    if length:
        head += length
    elif len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    ("violation", "sender_code", "peer_code"),
    [
        (b"\x82\x03abc", 1002, 1001),  # unmasked client frame
        (masked_frame(2, b"x", first=0xC2), 1002, 1001),  # reserved bit without an extension
        (masked_frame(0, b"x"), 1002, 1001),  # continuation outside a message
        (masked_frame(2, b"", length=b"\xff" + b"\x80" + bytes(7)), 1002, 1001),  # 64-bit MSB
        (masked_frame(9, b"p" * 126, length=b"\xfe\x00\x7e"), 1002, 1001),  # control > 125 bytes
        (masked_frame(1, b"hello"), 1003, 1003),  # text at all
        (masked_frame(1, b"\xff\xfe"), 1003, 1003),  # text, even when it is not UTF-8
        (masked_frame(1, b"t" * 2000), 1003, 1003),  # text, even when it is too big
        (masked_frame(1, b"t", first=0x01), 1003, 1003),  # text, from its first fragment
        (masked_frame(2, b"z" * 2000), 1009, 1009),  # over the size limit
    ],
)
async def test_a_framing_violation_closes_both_sides_after_what_came_before_it(
    violation, sender_code, peer_code
):
    async with running_relay(max_message_size=1000) as relay:
        tid = new_tunnel_id()
        auth, headers, auth_rest = await raw_upgrade(relay.port, f"/cable/new/{tid}")
        rid = headers[b"x-cable-routing-id"].decode()
        init, _, init_rest = await raw_upgrade(relay.port, f"/cable/connect/{rid}/{tid}")
        at_init, at_auth = Reader(init, init_rest), Reader(auth, auth_rest)
        with trio.fail_after(5):
            # One write: the message before the violation arrives in the same read.
            await init.send_all(masked_frame(2, b"before") + violation)
            await at_auth.until(lambda: at_auth.close_code is not None)
            await at_init.until(lambda: at_init.close_code is not None)
        assert at_auth.messages == [b"before"]
        assert (at_init.close_code, at_auth.close_code) == (sender_code, peer_code)
        await auth.aclose()
        await init.aclose()
