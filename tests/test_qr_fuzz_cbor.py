"""Structure-aware CBOR fuzzing of the QR parser (issue 12, point 5).

Every CBOR type (``cbor_strategies``) is put in every position of the QR map: as the whole
payload, as the value of each known key, as an extra key (including simple values and floats equal
to a known key number), as that key's value, and nested inside key 6. Parsing must either give a
payload that re-encodes and describes itself, or raise a ``QrError``; nothing else. The crafted
cases that crashed ``hybrid phone`` and ``hybrid qr decode`` with a ``TypeError`` are also run
through the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cbor_strategies import cbor_items, head, truncated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid import keys
from hybrid.cli.qr import describe
from hybrid.qr.digits import url_encode
from hybrid.qr.errors import QrCborError, QrError
from hybrid.qr.payload import QrPayload

KEY = keys.public_key_bytes(keys.generate_private_key(), compressed=True)
SECRET = bytes(range(16))
VALID = {0: head(2, 33) + KEY, 1: head(2, 16) + SECRET, 2: b"\x02", 3: b"\x1a\x69\x27\x3e\x12",
         4: b"\xf4", 5: b"\x62mc", 6: b"\x81\x00"}  # fmt: skip
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip


def qr_map(pairs: list[tuple[bytes, bytes]], indefinite: bool = False) -> bytes:
    body = b"".join(k + v for k, v in pairs)
    return (b"\xbf" + body + b"\xff") if indefinite else head(5, len(pairs)) + body


def parse_or_typed_error(data: bytes) -> None:
    """The property: a payload that survives re-encoding and display, or a ``QrError``."""
    try:
        payload = QrPayload.from_url(url_encode(data))
    except QrError:
        return
    url = payload.to_url()
    # Compared as bytes: a NaN inside a key makes equal payloads compare unequal as objects.
    assert QrPayload.from_url(url).to_url() == url
    describe(payload, url)
    try:
        payload.to_json()
    except QrError:
        pass


@FUZZ
@given(cbor_items())
def test_any_item_as_the_whole_payload(item: bytes) -> None:
    parse_or_typed_error(item)


@FUZZ
@given(st.sampled_from(sorted(VALID)), cbor_items(), st.booleans())
def test_any_item_as_the_value_of_a_known_key(key: int, item: bytes, indefinite: bool) -> None:
    pairs = [(head(0, k), item if k == key else v) for k, v in VALID.items()]
    parse_or_typed_error(qr_map(pairs, indefinite))


@FUZZ
@given(cbor_items(), cbor_items(), st.integers(0, 7), st.booleans())
def test_any_item_as_an_extra_key_or_its_value(
    key: bytes, value: bytes, where: int, indefinite: bool
) -> None:
    pairs = [(head(0, k), v) for k, v in VALID.items()]
    pairs.insert(where, (key, value))
    parse_or_typed_error(qr_map(pairs, indefinite))


EQUAL_TO_KNOWN = st.one_of(
    st.integers(0, 6).map(lambda n: bytes([0xE0 | n])),  # simple values 0..6
    st.sampled_from([b"\xf5", b"\xf4"]),  # true == 1, false == 0 in Python
    st.integers(0, 6).map(lambda n: b"\xf9" + __import__("struct").pack(">e", float(n))),
    st.integers(0, 6).map(lambda n: b"\xfb" + __import__("struct").pack(">d", float(n))),
    st.integers(0, 6).map(lambda n: b"\xc2" + head(2, 1) + bytes([n])),  # bignum tag
)


@FUZZ
@given(EQUAL_TO_KNOWN, cbor_items(), st.integers(0, 7), st.booleans())
def test_a_key_equal_to_a_known_key_number_is_a_typed_error(
    key: bytes, value: bytes, where: int, drop_known: bool
) -> None:
    pairs = [(head(0, k), v) for k, v in VALID.items()]
    if drop_known:  # the look-alike key alone, without the real one
        pairs = [p for p in pairs if p[0] not in (b"\x02", b"\x03", b"\x04", b"\x05", b"\x06")]
    pairs.insert(min(where, len(pairs)), (key, value))
    parse_or_typed_error(qr_map(pairs))


@FUZZ
@given(st.lists(cbor_items(), max_size=4), cbor_items())
def test_any_item_nested_in_key6_and_cut_short(channels: list[bytes], tail: bytes) -> None:
    pairs = [(head(0, k), v) for k, v in VALID.items() if k != 6]
    pairs.append((b"\x06", head(4, len(channels)) + b"".join(channels)))
    data = qr_map(pairs)
    parse_or_typed_error(data)
    parse_or_typed_error(data + tail)  # trailing bytes


@FUZZ
@given(truncated(cbor_items().map(lambda i: qr_map([(b"\x00", head(2, 33) + KEY), (b"\x07", i)]))))
def test_truncated_maps_are_typed_errors(data: bytes) -> None:
    parse_or_typed_error(data)


@pytest.mark.parametrize("simple", [0xE2, 0xE5, 0xE6])
def test_simple_value_equal_to_a_known_key_is_a_cbor_error(simple: int) -> None:
    pairs = [(head(0, 0), VALID[0]), (head(0, 1), VALID[1]), (bytes([simple]), b"\x05")]
    with pytest.raises(QrCborError, match="simple value"):
        QrPayload.from_url(url_encode(qr_map(pairs)))


CRAFTED = [
    qr_map([(b"\x00", VALID[0]), (b"\x01", VALID[1]), (b"\xe2", b"\x02")]),  # simple(2) key
    qr_map([(b"\x00", VALID[0]), (b"\x01", VALID[1]), (b"\xe5", b"\x62ga")]),  # simple(5) key
    qr_map([(b"\x00", VALID[0]), (b"\x01", VALID[1]), (b"\xf9\x40\x00", b"\x00")]),  # 2.0 key
]


@pytest.mark.parametrize("data", CRAFTED, ids=["simple-2", "simple-5", "half-float-2.0"])
@pytest.mark.parametrize("command", ["qr-decode", "phone"])
def test_crafted_qr_is_a_one_line_error_on_the_command_line(data: bytes, command: str, tmp_path):
    url = url_encode(data)
    args = ["qr", "decode", url] if command == "qr-decode" else [
        "phone", "--relay", "ws://127.0.0.1:9", "--approve", "--data-dir", str(tmp_path), url
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "hybrid", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode > 0, (done.returncode, done.stderr)
    assert "clashes with known key" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
