"""Pins the trio internals the relay's fast path relies on (pyproject.toml bounds trio for it).

``relay.rawio`` takes the stdlib socket under ``trio.SocketStream`` and ``trio.SocketListener``
(trio keeps it as ``.socket._sock``) to make non-blocking calls itself. If a trio release moves
it, these tests fail instead of the relay silently taking its slow generic path.
"""

from __future__ import annotations

import socket

import trio

from relay.rawio import raw_listener_socket, raw_socket


async def test_socket_stream_keeps_its_stdlib_socket_as_socket_sock():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    try:
        raw_listener = raw_listener_socket(listener)
        assert isinstance(raw_listener, socket.socket)
        assert raw_listener.fileno() == listener.socket.fileno()
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        async with client, server:
            for stream in (client, server):
                assert type(stream) is trio.SocketStream
                raw = raw_socket(stream)
                assert isinstance(raw, socket.socket)
                assert raw.fileno() == stream.socket.fileno()
                assert raw.getblocking() is False
            raw_socket(client).send(b"through the raw socket")  # type: ignore[union-attr]
            assert await server.receive_some(100) == b"through the raw socket"
    finally:
        await listener.aclose()


def test_trio_wraps_accepted_stdlib_sockets_like_the_accept_loop_does():
    # relay.accept builds streams with trio.socket.from_stdlib_socket on accepted sockets.
    left, right = socket.socketpair()
    left.setblocking(False)
    try:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
        assert raw_socket(stream) is left
    finally:
        left.close()
        right.close()
