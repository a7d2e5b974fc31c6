"""Raw TCP copy loop: the floor of the relay benchmark. NOT a WebSocket relay.

It pairs two TCP connections by a tiny preamble and then copies bytes blindly both ways, so its
cost is what the kernel and the event loop charge for moving the bytes, with no HTTP, no WebSocket
framing and no masking. The load generator speaks length-prefixed frames over it
(4-byte big-endian length + payload) so that message counts compare with the WebSocket relays.

Preamble (client -> relay): ``b"N" + tunnel_id`` (16 bytes) to create a pending tunnel, answered
with ``b"R" + routing_id`` (3 bytes); ``b"C" + routing_id + tunnel_id`` to join it, answered with
``b"K"``. An unknown or duplicate tunnel gets the connection closed. When either side closes, the
other is closed.

usage: python bench/reference/tcp_relay.py [--host 127.0.0.1] [--port 0]
Runs on uvloop when it is installed. Logs ``{"event": "listening", "port": P}`` on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

ROUTING_ID = os.urandom(3)
NEW_LEN = 1 + 16
CONNECT_LEN = 1 + 3 + 16

pending: dict[bytes, Pipe] = {}


class Pipe(asyncio.Protocol):
    """One TCP connection; after pairing, data_received writes straight into the peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.head = b""
        self.tid: bytes | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            peer.transport.write(data)  # type: ignore[union-attr]
            return
        if self.tid is not None:  # waiting for the desktop: keep what the phone sends early
            self.early.append(data)
            return
        self.head += data
        kind = self.head[:1]
        if kind == b"N" and len(self.head) >= NEW_LEN:
            tid, rest = self.head[1:NEW_LEN], self.head[NEW_LEN:]
            if tid in pending:
                self.transport.close()  # type: ignore[union-attr]
                return
            self.tid = tid
            pending[tid] = self
            self.transport.write(b"R" + ROUTING_ID)  # type: ignore[union-attr]
            if rest:
                self.early.append(rest)
        elif kind == b"C" and len(self.head) >= CONNECT_LEN:
            tid, rest = self.head[4:CONNECT_LEN], self.head[CONNECT_LEN:]
            other = pending.pop(tid, None)
            if other is None:
                self.transport.close()  # type: ignore[union-attr]
                return
            self.peer, other.peer = other, self
            self.transport.write(b"K")  # type: ignore[union-attr]
            for chunk in other.early:
                self.transport.write(chunk)  # type: ignore[union-attr]
            other.early.clear()
            if rest:
                other.transport.write(rest)  # type: ignore[union-attr]
        elif kind not in (b"N", b"C", b""):
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tid is not None and pending.get(self.tid) is self:
            del pending[self.tid]
        if self.peer is not None:
            self.peer.transport.close()  # type: ignore[union-attr]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Pipe, args.host, args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "listening", "port": port}), file=sys.stderr, flush=True)
    await server.serve_forever()


def run() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


if __name__ == "__main__":
    try:
        run()
    except KeyboardInterrupt:
        pass
