"""The relay's HTTP strictness on the opening handshake (issue 12, point 11), over raw sockets.

RFC 6455 section 4.2.1 and 11.3, RFC 9112 section 2.2 (RFC 7230 section 3.5): the head limit is
exact however the head is segmented; only HTTP/1.1 upgrades; one ``Sec-WebSocket-Key`` and one
``Sec-WebSocket-Version``; no body framing on an upgrade; empty lines before the request line are
ignored; bytes that cannot begin a request are refused at once, not after the handshake deadline.
"""

from __future__ import annotations

import base64
import secrets

import pytest
import trio
from relay_helpers import new_tunnel_id, parse_response, running_relay

from relay.config import DEFAULT_MAX_REQUEST_HEAD


def upgrade(
    path: str, *, version: str = "1.1", extra: str = "", pad_to: int | None = None
) -> bytes:
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        f"GET {path} HTTP/{version}",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: fido.cable",
    ]
    head = "\r\n".join(lines) + "\r\n" + extra
    if pad_to is not None:
        # One padding header sized so that the whole head is exactly ``pad_to`` bytes.
        filler = pad_to - len(head) - len("X-Pad: \r\n\r\n")
        head += "X-Pad: " + "p" * filler + "\r\n"
    data = (head + "\r\n").encode("latin-1")
    assert pad_to is None or len(data) == pad_to
    return data


async def exchange(port: int, chunks: list[bytes], *, gap: float = 0.0, timeout: float = 5.0):
    """Send ``chunks`` (pausing ``gap`` between them); the status and seconds to the answer."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            started = trio.current_time()
            for chunk in chunks:
                try:
                    await stream.send_all(chunk)
                except trio.BrokenResourceError:
                    break
                if gap:
                    await trio.sleep(gap)
            data = b""
            while b"\r\n\r\n" not in data:
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                data += chunk
            return parse_response(data).status, trio.current_time() - started


def segments(data: bytes, count: int) -> list[bytes]:
    size = -(-len(data) // count)
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("count", [1, 10, 100])
async def test_the_head_limit_is_exact_however_the_head_is_segmented(count):
    async with running_relay() as relay:
        limit = DEFAULT_MAX_REQUEST_HEAD
        fits = upgrade(f"/cable/new/{new_tunnel_id()}", pad_to=limit)
        status, _ = await exchange(relay.port, segments(fits, count), gap=0.001)
        assert status == 101
        over = upgrade(f"/cable/new/{new_tunnel_id()}", pad_to=limit + 1)
        status, _ = await exchange(relay.port, segments(over, count), gap=0.001)
        assert status == 431
        much_over = upgrade(f"/cable/new/{new_tunnel_id()}", pad_to=12_288)
        status, _ = await exchange(relay.port, segments(much_over, count), gap=0.001)
        assert status == 431


@pytest.mark.parametrize("version", ["1.0", "1.2", "2.0"])
async def test_only_http_1_1_upgrades_are_accepted(version):
    async with running_relay() as relay:
        status, _ = await exchange(
            relay.port, [upgrade(f"/cable/new/{new_tunnel_id()}", version=version)]
        )
        assert status in (400, 505)
        assert len(relay.tunnels) == 0


@pytest.mark.parametrize(
    "extra",
    [
        f"Sec-WebSocket-Key: {base64.b64encode(b'k' * 16).decode()}\r\n",
        "Sec-WebSocket-Version: 13\r\n",
        "Content-Length: 0\r\n",
        "Content-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\n",
    ],
    ids=["second-key", "second-version", "content-length-0", "content-length-5", "chunked"],
)
async def test_repeated_handshake_headers_and_body_framing_are_refused(extra):
    async with running_relay() as relay:
        status, _ = await exchange(
            relay.port, [upgrade(f"/cable/new/{new_tunnel_id()}", extra=extra)]
        )
        assert status == 400
        assert len(relay.tunnels) == 0


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n", b"\n"])
async def test_empty_lines_before_the_request_line_are_ignored(prefix):
    async with running_relay() as relay:
        request = upgrade(f"/cable/new/{new_tunnel_id()}")
        status, _ = await exchange(relay.port, [prefix + request])
        assert status == 101
        status, _ = await exchange(relay.port, [prefix, request], gap=0.05)
        assert status == 101


CANNOT_BE_HTTP = {
    "TLS ClientHello": bytes.fromhex("16030100c8010000c40303") + secrets.token_bytes(32),
    "NUL bytes": b"\x00" * 16,
    "WebSocket frame": b"\x82\x85\x00\x00\x00\x00hello",
    "space first": b" GET / HTTP/1.1\r\n",
}


@pytest.mark.parametrize("data", list(CANNOT_BE_HTTP.values()), ids=list(CANNOT_BE_HTTP))
async def test_bytes_that_cannot_start_a_request_get_400_at_once(data):
    async with running_relay(handshake_timeout=10) as relay:
        status, seconds = await exchange(relay.port, [data])
        assert status == 400
        assert seconds < 2, seconds


async def test_plain_http_1_0_health_check_still_works():
    async with running_relay() as relay:
        status, _ = await exchange(relay.port, [b"GET /healthz HTTP/1.0\r\n\r\n"])
        assert status == 200
