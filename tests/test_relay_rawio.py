"""The relay's raw socket path (``relay.rawio``) keeps the guarantees of trio's stream methods.

rawio calls ``recv``/``send`` on the non-blocking socket under a plain ``trio.SocketStream``, so
these tests pin what trio used to guarantee: large writes complete under backpressure, other
streams keep their own methods, a socket closed by another task or reset by the peer fails with a
stream error instead of hanging, waits are cancellable, cancellation never loses bytes, a reader
that always finds data still lets other tasks run, and a tunnel whose peer never pauses still
leaves room for other tunnels and still ends at its lifetime.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
import trio
import trio.testing
from relay_helpers import new_tunnel_id, open_tunnel, parse_response, running_relay, upgrade_request

from relay import websocket
from relay.rawio import STREAM_ERRORS, raw_socket, receive_some, send_all


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    clients: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:

        async def connect() -> None:
            clients.append(await trio.open_tcp_stream("127.0.0.1", port))

        nursery.start_soon(connect)
        server = await listener.accept()
    await listener.aclose()
    return clients[0], server


def binary_frame(payload: bytes) -> bytes:
    """A masked client frame with an all-zero mask, so the payload goes out as is."""
    if len(payload) < 126:
        return bytes([0x82, 0x80 | len(payload)]) + bytes(4) + payload
    return b"\x82\xfe" + struct.pack("!H", len(payload)) + bytes(4) + payload


async def test_large_write_completes_under_backpressure_and_arrives_intact():
    client, server = await tcp_pair()
    raw_client, raw_server = raw_socket(client), raw_socket(server)
    assert raw_client is not None and raw_server is not None
    payload = os.urandom(4 << 20)  # far beyond the socket buffers: the writer must wait
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            chunk = await receive_some(server, raw_server, 65536)
            assert chunk
            received.extend(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await send_all(client, raw_client, payload)
    assert received == payload
    await client.aclose()
    assert await receive_some(server, raw_server, 100) == b""
    await server.aclose()


async def test_streams_that_are_not_plain_sockets_keep_their_own_methods():
    left, right = trio.testing.memory_stream_pair()
    assert raw_socket(left) is None
    await send_all(left, None, b"through the stream api")
    assert await receive_some(right, None, 100) == b"through the stream api"


async def test_a_socket_another_task_closes_wakes_its_waiting_reader_with_a_stream_error():
    client, server = await tcp_pair()
    raw_server = raw_socket(server)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.05)
                await server.aclose()

            nursery.start_soon(close_soon)
            with pytest.raises(STREAM_ERRORS):
                await receive_some(server, raw_server, 100, eager=False)
    with pytest.raises(STREAM_ERRORS):
        await send_all(server, raw_server, b"x")
    await client.aclose()


async def test_writing_to_a_reset_connection_fails_with_a_stream_error():
    client, server = await tcp_pair()
    raw_server = raw_socket(server)
    # Linger 0: closing sends RST instead of FIN, so writes fail instead of piling up.
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    await trio.sleep(0.05)
    with trio.fail_after(5), pytest.raises(STREAM_ERRORS):
        for _ in range(100):
            await send_all(server, raw_server, b"y" * 65536)
    await server.aclose()


async def test_a_waiting_receive_is_cancellable_and_the_socket_still_works():
    client, server = await tcp_pair()
    raw_client, raw_server = raw_socket(client), raw_socket(server)
    with trio.move_on_after(0.1) as scope:
        await receive_some(server, raw_server, 100, eager=False)
    assert scope.cancelled_caught
    await send_all(client, raw_client, b"after")
    assert await receive_some(server, raw_server, 100) == b"after"
    await client.aclose()
    await server.aclose()


async def test_cancellation_never_loses_bytes_that_were_ready():
    client, server = await tcp_pair()
    raw_client, raw_server = raw_socket(client), raw_socket(server)
    await send_all(client, raw_client, b"keep me")
    await trio.sleep(0.05)
    got = b""
    with trio.CancelScope() as scope:
        scope.cancel()
        # Either the bytes come back, or the call is cancelled before taking them.
        got = await receive_some(server, raw_server, 100)
    if not got:
        with trio.move_on_after(1):
            got = await receive_some(server, raw_server, 100)
    assert got == b"keep me"
    await client.aclose()
    await server.aclose()


async def test_a_reader_that_always_finds_data_still_lets_other_tasks_run(monkeypatch):
    # Small reads over a full socket: every read succeeds at once, so only the reader's own
    # yielding lets the other task run.
    monkeypatch.setattr(websocket, "RECEIVE_SIZE", 1024)
    client, server = await tcp_pair()
    payload = b"m" * 1000
    await send_all(client, raw_socket(client), binary_frame(payload) * 64)
    ws = websocket.WebSocket(server, b"", 1 << 20)
    runs = 0

    async def other() -> None:
        nonlocal runs
        while True:
            runs += 1
            await trio.sleep(0)

    messages: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.sleep(0)
        before = runs
        while len(messages) < 32:
            messages += await ws.receive_batch()
        assert runs > before
        nursery.cancel_scope.cancel()
    assert messages == [payload] * len(messages)
    await client.aclose()
    await server.aclose()


def blocking_upgrade(port: int, path: str) -> tuple[socket.socket, dict[str, str]]:
    """A WebSocket client socket opened by hand, with blocking I/O, for use in a thread."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(upgrade_request(path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    response = parse_response(head)
    assert response.status == 101, response
    return sock, response.headers


def pour(sock: socket.socket, stop: threading.Event) -> None:
    """Send 16 KiB binary messages as fast as the relay takes them, until stopped."""
    batch = binary_frame(b"f" * 16384) * 16
    try:
        while not stop.is_set():
            sock.sendall(batch)
    except OSError:
        pass


def drain(sock: socket.socket, stop: threading.Event) -> None:
    try:
        while not stop.is_set() and sock.recv(1 << 20):
            pass
    except OSError:
        pass


async def test_a_tunnel_that_never_pauses_leaves_room_for_others_and_meets_its_lifetime():
    # Threads pour and drain as fast as the kernel allows: only the relay's own yielding lets
    # another tunnel pair meanwhile, and the busy tunnel must still end at its lifetime.
    async with running_relay(tunnel_lifetime=1.5, max_messages=10**9) as relay:
        tid = new_tunnel_id()
        auth, headers = await trio.to_thread.run_sync(
            blocking_upgrade, relay.port, f"/cable/new/{tid}"
        )
        rid = headers["x-cable-routing-id"]
        init, _ = await trio.to_thread.run_sync(
            blocking_upgrade, relay.port, f"/cable/connect/{rid}/{tid}"
        )
        stop = threading.Event()
        threads = [
            threading.Thread(target=pour, args=(init, stop), daemon=True),
            threading.Thread(target=drain, args=(auth, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            await trio.sleep(0.3)
            assert relay.stats.messages_to_authenticator > 0
            with trio.fail_after(1.0):
                async with open_tunnel(relay) as other:
                    await other.initiator.send_message(b"hello")
                    assert await other.authenticator.get_message() == b"hello"
            with trio.fail_after(3.0):
                while relay.stats.tunnel_closes["lifetime"] < 1:
                    await trio.sleep(0.05)
        finally:
            stop.set()
            auth.close()
            init.close()
            for thread in threads:
                await trio.to_thread.run_sync(thread.join, 5)
