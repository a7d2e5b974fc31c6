"""A relay as a real process for resource tests (memory, file descriptors), plus raw WS clients.

``relay_process(tmp_path, *args, prefix=(...))`` starts ``python -m relay --port 0 ARGS``
(optionally under a wrapper such as ``prlimit``), with its JSON log in a file so no pipe can
fill up, waits for the ``listening`` line and yields a ``RelayProcess``; the process is killed on
exit. ``raw_ws`` opens a WebSocket with a hand-written upgrade, cheap enough to hold hundreds.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio


@dataclass
class RelayProcess:
    process: trio.Process
    port: int
    log: Path

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


@asynccontextmanager
async def relay_process(
    tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()
) -> AsyncIterator[RelayProcess]:
    log = tmp_path / f"relay-{secrets.token_hex(4)}.log"
    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            [*prefix, sys.executable, "-m", "relay", "--port", "0", *args],
            stderr=sink,
            stdout=sink,
        )
    try:
        with trio.fail_after(20):
            while True:
                found = [line for line in _lines(log) if line.get("event") == "listening"]
                if found:
                    break
                assert process.poll() is None, log.read_text()
                await trio.sleep(0.05)
        yield RelayProcess(process, found[0]["port"], log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client frame (masked with an all-zero key, which leaves the payload as it is)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


async def raw_ws(
    port: int, path: str, *, source: str | None = None
) -> tuple[trio.SocketStream, int, dict[str, str]]:
    """Upgrade ``path``; (stream, status, lower-case headers). The caller closes the stream."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: fido.cable\r\n\r\n"
    )
    await stream.send_all(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1]) if head and " " in head[0] else 0
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return stream, status, headers


async def read_close_code(stream: trio.SocketStream, timeout: float = 5.0) -> int | None:
    """Read server frames until a close frame; its code (None if the socket just ended)."""
    buf = b""
    with trio.move_on_after(timeout):
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 2:
                opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
                start = 2
                if n == 126:
                    n, start = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, start = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < start + n:
                    break
                payload, buf = buf[start : start + n], buf[start + n :]
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return None
