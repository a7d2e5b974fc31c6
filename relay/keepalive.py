"""Keep-alive: WebSocket pings from the relay on every tunnel socket, and closing silent peers.

Proxies and NATs cut connections that carry nothing for a while (nginx's default
``proxy_read_timeout`` is 60 s, as long as a user may take to decide), and each side would then
blame the other. Every ``--ping-interval`` seconds one task walks the live tunnels and pings each
socket; a socket whose previous ping got no pong by then has a silent peer, and its tunnel ends
with ``ping_timeout`` (1001 to both sides, the text naming the silent side). Nothing is added to
the forwarding path: the parser counts pong frames, and this task compares counts.
"""

from __future__ import annotations

import trio

from relay.reasons import ENDS
from relay.tunnel import Tunnels
from relay.wsframe import ping_frame

_PING = ping_frame(b"hybrid-relay keep-alive")
_AUTHENTICATOR_SILENT = ENDS["authenticator_silent"]
_INITIATOR_SILENT = ENDS["initiator_silent"]
#: Longest one socket's ping may take to write (TLS only: plain sockets never block on it).
_PING_WRITE_TIMEOUT = 1.0


async def keep_alive(tunnels: Tunnels, interval: float) -> None:
    """Ping every tunnel socket each ``interval`` seconds until cancelled."""
    while True:
        await trio.sleep(interval)
        for tunnel in list(tunnels.by_id.values()):
            if tunnel.end is not None:
                continue
            for ws, silent in (
                (tunnel.authenticator, _AUTHENTICATOR_SILENT),
                (tunnel.initiator, _INITIATOR_SILENT),
            ):
                if ws is None or tunnel.end is not None:
                    continue
                if ws.silent():
                    tunnel.finish(silent)
                    continue
                with trio.move_on_after(_PING_WRITE_TIMEOUT):
                    await ws.ping(_PING)
