"""QR payload: browser-exact round trips, validation of every key, and fuzzing (sections 3, 16)."""

import io
import os
import time

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid.errors import ProtocolError
from hybrid.qr.digits import digits_encode, url_encode
from hybrid.qr.errors import (
    DigitLengthError,
    DigitRangeError,
    InvalidPublicKeyError,
    KeyLengthError,
    KeyTypeError,
    MissingKeyError,
    NonDigitError,
    NotFidoUrlError,
    QrCborError,
    QrError,
    QrJsonError,
)
from hybrid.qr.payload import QrPayload

TIMESTAMP = 1764201234
FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def new_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def compressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


PUBLIC_KEY = compressed(new_key())
SECRET = bytes(range(16))


def chrome_cbor(public_key: bytes, secret: bytes, request_type: str = "ga") -> bytes:
    """Hand-written CBOR exactly as Chrome emits it: map(6), keys 0..5, shortest integers."""
    return (
        b"\xa6"
        + b"\x00\x58\x21" + public_key
        + b"\x01\x50" + secret
        + b"\x02\x02"
        + b"\x03\x1a" + TIMESTAMP.to_bytes(4, "big")
        + b"\x04\xf4"
        + b"\x05\x62" + request_type.encode()
    )  # fmt: skip


def chrome_url(public_key: bytes = PUBLIC_KEY, secret: bytes = SECRET, rt: str = "ga") -> str:
    return "FIDO:/" + digits_encode(chrome_cbor(public_key, secret, rt))


def url_of_map(m: object) -> str:
    return url_encode(cbor2.dumps(m))


@pytest.mark.parametrize("request_type", ["ga", "mc"])
def test_chrome_url_decodes_and_re_encodes_byte_for_byte(request_type):
    url = chrome_url(rt=request_type)
    payload = QrPayload.from_url(url)
    assert payload.public_key == PUBLIC_KEY
    assert payload.qr_secret == SECRET
    assert payload.tunnel_domains == 2
    assert payload.timestamp == TIMESTAMP
    assert payload.state_assisted is False
    assert payload.request_type == request_type
    assert payload.key6 is None and payload.unknown == {}
    assert payload.to_url() == url


def test_create_builds_what_chrome_builds():
    key = new_key()
    payload = QrPayload.create(key, SECRET, request_type="mc", timestamp=TIMESTAMP)
    assert payload.to_cbor() == chrome_cbor(compressed(key), SECRET, "mc")
    assert payload.to_url() == chrome_url(compressed(key), SECRET, "mc")
    assert payload.to_url().startswith("FIDO:/")


def test_create_accepts_uncompressed_and_compressed_keys():
    key = new_key()
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert QrPayload.create(raw, SECRET) == QrPayload.create(compressed(key), SECRET)


def test_public_key_point_decompresses_to_the_same_key():
    key = new_key()
    payload = QrPayload.from_url(QrPayload.create(key, SECRET, timestamp=1).to_url())
    point = payload.public_key_point
    assert len(point) == 65 and point[0] == 4
    assert point == key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert compressed(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)) == (
        payload.public_key
    )


def test_decoded_key_order_is_kept_and_new_payloads_are_ascending():
    m = {5: "ga", 1: SECRET, 3: TIMESTAMP, 0: PUBLIC_KEY, 2: 2, 4: True}
    url = url_of_map(m)
    payload = QrPayload.from_url(url)
    assert payload.to_url() == url
    assert list(payload.to_map()) == [5, 1, 3, 0, 2, 4]
    rebuilt = QrPayload.from_json(payload.to_json())
    assert list(rebuilt.to_map()) == [0, 1, 2, 3, 4, 5]


def test_unknown_keys_are_preserved_in_place():
    m = {0: PUBLIC_KEY, 1: SECRET, 2: 2, 3: TIMESTAMP, 4: False, 5: "ga", 7: b"\x01",
         65535: "grease", -3: [1, 2], "text": None}  # fmt: skip
    url = url_of_map(m)
    payload = QrPayload.from_url(url)
    assert payload.unknown == {7: b"\x01", 65535: "grease", -3: [1, 2], "text": None}
    assert payload.to_url() == url


@pytest.mark.parametrize("key6", [True, False, [0], [0, 1], []])
def test_key6_legacy_bool_and_channel_list_round_trip(key6):
    m = {0: PUBLIC_KEY, 1: SECRET, 2: 2, 3: TIMESTAMP, 4: False, 5: "mc", 6: key6}
    payload = QrPayload.from_url(url_of_map(m))
    assert payload.key6 == key6
    assert payload.to_url() == url_of_map(m)
    assert payload.channels == (tuple(key6) if isinstance(key6, list) else (0,))


def test_minimal_map_reads_with_phone_defaults():
    payload = QrPayload.from_url(url_of_map({0: PUBLIC_KEY, 1: SECRET}))
    assert payload.tunnel_domains is None and payload.known_domain_count == 0
    assert payload.effective_request_type == "ga"
    assert payload.message_revision == 0
    assert payload.to_url() == url_of_map({0: PUBLIC_KEY, 1: SECRET})


def test_non_shortest_integers_are_re_encoded_in_shortest_form():
    data = bytearray(chrome_cbor(PUBLIC_KEY, SECRET))
    long_form = data.replace(b"\x02\x02", b"\x02\x1b" + (2).to_bytes(8, "big"), 1)
    payload = QrPayload.from_cbor(bytes(long_form))
    assert payload.tunnel_domains == 2
    assert payload.to_cbor() == chrome_cbor(PUBLIC_KEY, SECRET)


def test_json_round_trip_with_every_unknown_value_kind():
    m = {0: PUBLIC_KEY, 1: SECRET, 2: 2, 3: TIMESTAMP, 4: False, 5: "ga", 6: [0, 1],
         8: b"\xab", 9: [b"\x00", "x", None, True, -7], 10: {1: 2}, 11: 1.5}  # fmt: skip
    url = url_of_map(m)
    payload = QrPayload.from_url(url)
    js = payload.to_json()
    assert js["unknown"]["8"] == {"hex": "ab"}
    assert js["unknown"]["9"] == [{"hex": "00"}, "x", None, True, -7]
    assert js["unknown"]["10"] == {"cbor": "a10102"}
    assert js["key6"] == [0, 1]
    again = QrPayload.from_json(js)
    assert again == payload
    assert again.to_url() == payload.to_url()


# ---- malformed input: one test per class -----------------------------------------------------


def test_not_a_fido_url():
    with pytest.raises(NotFidoUrlError, match="^not a FIDO:/ URL$"):
        QrPayload.from_url("https://example.com/")


def test_non_digit():
    with pytest.raises(NonDigitError, match="at position 12"):
        QrPayload.from_url("FIDO:/" + "1" * 12 + "x" + "1" * 4)


def test_impossible_length():
    with pytest.raises(DigitLengthError):
        QrPayload.from_url(chrome_url() + "1")


def test_chunk_out_of_range():
    with pytest.raises(DigitRangeError):
        QrPayload.from_url("FIDO:/" + "9" * 17 + chrome_url()[6:])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xff", "not valid CBOR"),
        (b"\xa2\x00", "not valid CBOR"),
        (b"\x83\x01\x02\x03", "array, not a map"),
        (b"\x01", "integer, not a map"),
        (b"\xbf\x00\x01\xff", "not valid CBOR"),
        (b"\xa1\x00\x7f\xff", "not valid CBOR"),
        (b"\xa2\x00\x00\x00\x01", "not valid CBOR"),  # duplicate key
        (b"\xa1\x00\x62\xff\xfe", "not valid CBOR"),  # invalid UTF-8
    ],
)
def test_bad_cbor(data, message):
    with pytest.raises(QrCborError, match=message):
        QrPayload.from_cbor(data)
    if data:
        with pytest.raises(QrCborError, match=message):
            QrPayload.from_url(url_encode(data))


def test_trailing_bytes_after_the_map():
    with pytest.raises(QrCborError, match="1 trailing bytes"):
        QrPayload.from_url(url_encode(chrome_cbor(PUBLIC_KEY, SECRET) + b"\x00"))


@pytest.mark.parametrize("missing", [0, 1])
def test_missing_required_key(missing):
    m = {0: PUBLIC_KEY, 1: SECRET, 2: 2}
    del m[missing]
    with pytest.raises(MissingKeyError, match=f"no key {missing}"):
        QrPayload.from_url(url_of_map(m))


@pytest.mark.parametrize(
    ("key", "value"),
    [(0, "text"), (1, 16), (2, "2"), (2, True), (3, 1.5), (3, b"t"), (4, 1), (4, None),
     (5, b"ga"), (5, 5), (6, "x"), (6, [True]), (6, [0, "1"]), (6, {0: 1})],
)  # fmt: skip
def test_mistyped_key(key, value):
    m = {0: PUBLIC_KEY, 1: SECRET, 2: 2, 3: TIMESTAMP, 4: False, 5: "ga"}
    m[key] = value
    with pytest.raises(KeyTypeError, match=f"QR key {key} "):
        QrPayload.from_url(url_of_map(m))


@pytest.mark.parametrize(("key", "length"), [(0, 32), (0, 34), (0, 65), (1, 15), (1, 17), (1, 0)])
def test_wrong_key_length(key, length):
    m = {0: PUBLIC_KEY, 1: SECRET}
    m[key] = bytes([2]) * length
    with pytest.raises(KeyLengthError, match=f"must be {33 if key == 0 else 16} bytes"):
        QrPayload.from_url(url_of_map(m))


@pytest.mark.parametrize("prefix", [b"\x02", b"\x03", b"\x04", b"\x05"])
def test_point_not_on_the_curve(prefix):
    x = b"\xff" * 32  # x >= p, never a valid coordinate
    with pytest.raises(InvalidPublicKeyError, match="P-256"):
        QrPayload.from_url(url_of_map({0: prefix + x, 1: SECRET}))


def test_tagged_values_are_kept_as_tags_and_re_encode_byte_for_byte():
    tags = {7: cbor2.CBORTag(1, TIMESTAMP), 8: cbor2.CBORTag(2, b"\x00\x01"),
            9: cbor2.CBORTag(258, [1, 2]), 10: cbor2.CBORTag(55799, "x")}  # fmt: skip
    url = url_of_map({0: PUBLIC_KEY, 1: SECRET, **tags})
    payload = QrPayload.from_url(url)
    assert payload.unknown == tags
    assert payload.to_url() == url
    assert QrPayload.from_json(payload.to_json()).to_url() == url


@pytest.mark.parametrize("value", [cbor2.CBORTag(2, b"\x01" * 9), cbor2.CBORTag(1, 5), 2**64])
def test_bignum_or_tagged_timestamp_is_not_an_integer(value):
    with pytest.raises(KeyTypeError, match="QR key 3"):
        QrPayload.from_url(url_of_map({0: PUBLIC_KEY, 1: SECRET, 3: value}))


def test_integers_beyond_64_bits_are_refused_when_building():
    with pytest.raises(KeyTypeError, match="does not fit"):
        QrPayload.create(PUBLIC_KEY, SECRET, timestamp=2**64)
    with pytest.raises(KeyTypeError, match="does not fit"):
        QrPayload(PUBLIC_KEY, SECRET, key6=[-(2**64) - 1])


def test_bool_key_that_equals_a_known_key_is_rejected():
    # Python would treat True as key 1; the CBOR map really has no integer key 1
    with pytest.raises(QrError):
        QrPayload.from_url(url_of_map({0: PUBLIC_KEY, True: SECRET}))
    with pytest.raises(QrError):
        QrPayload.from_url(url_of_map({0: PUBLIC_KEY, 1: SECRET, 2.0: 3}))


def test_every_error_is_a_protocol_error_with_a_one_line_message():
    bad = ["x", "FIDO:/1", "FIDO:/12a", url_encode(b"\xa0"), url_encode(b"\xa1\x00\x00")]
    for url in bad:
        with pytest.raises(ProtocolError) as info:
            QrPayload.from_url(url)
        assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"public_key": PUBLIC_KEY.hex()},
        {"public_key": "zz", "qr_secret": SECRET.hex()},
        {"public_key": PUBLIC_KEY.hex(), "qr_secret": SECRET.hex(), "extra": 1},
        {"public_key": PUBLIC_KEY.hex(), "qr_secret": SECRET.hex(), "unknown": {"x": 1}},
        {"public_key": PUBLIC_KEY.hex(), "qr_secret": SECRET.hex(), "unknown": {"2": 1}},
        {"public_key": PUBLIC_KEY.hex(), "qr_secret": SECRET.hex(), "unknown": {"9": {"a": 1}}},
        {"public_key": PUBLIC_KEY.hex(), "qr_secret": SECRET.hex(), "unknown": []},
        {"public_key": PUBLIC_KEY.hex(), "qr_secret": SECRET.hex(), "tunnel_domains": "2"},
    ],
)
def test_malformed_json_is_a_qr_error(obj):
    with pytest.raises(QrError):
        QrPayload.from_json(obj)
    assert issubclass(QrJsonError, QrError)


# ---- properties --------------------------------------------------------------------------------

KEYS = [compressed(new_key()) for _ in range(8)]
unknown_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.builds(cbor2.CBORTag, st.integers(0, 299), inner),
    max_leaves=6,
)  # fmt: skip
payloads = st.builds(
    QrPayload,
    public_key=st.sampled_from(KEYS),
    qr_secret=st.binary(min_size=16, max_size=16),
    tunnel_domains=st.none() | st.integers(0, 2**64 - 1),
    timestamp=st.none() | st.integers(0, 2**64 - 1),
    state_assisted=st.none() | st.booleans(),
    request_type=st.none() | st.sampled_from(["ga", "mc", "dcp", "dci"]) | st.text(max_size=5),
    key6=st.none() | st.booleans() | st.lists(st.integers(0, 300), max_size=4),
    unknown=st.dictionaries(
        st.integers(7, 2**32) | st.integers(-(2**32), -1), unknown_values, max_size=4
    ),
)


@given(payloads)
def test_payload_round_trips_through_url_cbor_and_json(payload):
    url = payload.to_url()
    assert url.startswith("FIDO:/") and url[6:].isdigit()
    decoded = QrPayload.from_url(url)
    assert decoded == payload
    assert decoded.to_url() == url
    assert QrPayload.from_cbor(payload.to_cbor()) == payload
    assert QrPayload.from_json(payload.to_json()) == payload
    assert QrPayload.from_json(payload.to_json()).to_url() == url


@given(payloads, st.randoms(use_true_random=False))
def test_any_key_order_is_reproduced_exactly(payload, rnd):
    items = list(payload.to_map().items())
    rnd.shuffle(items)
    url = url_of_map(dict(items))
    assert QrPayload.from_url(url).to_url() == url


def _only_qr_errors(text: str) -> None:
    try:
        payload = QrPayload.from_url(text)
    except QrError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # anything accepted must be re-encodable
    assert payload.to_url().startswith("FIDO:/")


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(text):
    _only_qr_errors(text)


@FUZZ
@given(st.text(alphabet="0123456789", max_size=250))
def test_fuzz_random_digit_strings(text):
    _only_qr_errors(text)
    _only_qr_errors("FIDO:/" + text)
    _only_qr_errors("fido:/" + text)


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_digits_of_random_bytes(data):
    _only_qr_errors(url_encode(data))


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.sampled_from([PUBLIC_KEY, SECRET, b"\x02" + b"\xff" * 32]),
    lambda inner: st.lists(inner, max_size=4)
    | st.builds(cbor2.CBORTag, st.integers(0, 300), inner)
    | st.dictionaries(st.integers(-5, 10) | st.text(max_size=3), inner, max_size=4),
    max_leaves=6,
)  # fmt: skip


@settings(FUZZ)
@given(
    st.dictionaries(st.integers(-3, 9) | st.text(max_size=2), cbor_values, max_size=8)
    | cbor_values,
    st.binary(max_size=3),
)
def test_fuzz_digits_of_random_cbor(value, tail):
    data = cbor2.dumps(value)
    _only_qr_errors(url_encode(data))
    _only_qr_errors(url_encode(data + tail))


@settings(FUZZ)
@given(st.integers(0, 20).flatmap(lambda n: st.lists(st.binary(max_size=20), min_size=n)))
def test_fuzz_mutated_valid_payloads(pieces):
    base = bytearray(chrome_cbor(PUBLIC_KEY, SECRET))
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        pos = (piece[0] * 7 + i) % (len(base) + 1)
        base[pos : pos + (piece[-1] % 3)] = piece[1:]
    _only_qr_errors(url_encode(bytes(base)))


def test_decoder_reports_consumed_length_exactly():
    # the trailing-byte check depends on the decoder not reading ahead
    data = chrome_cbor(PUBLIC_KEY, SECRET) + os.urandom(5000)
    stream = io.BytesIO(data)
    cbor2.CBORDecoder(stream).decode()
    assert stream.tell() == len(chrome_cbor(PUBLIC_KEY, SECRET))


def test_a_map_with_thousands_of_unknown_keys_keeps_its_order_quickly():
    m = {key: key for key in range(5000, 6, -1)}
    m.update({0: PUBLIC_KEY, 1: SECRET})
    url = url_of_map(m)
    started = time.perf_counter()
    payload = QrPayload.from_url(url)
    assert payload.to_url() == url
    assert time.perf_counter() - started < 2.0
