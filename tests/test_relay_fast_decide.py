"""``relay.requests.fast_upgrade`` against the general decision it short-cuts.

The fast path may decline anything (None), but whatever it accepts must be exactly what
``decide_general`` decides for the same request. Requests are built from the ordinary upgrade with
every part varied: method, version, target, each header present zero to two times, names in any
case, values exact, differently cased, padded, listed or wrong, extra headers (body headers,
Origin, others) and an Origin allow-list.
"""

from __future__ import annotations

import base64
import os

from hypothesis import given
from hypothesis import strategies as st

from relay.requests import ConnectTunnel, NewTunnel, decide, decide_general, fast_upgrade

TID = "0123456789abcdef0123456789ABCDEF"
RID = "a1B2c3"
KEY = base64.b64encode(b"k" * 16)

CANONICAL = [
    (b"host", b"relay.example"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"fido.cable"),
]

targets = st.sampled_from(
    [
        f"/cable/new/{TID}",
        f"/cable/connect/{RID}/{TID}",
        f"/cable/new/{TID}?x=1",
        f"/cable/new/{TID[:-1]}",
        f"/cable/new/{TID}0",
        f"/cable/connect/{RID}0/{TID}",
        f"/cable/connect/{RID}/{TID}/",
        f"/cable/new//{TID}",
        "/cable/contact/abc",
        "/healthz",
        "/metrics",
        "/cable",
        "/",
        "*",
    ]
).map(str.encode)

value_variants = {
    b"upgrade": [b"websocket", b"WebSocket", b"websocket ", b"websocket, h2c", b"h2c", b""],
    b"connection": [b"Upgrade", b"upgrade", b"keep-alive, Upgrade", b"close", b" upgrade"],
    b"sec-websocket-key": [
        KEY,
        KEY + b" ",
        KEY[:-2],
        base64.b64encode(b"k" * 15),
        base64.b64encode(b"k" * 17),
        b"!" * 24,
        KEY.replace(b"=", b"A"),
    ],
    b"sec-websocket-version": [b"13", b"8", b"13 ", b"13, 8", b""],
    b"sec-websocket-protocol": [
        b"fido.cable",
        b"FIDO.cable",
        b"x, fido.cable",
        b"fido.cable ",
        b"",
    ],  # fmt: skip
    b"host": [b"relay.example", b""],
}
extra_headers = st.sampled_from(
    [
        (b"content-length", b"0"),
        (b"Content-Length", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"origin", b"https://relay.example"),
        (b"origin", b"https://evil.example"),
        (b"user-agent", b"test"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
    ]
)


@st.composite
def requests(draw):
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"POST", b"get"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0", b"2.0"]))
    target = draw(st.one_of(targets, st.sampled_from([f"/cable/new/{TID}".encode()] * 3)))
    headers = []
    for name, _ in CANONICAL:
        # Mostly the ordinary header, so that the fast path is taken often enough to be checked.
        for _ in range(draw(st.sampled_from([1] * 12 + [0, 2]))):
            spelled = draw(st.sampled_from([name] * 6 + [name.upper(), name.title()]))
            variants = value_variants[name]
            headers.append((spelled, draw(st.sampled_from([variants[0]] * 8 + variants[1:]))))
    headers += draw(st.lists(extra_headers, max_size=1))
    headers = draw(st.permutations(headers))
    origins = draw(st.sampled_from([(), ("https://relay.example",)]))
    return method, target, headers, origins, version


@st.composite
def near_ordinary(draw):
    """The ordinary upgrade with at most one thing changed."""
    method, version, origins = b"GET", b"1.1", ()
    target = draw(st.sampled_from([f"/cable/new/{TID}", f"/cable/connect/{RID}/{TID}"])).encode()
    headers = list(CANONICAL)
    change = draw(st.sampled_from(["none", "method", "version", "origins", "target", "drop",
                                   "twice", "value", "case", "extra", "extra"]))  # fmt: skip
    if change == "method":
        method = draw(st.sampled_from([b"HEAD", b"POST", b"get"]))
    elif change == "version":
        version = draw(st.sampled_from([b"1.0", b"2.0"]))
    elif change == "origins":
        origins = ("https://relay.example",)
    elif change == "target":
        target = draw(targets)
    elif change in ("drop", "twice", "value", "case"):
        index = draw(st.integers(0, len(headers) - 1))
        name, value = headers[index]
        if change == "drop":
            del headers[index]
        elif change == "twice":
            headers.insert(index, (name, draw(st.sampled_from(value_variants[name]))))
        elif change == "value":
            headers[index] = (name, draw(st.sampled_from(value_variants[name])))
        else:
            headers[index] = (name.upper(), value)
    elif change == "extra":
        headers.insert(draw(st.integers(0, len(headers))), draw(extra_headers))
    return method, target, headers, origins, version


def test_the_fast_path_accepts_only_what_the_general_path_accepts():
    taken = [0, 0]  # fast path taken, declined

    @given(st.one_of(requests(), near_ordinary()))
    def check(request):
        method, target, headers, origins, version = request
        general = decide_general(method, target, headers, origins, version)
        fast = fast_upgrade(method, target, headers, origins, version)
        taken[fast is None] += 1
        if fast is not None:
            assert fast == general
        assert decide(method, target, headers, origins, version) == general
        # What the relay calls: names lower-case already, as a Request holds them.
        lowered = [(name.lower(), value) for name, value in headers]
        trusted = fast_upgrade(method, target, lowered, origins, version, lower_names=True)
        assert trusted == fast_upgrade(method, target, lowered, origins, version)
        assert decide(method, target, lowered, origins, version, lower_names=True) == general

    check()
    # Both outcomes were exercised, so the comparison above had something to compare.
    assert taken[0] >= 5 and taken[1] >= 5, taken


def test_the_ordinary_upgrades_take_the_fast_path():
    new = fast_upgrade(b"GET", f"/cable/new/{TID}".encode(), CANONICAL)
    assert new is not None and new.route == NewTunnel(bytes.fromhex(TID)) and new.key == KEY
    join = fast_upgrade(b"GET", f"/cable/connect/{RID}/{TID}".encode(), CANONICAL)
    assert join is not None
    assert join.route == ConnectTunnel(bytes.fromhex(RID), bytes.fromhex(TID))
    # What real clients send: random keys, the headers in another order, extra headers.
    for _ in range(50):
        key = base64.b64encode(os.urandom(16))
        headers = [(b"user-agent", b"x"), *[(n, key if n == b"sec-websocket-key" else v)
                                            for n, v in reversed(CANONICAL)]]  # fmt: skip
        fast = fast_upgrade(b"GET", f"/cable/new/{TID}".encode(), headers)
        assert fast is not None and fast == decide_general(
            b"GET", f"/cable/new/{TID}".encode(), headers
        )
