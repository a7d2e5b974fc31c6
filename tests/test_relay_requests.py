"""The relay's pure parts: request decisions and routing-id allocation (no sockets)."""

from __future__ import annotations

import base64
import itertools
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import routing
from relay.config import ConfigError, RelayConfig
from relay.requests import (
    ConnectTunnel,
    ContactTunnel,
    NewTunnel,
    PlainGet,
    Refusal,
    Upgrade,
    decide,
    parse_target,
)
from relay.routing import RoutingIdAllocator, RoutingIdsExhausted, routing_id_hex

TID = bytes(range(16))
KEY = base64.b64encode(b"k" * 16)


def headers(subprotocol: bytes = b"fido.cable", **extra: bytes) -> list[tuple[bytes, bytes]]:
    result = [
        (b"host", b"relay"),
        (b"upgrade", b"websocket"),
        (b"connection", b"keep-alive, Upgrade"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", subprotocol),
    ]
    result.extend((k.replace("_", "-").encode(), v) for k, v in extra.items())
    return result


def test_tunnel_paths_parse_in_either_hex_case():
    assert parse_target(b"/cable/new/" + TID.hex().upper().encode()) == NewTunnel(TID)
    assert parse_target(b"/cable/new/" + TID.hex().encode()) == NewTunnel(TID)
    target = b"/cable/connect/0aBc0F/" + TID.hex().encode()
    assert parse_target(target) == ConnectTunnel(bytes.fromhex("0abc0f"), TID)
    assert parse_target(b"/cable/contact/AAEC") == ContactTunnel(b"\x00\x01\x02")
    assert parse_target(b"/healthz") == PlainGet(b"/healthz")
    assert parse_target(b"/metrics") == PlainGet(b"/metrics")


@pytest.mark.parametrize(
    "target",
    [
        b"http://relay/cable/new/" + TID.hex().encode(),
        b"*",
        b"/cable/new/" + TID.hex().encode() + b"?",
        b"/cable/new/ " + TID.hex().encode()[1:],
        b"/cable/new/" + b"0 " * 16,
        b"/cable//new/" + TID.hex().encode(),
        b"/cable/NEW/" + TID.hex().encode(),
    ],
)
def test_odd_targets_are_malformed(target):
    result = parse_target(target)
    assert isinstance(result, Refusal) and result.status == 400


def test_decide_returns_the_upgrade_with_its_key():
    target = b"/cable/new/" + TID.hex().encode()
    assert decide(b"GET", target, headers()) == Upgrade(NewTunnel(TID), KEY)
    several = headers(subprotocol=b"a, b")
    several.append((b"sec-websocket-protocol", b"fido.cable"))
    assert isinstance(decide(b"GET", target, several), Upgrade)


@pytest.mark.parametrize(
    ("method", "hdrs", "status"),
    [
        (b"POST", headers(), 405),
        (b"GET", headers(subprotocol=b"fido.cable2"), 400),
        (b"GET", headers(subprotocol=b"FIDO.CABLE"), 400),
        (b"GET", [h for h in headers() if h[0] != b"upgrade"], 400),
        (b"GET", [h for h in headers() if h[0] != b"sec-websocket-key"], 400),
        (b"GET", headers()[:4] + [(b"sec-websocket-version", b"12")] + headers()[5:], 426),
        (b"GET", headers()[:3] + [(b"sec-websocket-key", b"c2hvcnQ=")] + headers()[4:], 400),
    ],
)
def test_decide_refusals(method, hdrs, status):
    result = decide(method, b"/cable/new/" + TID.hex().encode(), hdrs)
    assert isinstance(result, Refusal) and result.status == status


def test_origin_allow_list_only_judges_a_present_origin():
    target = b"/cable/new/" + TID.hex().encode()
    allowed = ("https://relay.example",)
    assert isinstance(decide(b"GET", target, headers(), allowed), Upgrade)
    ok = headers(origin=b"https://relay.example")
    assert isinstance(decide(b"GET", target, ok, allowed), Upgrade)
    bad = decide(b"GET", target, headers(origin=b"https://evil.example"), allowed)
    assert isinstance(bad, Refusal) and bad.status == 403
    assert isinstance(decide(b"GET", target, headers(origin=b"https://evil")), Upgrade)


@given(st.binary(max_size=120), st.sampled_from([b"GET", b"POST", b"HEAD"]))
def test_decide_never_raises_on_arbitrary_targets(target, method):
    result = decide(method, target, headers())
    assert isinstance(result, Refusal | PlainGet | Upgrade)
    if isinstance(result, Upgrade) and isinstance(result.route, NewTunnel):
        assert target.lower() == b"/cable/new/" + result.route.tunnel_id.hex().encode()


@given(
    st.text(alphabet="0123456789abcdefABCDEF/.?%-", max_size=60).map(
        lambda s: ("/cable/" + s).encode()
    )
)
def test_near_miss_tunnel_paths_are_refused_or_exact(target):
    result = parse_target(target)
    if isinstance(result, NewTunnel):
        assert target == b"/cable/new/" + target[-32:] and len(target) == 43
    elif isinstance(result, ConnectTunnel):
        assert len(target) == len(b"/cable/connect/") + 6 + 1 + 32
    else:
        assert isinstance(result, Refusal | ContactTunnel)


def test_routing_ids_carry_the_prefix_and_redraw_collisions():
    draws = itertools.chain([b"\x01\x02", b"\x01\x02", b"\x03\x04"])
    allocator = RoutingIdAllocator(b"\x0a", randbytes=lambda n: next(draws))
    first = allocator.allocate(set())
    assert first == b"\x0a\x01\x02"
    assert allocator.allocate({first}) == b"\x0a\x03\x04"
    assert routing_id_hex(first) == "0A0102"
    assert allocator.belongs_here(first) and not allocator.belongs_here(b"\x0b\x01\x02")


def test_exhausted_routing_id_space_raises():
    allocator = RoutingIdAllocator(b"\x0a\x0b", randbytes=lambda n: b"\x00")
    with pytest.raises(RoutingIdsExhausted):
        allocator.allocate({b"\x0a\x0b\x00"})


def test_default_routing_ids_are_random_and_three_bytes():
    allocator = RoutingIdAllocator()
    live: set[bytes] = set()
    for _ in range(2000):
        rid = allocator.allocate(live)
        assert len(rid) == 3 and rid not in live
        live.add(rid)


def test_the_random_pool_hands_out_each_byte_once_and_refills():
    size = routing._POOL_SIZE
    drawn = [routing.pooled_random(3) for _ in range(size + 7)]  # about three pools' worth
    assert all(len(d) == 3 for d in drawn)
    # A pool handed out twice, or never refilled, would repeat its draws; random 3-byte draws
    # collide about once in this many.
    assert len(set(drawn)) > len(drawn) - 10
    assert len(routing.pooled_random(size + 5)) == size + 5  # a draw larger than a pool


def test_a_forked_child_does_not_repeat_the_parents_random_bytes():
    routing.pooled_random(3)  # the parent's pool is filled
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first draws, to the parent
        try:
            os.write(write_end, b"".join(routing.pooled_random(3) for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = b"".join(routing.pooled_random(3) for _ in range(8))
    assert len(child) == 24 and child != parent


@pytest.mark.parametrize(
    "bad",
    [
        {"node_prefix": b"\x01\x02\x03"},
        {"max_message_size": 0},
        {"wait_timeout": -1},
        {"tls_cert": "cert.pem"},
        {"port": 70000},
    ],
)
def test_config_rejects_unusable_values(bad):
    with pytest.raises(ConfigError):
        RelayConfig(**bad)
