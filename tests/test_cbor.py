"""The strict CTAP2-canonical CBOR decoder (hybrid.cbor): every rule, fuzzed and cross-checked.

Differential oracles: python-fido2's encoder (``fido2.cbor.encode``, CTAP2-canonical by design)
and ``cbor2`` (an independent general-purpose decoder). On canonical input all three agree; on
everything else ours raises ``CborError`` while fido2's decoder often returns a value.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import pytest
from fido2 import cbor as fido2_cbor
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid.cbor import CborError, decode, decode_map, decode_prefix
from hybrid.errors import ProtocolError

# ---- a reference encoder: fido2's, plus null (which fido2 cannot encode) ---------------------


def encode(value: Any) -> bytes:
    if value is None:
        return b"\xf6"
    if isinstance(value, list):
        return fido2_cbor._dump_int(len(value), mt=4) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        items = sorted(((encode(k), encode(v)) for k, v in value.items()), key=_ctap_order)
        return fido2_cbor._dump_int(len(items), mt=5) + b"".join(k + v for k, v in items)
    return fido2_cbor.encode(value)


def _ctap_order(item: tuple[bytes, bytes]) -> tuple[int, int, bytes]:
    key = item[0]
    return key[0] >> 5, len(key), key


ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = ints | st.binary(max_size=40) | st.text(max_size=20) | st.booleans() | st.none()
keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


@settings(deadline=None)
@given(values)
def test_canonical_encodings_round_trip_and_match_cbor2(value: Any) -> None:
    data = encode(value)
    assert decode(data) == value
    assert cbor2.loads(data) == value
    assert decode_prefix(data + b"\x00\x00") == (value, len(data))


@settings(deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_either_decode_canonically_or_raise_cbor_error(data: bytes) -> None:
    try:
        value = decode(data)
    except CborError as exc:
        assert str(exc).startswith("malformed CBOR at byte ")
        assert 0 <= exc.offset <= len(data)
        return
    # Anything accepted is the one canonical encoding of its value, and cbor2 agrees on it.
    assert encode(value) == data
    assert cbor2.loads(data) == value


@settings(deadline=None)
@given(values, st.data())
def test_mutated_canonical_input_never_escapes_as_another_exception(value: Any, data) -> None:
    encoded = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            decoded = decode(candidate)
        except CborError:
            continue
        assert encode(decoded) == candidate


def test_truncated_string_that_fido2_accepts_is_refused() -> None:
    data = bytes.fromhex("a1015820") + b"abc"
    assert fido2_cbor.decode(data) == {1: b"abc"}  # the leniency this module exists for
    with pytest.raises(CborError, match=r"at byte 2: truncated byte string \(declared length 32\)"):
        decode(data)


@pytest.mark.parametrize(
    ("hex_data", "reason"),
    [
        ("", "truncated input"),
        ("a2", "truncated map: declares 2 entries"),
        ("a1010200", "1 trailing bytes"),
        ("1817", "not in its shortest encoding"),
        ("190017", "not in its shortest encoding"),
        ("1a0000ffff", "not in its shortest encoding"),
        ("1b00000000ffffffff", "not in its shortest encoding"),
        ("3817", "negative integer argument 23 is not in its shortest"),
        ("5801ff", "byte string argument 1 is not in its shortest"),
        ("9f01ff", "indefinite-length array"),
        ("5f4101ff", "indefinite-length byte string"),
        ("bf0102ff", "indefinite-length map"),
        ("ff", "unexpected 'break'"),
        ("1c", "reserved additional information 28"),
        ("a202010102", "out of CTAP2 canonical order"),
        ("a201010102", "duplicate map key 1"),
        ("a2616101187b02", "out of CTAP2 canonical order"),  # text key before an integer key
        ("a2387f02182001", "out of CTAP2 canonical order"),  # negint before uint
        ("a1f501", "only integers and strings may be keys"),
        ("a1800102", "only integers and strings may be keys"),
        ("c11a5f5e1000", "tag 1 is not allowed"),
        ("f93c00", "floating-point"),
        ("fb3ff0000000000000", "floating-point"),
        ("f7", "simple value 23"),
        ("f0", "simple value 16"),
        ("62c328", "not valid UTF-8"),
        ("9b0000000100000000", "truncated array: declares 4294967296 entries"),
        ("7a7fffffff", "truncated text string"),
    ],
)
def test_each_rule_is_enforced_with_a_message_naming_it(hex_data: str, reason: str) -> None:
    with pytest.raises(CborError, match=reason) as caught:
        decode(bytes.fromhex(hex_data))
    assert isinstance(caught.value, ProtocolError)


def test_canonical_key_order_is_major_type_then_length_then_bytes() -> None:
    # 24 (uint, 2 bytes) sorts before -1 (negint, 1 byte): CTAP2 order, not RFC 7049 length-first.
    assert decode(bytes.fromhex("a21818012002")) == {24: 1, -1: 2}
    with pytest.raises(CborError, match="map key 24 is out of CTAP2 canonical order"):
        decode(bytes.fromhex("a22002181801"))
    good = encode({-1: 2, 24: 1, "a": 3, "bb": 4, b"\x00": 5})
    assert decode(good) == {24: 1, -1: 2, b"\x00": 5, "a": 3, "bb": 4}
    assert list(decode(good)) == [24, -1, b"\x00", "a", "bb"]


def test_simple_values_and_integer_extremes() -> None:
    assert decode(b"\xf4") is False
    assert decode(b"\xf5") is True
    assert decode(b"\xf6") is None
    assert decode(bytes.fromhex("1bffffffffffffffff")) == 2**64 - 1
    assert decode(bytes.fromhex("3bffffffffffffffff")) == -(2**64)


def test_nesting_is_bounded() -> None:
    assert decode(b"\x81" * 16 + b"\x00") is not None  # 16 levels: allowed
    with pytest.raises(CborError, match="nested deeper than 16"):
        decode(b"\x81" * 17 + b"\x00")
    with pytest.raises(CborError, match="nested deeper than 3"):
        decode(encode({1: {2: {3: {4: 5}}}}), max_depth=3)


def test_decode_map_names_what_it_expected() -> None:
    assert decode_map(encode({1: b"x"}), "getInfo") == {1: b"x"}
    with pytest.raises(CborError, match="getInfo must be a CBOR map, got an array"):
        decode_map(encode([1]), "getInfo")
    with pytest.raises(CborError, match="expected bytes, got str"):
        decode("a0")  # type: ignore[arg-type]


def test_a_real_ctap_response_decodes_as_fido2_reads_it() -> None:
    response = {1: "packed", 2: bytes(37), 3: {"alg": -7, "sig": b"\x30" * 70, "x5c": [b"c" * 9]}}
    data = fido2_cbor.encode(response)
    assert decode(data) == fido2_cbor.decode(data) == response
    assert struct.unpack(">B", data[:1])[0] == 0xA3
