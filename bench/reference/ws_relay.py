"""Minimal caBLE relay on the `websockets` library (asyncio): a benchmark reference point.

It implements only what the benchmark drives: ``/cable/new/<tid>`` (routing ID returned in
``X-caBLE-Routing-ID``), ``/cable/connect/<rid>/<tid>``, binary forwarding both ways and close
propagation. No TTLs, quotas or contact tunnels: it is a yardstick, not a relay to deploy.

usage: python bench/reference/ws_relay.py [--host 127.0.0.1] [--port 0]
Logs one JSON line ``{"event": "listening", "port": P}`` on stderr once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

SUBPROTOCOL = "fido.cable"
ROUTING_ID = os.urandom(3).hex().upper()
NEW_RE = re.compile(r"/cable/new/([0-9A-Fa-f]{32})")
CONNECT_RE = re.compile(r"/cable/connect/([0-9A-Fa-f]{6})/([0-9A-Fa-f]{32})")


@dataclass
class Tunnel:
    tid: str
    new_conn: ServerConnection
    peer: asyncio.Future[ServerConnection] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


pending: dict[str, Tunnel] = {}


def process_request(conn: ServerConnection, request: Request) -> Response | None:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    if SUBPROTOCOL not in (p.strip() for p in offered.split(",")):
        return conn.respond(400, "missing fido.cable subprotocol\n")
    if m := NEW_RE.fullmatch(request.path):
        if m[1].upper() in pending:
            return conn.respond(409, "tunnel exists\n")
        return None
    if m := CONNECT_RE.fullmatch(request.path):
        if m[2].upper() not in pending:
            return conn.respond(404, "no such tunnel\n")
        return None
    return conn.respond(404, "not found\n")


def process_response(conn: ServerConnection, request: Request, response: Response) -> None:
    # Register / claim the tunnel only once the upgrade is certain, so a failed handshake leaks
    # nothing; there is no await between process_request and here.
    if response.status_code != 101:
        return
    if m := NEW_RE.fullmatch(request.path):
        response.headers["X-caBLE-Routing-ID"] = ROUTING_ID
        tunnel = Tunnel(m[1].upper(), conn)
        pending[tunnel.tid] = tunnel
        conn.tunnel = ("new", tunnel)  # type: ignore[attr-defined]
    elif m := CONNECT_RE.fullmatch(request.path):
        conn.tunnel = ("connect", pending.pop(m[2].upper()))  # type: ignore[attr-defined]


async def pump(src: ServerConnection, dst: ServerConnection) -> None:
    """Forward binary messages src -> dst until src closes, then close dst the same way."""
    try:
        async for message in src:
            if isinstance(message, str):
                await src.close(1003)
                break
            await dst.send(message)
    except ConnectionClosed:
        pass
    finally:
        await dst.close(1000 if src.close_code == 1000 else 1001)


async def handler(conn: ServerConnection) -> None:
    role, tunnel = conn.tunnel  # type: ignore[attr-defined]
    assert isinstance(tunnel, Tunnel)
    if role == "connect":
        tunnel.peer.set_result(conn)
        await pump(conn, tunnel.new_conn)
        return
    closed = asyncio.ensure_future(conn.wait_closed())
    try:
        waiters: list[asyncio.Future[Any]] = [tunnel.peer, closed]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if pending.get(tunnel.tid) is tunnel and not tunnel.peer.done():
            del pending[tunnel.tid]
    if not tunnel.peer.done():
        return
    closed.cancel()
    await pump(conn, tunnel.peer.result())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    async with serve(
        handler,
        args.host,
        args.port,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        process_request=process_request,
        process_response=process_response,
        compression=None,
        ping_interval=None,
        max_size=1 << 20,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"event": "listening", "port": port}), file=sys.stderr, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
