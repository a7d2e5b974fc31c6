"""Non-blocking socket calls for plain TCP streams, with trio's generic stream path as fallback.

Trio's stream layers (conflict detectors, error translation, memoryview contexts, a checkpoint
before and after every call) cost more CPU than relaying a message. On a plain
``trio.SocketStream`` the relay makes the non-blocking calls itself and waits with
``wait_readable``/``wait_writable``; TLS streams (``trio.SSLStream``) keep the generic path.
Errors surface as ``OSError`` (raw path) or trio's stream errors (generic path); callers catch
both.
"""

from __future__ import annotations

import socket
from typing import cast

import trio
from trio.lowlevel import cancel_shielded_checkpoint, wait_readable, wait_writable

STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking stdlib socket under a plain ``trio.SocketStream``, else None.

    Going through the stdlib socket object (trio keeps it as ``_sock``), not its file descriptor,
    means a closed socket fails with EBADF instead of touching a reused descriptor.
    """
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


def raw_listener_socket(listener: object) -> socket.socket | None:
    """The non-blocking stdlib socket under a plain ``trio.SocketListener``, else None."""
    if type(listener) is not trio.SocketListener:
        return None
    raw = getattr(listener.socket, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


async def receive_some(
    stream: trio.abc.Stream,
    raw: socket.socket | None,
    size: int,
    eager: bool = True,
    yield_when_ready: bool = True,
) -> bytes:
    """Up to ``size`` bytes; b"" at EOF. A checkpoint unless ``yield_when_ready`` is False.

    ``yield_when_ready=False`` returns data that was ready without yielding: only for a read
    that happens once per connection (the request head), whose task waits soon after anyway.

    ``eager=False`` skips the first, speculative ``recv``: after a short read the socket was
    drained, and in request/response traffic that try almost always fails (a syscall and an
    exception for nothing) before the wait that follows anyway.
    """
    if raw is None:
        # trio's streams return bytes (their annotation also allows bytearray).
        return cast(bytes, await stream.receive_some(size))
    if eager:
        try:
            data = raw.recv(size)
        except BlockingIOError:
            pass
        else:
            # Data was ready without waiting: still yield, so a busy peer cannot starve others,
            # but shielded, as trio does, so bytes already taken from the socket are not lost.
            if yield_when_ready:
                await cancel_shielded_checkpoint()
            return data
    while True:
        await wait_readable(raw)
        try:
            return raw.recv(size)
        except BlockingIOError:
            continue


async def send_all(
    stream: trio.abc.Stream, raw: socket.socket | None, data: bytes | bytearray | memoryview
) -> None:
    """Write all of ``data``.

    On the raw path a write the kernel takes at once does not yield: every relay task reads
    between writes, and each read is a checkpoint.
    """
    if raw is None:
        await stream.send_all(data)
        return
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)
    while sent < len(view):
        await wait_writable(raw)
        try:
            sent += raw.send(view[sent:])
        except BlockingIOError:
            continue
