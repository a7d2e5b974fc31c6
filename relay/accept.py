"""The accept loop: taking TCP (or TLS) connections off a listener and handing each to a task.

It is ``trio.serve_listeners`` without its per-connection wrapper task layer. On a plain TCP
listener the loop accepts on the stdlib socket until the backlog is empty and only then waits: no
scheduler round trip per connection, and the peer address comes with the accept instead of a
getpeername call. Running out of file descriptors or memory backs off and retries, as trio
does, and says so in the relay's JSON log (``accept_failed``, at most once a second).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio.lowlevel import wait_readable

from relay.logs import log_event
from relay.rawio import raw_listener_socket

#: What a connection handler looks like: the stream and the client's address.
Handler = Callable[[trio.abc.Stream, str], Awaitable[None]]

_ACCEPT_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_ACCEPT_BACKOFF = 0.1
_ACCEPT_BURST = 32
# What trio.SocketListener.accept skips: failures of one would-be connection, not the listener.
_IGNORABLE_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
#: At most one accept_failed log line per this many seconds (the loop retries every 0.1 s).
_ACCEPT_LOG_INTERVAL = 1.0


def peer_address(stream: trio.abc.Stream) -> str:
    """The client IP address of an accepted stream (TLS or plain), or ``"unknown"``."""
    inner: Any = getattr(stream, "transport_stream", stream)
    try:
        return str(inner.socket.getpeername()[0])
    except (AttributeError, OSError, IndexError):
        return "unknown"


async def accept_loop(
    listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery, handle: Handler
) -> None:
    """Accept on ``listener`` until cancelled; each connection runs ``handle`` in ``nursery``."""
    raw = raw_listener_socket(listener)
    logged_at = -_ACCEPT_LOG_INTERVAL
    failures = 0
    async with listener:
        burst = 0
        while True:
            try:
                if raw is None:
                    stream = await listener.accept()
                    address = peer_address(stream)
                else:
                    try:
                        sock, peer = raw.accept()
                    except BlockingIOError:
                        burst = 0
                        await wait_readable(raw)
                        continue
                    except OSError as exc:
                        if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                            # The client gave up before we accepted it, as in trio.
                            continue
                        if exc.errno == errno.EBADF:
                            raise trio.ClosedResourceError from None
                        raise
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                    address = str(peer[0]) if peer else "unknown"
                    burst += 1
                    if burst >= _ACCEPT_BURST:
                        # Let the handlers of a long burst run before accepting more.
                        burst = 0
                        await trio.lowlevel.checkpoint()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                # Out of file descriptors or memory: back off like trio.serve_listeners.
                failures += 1
                now = time.monotonic()
                if now - logged_at >= _ACCEPT_LOG_INTERVAL:
                    log_event(
                        "accept_failed",
                        logging.ERROR,
                        errno=errno.errorcode[exc.errno],
                        error=os.strerror(exc.errno),
                        failures=failures,
                        retry_s=_ACCEPT_BACKOFF,
                    )
                    logged_at = now
                    failures = 0
                await trio.sleep(_ACCEPT_BACKOFF)
            else:
                nursery.start_soon(handle, stream, address)
