"""The tunnel client against small trio-websocket servers that break the rules on purpose."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import serve_websocket

from hybrid.tunnel.client import (
    RelayUnreachableError,
    TunnelClosedError,
    TunnelProtocolError,
    open_tunnel,
)


async def start_server(nursery, handler) -> str:
    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}"


def accepting(subprotocol="fido.cable", headers=(), then=None):
    async def handler(request) -> None:
        ws = await request.accept(subprotocol=subprotocol, extra_headers=list(headers))
        if then is not None:
            await then(ws)
        else:
            await trio.sleep_forever()

    return handler


async def test_routing_id_header_is_read_case_insensitively(nursery) -> None:
    url = await start_server(nursery, accepting(headers=[(b"x-cable-routing-id", b"a1b2C3")]))
    async with open_tunnel(url + "/cable/new/" + "00" * 16) as tunnel:
        assert tunnel.routing_id == bytes.fromhex("a1b2c3")


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"X-caBLE-Routing-ID", b"a1b2")],
        [(b"X-caBLE-Routing-ID", b"zzzzzz")],
        [(b"X-caBLE-Routing-ID", b"a1b2c3"), (b"X-caBLE-Routing-ID", b"a1b2c3")],
    ],
)
async def test_missing_or_malformed_routing_id_is_a_protocol_error(nursery, headers) -> None:
    url = await start_server(nursery, accepting(headers=headers))
    async with open_tunnel(url + "/x") as tunnel:
        with pytest.raises(TunnelProtocolError):
            _ = tunnel.routing_id


async def test_relay_must_echo_the_fido_cable_subprotocol(nursery) -> None:
    url = await start_server(nursery, accepting(subprotocol=None))
    with pytest.raises(RelayUnreachableError, match="fido.cable"):
        async with open_tunnel(url + "/x"):
            pass


async def test_http_rejection_is_relay_unreachable_with_the_status(nursery) -> None:
    async def reject(request) -> None:
        await request.reject(404)

    url = await start_server(nursery, reject)
    with pytest.raises(RelayUnreachableError) as caught:
        async with open_tunnel(url + "/x"):
            pass
    assert caught.value.status_code == 404


async def test_nothing_listening_is_relay_unreachable() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(RelayUnreachableError):
        async with open_tunnel(f"ws://127.0.0.1:{port}/x", connect_timeout=2):
            pass


async def test_text_messages_are_rejected_and_close_is_reported(nursery) -> None:
    async def talk(ws) -> None:
        await ws.send_message(b"\x01\x02")
        await ws.send_message("text")
        await ws.aclose()

    url = await start_server(nursery, accepting(then=talk))
    async with open_tunnel(url + "/x") as tunnel:
        assert await tunnel.receive() == b"\x01\x02"
        with pytest.raises(TunnelProtocolError, match="text"):
            await tunnel.receive()
        with pytest.raises(TunnelClosedError):
            await tunnel.receive()
