"""The real client address behind proxies: PROXY protocol v1/v2 and X-Forwarded-For.

Headers are written byte for byte on real sockets to a real relay; the relay's ``refused`` and
``tunnel_opened`` log lines and its per-address limit show which address it believed.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import subprocess
import sys

import pytest
import trio
from relay_helpers import new_tunnel_id, parse_response, raw_http, running_relay, upgrade_request

from relay.proxy import (
    V2_SIGNATURE,
    ForwardedError,
    ProxyHeaderError,
    TrustedProxies,
    forwarded_client,
    parse_proxy_header,
)


def v1(source: str, family: str = "TCP4", dest: str = "127.0.0.1") -> bytes:
    return f"PROXY {family} {source} {dest} 51234 443\r\n".encode()


def v2(source: str, command: int = 1, tlv: bytes = b"") -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        family, body = 0x11, struct.pack("!4s4sHH", address.packed, bytes(4), 51234, 443)
    else:
        family, body = 0x21, struct.pack("!16s16sHH", address.packed, bytes(16), 51234, 443)
    body += tlv
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


# -- the parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "source"),
    [
        (v1("203.0.113.7"), "203.0.113.7"),
        (v1("2001:db8::1", "TCP6", "::1"), "2001:db8::1"),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ff ff 1 2\r\n", None),
        (v2("198.51.100.9"), "198.51.100.9"),
        (v2("2001:db8::2"), "2001:db8::2"),
        (v2("::ffff:192.0.2.1"), "192.0.2.1"),
        (v2("198.51.100.9", tlv=b"\x04\x00\x01x"), "198.51.100.9"),
        (v2("198.51.100.9", command=0), None),
    ],
)
def test_proxy_headers_name_their_source(header: bytes, source: str | None) -> None:
    parsed = parse_proxy_header(header + b"GET / HTTP/1.1\r\n")
    assert parsed is not None
    assert (parsed.source, parsed.length) == (source, len(header))
    # Every strict prefix asks for more bytes instead of failing.
    for cut in range(len(header)):
        assert parse_proxy_header(header[:cut]) is None if cut else True


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 'TCP4|TCP6"),
        (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "not an address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "expected 'TCP4|TCP6"),
        (b"PROXY " + b"x" * 120, "no CRLF within 107 bytes"),
        (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "must end with CRLF"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "expected a PROXY protocol header"),
        (V2_SIGNATURE + b"\x10\x11\x00\x0c" + bytes(12), "version 1, expected 2"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "IPv4 address block too short"),
        (V2_SIGNATURE + b"\x21\x31\x00\x00", "unsupported address family 0x31"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "too long"),
    ],
)
def test_malformed_proxy_headers_say_what_is_wrong(header: bytes, fragment: str) -> None:
    with pytest.raises(ProxyHeaderError, match=fragment.replace("|", r"\|")):
        parse_proxy_header(header)


def test_forwarded_for_takes_the_rightmost_untrusted_address() -> None:
    trusted = TrustedProxies(("10.0.0.0/8", "127.0.0.1"))
    assert forwarded_client([b"198.51.100.1, 10.1.1.1"], "127.0.0.1", trusted) == "198.51.100.1"
    # A client cannot choose its address by prepending one: the proxy appended the real one.
    assert forwarded_client([b"1.1.1.1, 203.0.113.5"], "127.0.0.1", trusted) == "203.0.113.5"
    assert forwarded_client([b"10.2.2.2", b"10.3.3.3"], "127.0.0.1", trusted) == "10.2.2.2"
    with pytest.raises(ForwardedError, match="not an IP address"):
        forwarded_client([b"unknown"], "127.0.0.1", trusted)
    with pytest.raises(ForwardedError, match="empty entry"):
        forwarded_client([b"1.2.3.4,,5.6.7.8"], "127.0.0.1", trusted)


# -- through a real relay -----------------------------------------------------------------------


async def open_raw(port: int, data: bytes) -> tuple[trio.SocketStream, bytes]:
    """Send ``data`` on a new connection; return the still-open stream and the response head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    response = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in response:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            response += chunk
    return stream, response


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


async def test_proxy_protocol_gives_the_real_client_to_logs_and_limits(caplog):
    caplog.set_level(logging.INFO, logger="relay")
    async with running_relay(
        trusted_proxies=("127.0.0.1",), proxy_protocol=True, max_connections_per_address=1
    ) as relay:
        first, response = await open_raw(
            relay.port, v1("203.0.113.7") + upgrade_request(f"/cable/new/{new_tunnel_id()}")
        )
        async with first:
            assert parse_response(response).status == 101
            # Another client behind the same proxy is not limited by the first one ...
            second, response = await open_raw(
                relay.port, v2("2001:db8::5") + upgrade_request(f"/cable/new/{new_tunnel_id()}")
            )
            async with second:
                assert parse_response(response).status == 101
                # ... but the same client is: the limit counts the real address.
                third, response = await open_raw(
                    relay.port,
                    v2("203.0.113.7") + upgrade_request(f"/cable/new/{new_tunnel_id()}"),
                )
                async with third:
                    assert parse_response(response).status == 429
                # A LOCAL header (the proxy's own health check) is the proxy itself.
                health = await raw_http(
                    relay.port,
                    v2("0.0.0.0", command=0) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                )
                assert health.status == 200
    clients = [e["client"] for e in events(caplog, "tunnel_opened")]
    assert clients == ["203.0.113.7", "2001:db8::5"]
    assert [(e["reason"], e["client"]) for e in events(caplog, "refused")] == [
        ("address_limit", "203.0.113.7")
    ]


@pytest.mark.parametrize(
    "garbage",
    [
        b"PROXY TCP4 1.2.3.4 nonsense\r\n",
        b"PROXY " + b"9" * 200,
        V2_SIGNATURE + b"\x21\x31\x00\x00",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all from the proxy
    ],
)
async def test_malformed_proxy_header_is_refused_cleanly_and_logged(caplog, garbage):
    caplog.set_level(logging.INFO, logger="relay")
    async with running_relay(trusted_proxies=("127.0.0.1",), proxy_protocol=True) as relay:
        response = await raw_http(relay.port, garbage)
        assert response.status == 400
        assert b"PROXY" in response.body
        # The relay still serves a well-formed proxied request afterwards.
        health = await raw_http(
            relay.port, v1("192.0.2.44") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert health.status == 200
        assert relay.stats.refusals["proxy_malformed"] == 1
    (refused,) = events(caplog, "refused")
    assert refused["reason"] == "proxy_malformed" and refused["client"] == "127.0.0.1"
    assert refused["detail"]


async def test_proxy_header_from_an_untrusted_peer_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="relay")
    async with running_relay(trusted_proxies=("192.0.2.0/24",), proxy_protocol=True) as relay:
        response = await raw_http(
            relay.port, v1("203.0.113.7") + upgrade_request(f"/cable/new/{new_tunnel_id()}")
        )
        assert response.status == 400
        assert relay.live_tunnels() == 0
        # A direct client without a header is served as before.
        direct, head = await open_raw(relay.port, upgrade_request(f"/cable/new/{new_tunnel_id()}"))
        async with direct:
            assert parse_response(head).status == 101
    assert [(e["reason"], e["client"]) for e in events(caplog, "refused")] == [
        ("proxy_untrusted", "127.0.0.1")
    ]
    assert [e["client"] for e in events(caplog, "tunnel_opened")] == ["127.0.0.1"]


async def test_untrusted_forwarded_for_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="relay")
    async with running_relay() as relay:
        extra = "X-Forwarded-For: 198.51.100.23\r\n"
        response = await raw_http(
            relay.port, upgrade_request(f"/cable/new/{new_tunnel_id()}", extra=extra)
        )
        assert response.status == 403
        assert b"trusted proxies" in response.body
        assert relay.live_tunnels() == 0
    (refused,) = events(caplog, "refused")
    assert (refused["reason"], refused["client"]) == ("forwarded_untrusted", "127.0.0.1")


async def test_trusted_forwarded_for_gives_the_real_client(caplog):
    caplog.set_level(logging.INFO, logger="relay")
    async with running_relay(
        trusted_proxies=("127.0.0.0/8",), max_connections_per_address=1
    ) as relay:
        streams = []
        statuses = []
        for client in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
            extra = f"X-Forwarded-For: 10.0.0.1, {client}\r\n"
            stream, head = await open_raw(
                relay.port, upgrade_request(f"/cable/new/{new_tunnel_id()}", extra=extra)
            )
            streams.append(stream)
            statuses.append(parse_response(head).status)
        bad = await raw_http(
            relay.port,
            upgrade_request(f"/cable/new/{new_tunnel_id()}", extra="X-Forwarded-For: bogus\r\n"),
        )
        for stream in streams:
            await stream.aclose()
    assert statuses == [101, 101, 429]
    assert bad.status == 400
    assert [e["client"] for e in events(caplog, "tunnel_opened")] == [
        "198.51.100.1",
        "198.51.100.2",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trusted-proxies", "10.0.0.0/33"], "not an IP address or network"),
        (["--proxy-protocol"], "proxy-protocol needs --trusted-proxies"),
        (["--trusted-proxies", "127.0.0.1", "--proxy-protocol", "maybe"], "expected true or false"),
    ],
)
def test_proxy_options_are_validated(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", *argv], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
