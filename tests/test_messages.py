"""Post-handshake map and message framing (docs/protocol.md section 10)."""

from __future__ import annotations

import cbor2
import pytest
from fido2 import cbor
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid.errors import ProtocolError
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.messages import (
    UPDATE_CIPHERTEXT_LEN,
    UPDATE_MESSAGE_LEN,
    FramingError,
    MessageType,
    PostHandshake,
    encode_message,
    encode_post_handshake,
    encode_update,
    parse_message,
    parse_post_handshake,
    parse_update,
)

# Post-handshake plaintexts captured from Chrome on Android and from iOS 16, as published in the
# caBLE tests of kanidm/webauthn-rs (webauthn-authenticator-rs/src/cable/).
ANDROID_POST_HANDSHAKE = bytes.fromhex(
    "a101585ca50182684649444f5f325f30684649444f5f325f3102826c6465766963655075624b657963707266"
    "03500000000000000000000000000000000004a262726bf5627576f50983656361626c656668796272696468"
    "696e7465726e616c"
)
IOS_POST_HANDSHAKE = bytes.fromhex(
    "a101583aa40181684649444f5f325f300350f24a8e70d0d3f82c293732523cc4de5a04a262726bf5627576f5"
    "098268696e7465726e616c66687962726964"
)
GET_INFO = cbor.encode({1: ["FIDO_2_0", "FIDO_2_1"], 3: bytes(16), 4: {"rk": True, "uv": True}})


@pytest.mark.parametrize("plaintext", [ANDROID_POST_HANDSHAKE, IOS_POST_HANDSHAKE])
def test_captured_post_handshake_messages_parse(plaintext: bytes) -> None:
    parsed = parse_post_handshake(plaintext)
    assert parsed.features == ("ctap",)
    assert parsed.linking is None and not parsed.legacy_revision0
    info = cbor2.loads(parsed.get_info)
    assert "FIDO_2_0" in info[1]
    assert info[4]["uv"] is True


def test_encode_post_handshake_is_canonical() -> None:
    encoded = encode_post_handshake(GET_INFO)
    assert encoded == b"\xa2\x01" + cbor.encode(GET_INFO) + b"\x03\x81\x64ctap"
    assert parse_post_handshake(encoded) == PostHandshake(GET_INFO, None, ("ctap",), False)
    dc = encode_post_handshake(GET_INFO, ("ctap", "dc"))
    assert parse_post_handshake(dc).features == ("ctap", "dc")
    assert parse_post_handshake(encode_post_handshake(None, ("dc",))).get_info is None


def test_encode_post_handshake_requires_get_info_exactly_with_ctap() -> None:
    with pytest.raises(FramingError):
        encode_post_handshake(None)
    with pytest.raises(FramingError):
        encode_post_handshake(GET_INFO, ("dc",))
    with pytest.raises(FramingError):
        encode_post_handshake(GET_INFO, ("ctap", 3))  # type: ignore[arg-type]


def test_absent_features_mean_ctap_and_unknown_keys_are_ignored() -> None:
    plaintext = cbor.encode({0: bytes(40), 1: GET_INFO, 99: "x", "s": 1})
    parsed = parse_post_handshake(plaintext)
    assert parsed.features == ("ctap",) and parsed.get_info == GET_INFO


def test_legacy_linking_map_at_key_2() -> None:
    linking = {1: b"contact", 2: b"\x01" * 8, 3: b"\x02" * 32, 5: "Pixel"}
    parsed = parse_post_handshake(cbor.encode({1: GET_INFO, 2: linking}))
    assert parsed.linking == linking


def _revision0(body: bytes, count_bytes: int, total: int) -> bytes:
    zeros = total - len(body) - count_bytes
    return body + bytes(zeros) + zeros.to_bytes(count_bytes, "little")


@pytest.mark.parametrize(("count_bytes", "total"), [(2, 512), (2, 1024), (1, 256), (1, 64)])
def test_revision0_padding_is_detected_and_stripped(count_bytes: int, total: int) -> None:
    body = cbor.encode({1: GET_INFO, 2: {1: b"c"}})
    parsed = parse_post_handshake(_revision0(body, count_bytes, total))
    assert parsed.legacy_revision0
    assert parsed.get_info == GET_INFO and parsed.linking == {1: b"c"}


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\xff",
        b"\xa1\x01",  # truncated
        cbor.encode([1, 2]),
        cbor.encode({3: ["ctap"]}),  # ctap without getInfo
        cbor.encode({1: "text", 3: ["ctap"]}),
        cbor.encode({1: GET_INFO, 3: ["dc"]}),  # getInfo without ctap
        cbor.encode({1: GET_INFO, 3: "ctap"}),
        cbor.encode({1: GET_INFO, 3: ["ctap", 1]}),
        cbor.encode({1: GET_INFO, 2: b"not a map"}),
        cbor.encode({True: GET_INFO}),  # a CBOR true key is not key 1
        cbor.encode({1: GET_INFO}) + b"\x01\x02\x03",  # trailing bytes that are not padding
        b"\xa1\x01\x58\x20abc",  # truncated getInfo string (fido2's decoder accepts it)
        b"\xa2\x03\x81\x64ctap\x01" + cbor.encode(GET_INFO),  # keys out of canonical order
    ],
)
def test_malformed_post_handshake_messages_are_rejected(plaintext: bytes) -> None:
    with pytest.raises(FramingError):
        parse_post_handshake(plaintext)


@pytest.mark.parametrize("kind", list(MessageType))
def test_message_framing_round_trip(kind: MessageType) -> None:
    payload = b"" if kind is MessageType.SHUTDOWN else b"\x01\xa1\x01\x02"
    framed = encode_message(kind, payload)
    assert framed[0] == int(kind)
    assert parse_message(framed) == (kind, payload)


def test_message_type_values() -> None:
    assert [int(t) for t in MessageType] == [0, 1, 2, 3]
    assert encode_message(MessageType.SHUTDOWN) == b"\x00"


@pytest.mark.parametrize("type_byte", [4, 5, 0x7F, 0xFF])
def test_unknown_message_types_are_protocol_errors(type_byte: int) -> None:
    with pytest.raises(FramingError, match="unknown"):
        parse_message(bytes([type_byte]) + b"payload")
    with pytest.raises(FramingError):
        encode_message(type_byte, b"")  # type: ignore[arg-type]


def test_empty_message_is_rejected() -> None:
    with pytest.raises(FramingError):
        parse_message(b"")
    assert issubclass(FramingError, ProtocolError)


def test_update_message_encrypts_to_528_bytes_as_chromium_checks() -> None:
    linking = {1: b"contact-id", 2: b"\x01" * 8, 3: b"\x02" * 32, 4: b"\x04" * 65, 5: "Phone"}
    for value in (linking, None):
        message = encode_update(value)
        assert len(message) == UPDATE_MESSAGE_LEN
        crypter = Crypter(bytes(32), bytes(range(32)))
        assert len(crypter.encrypt(message)) == UPDATE_CIPHERTEXT_LEN == 528
        kind, payload = parse_message(message)
        assert kind is MessageType.UPDATE
        assert parse_update(payload) == value
    unpadded = encode_update(linking, plaintext_len=None)
    assert parse_update(parse_message(unpadded)[1]) == linking


def test_parse_update_rejects_malformed_payloads() -> None:
    for payload in (b"", b"\xff", cbor.encode([1]), cbor.encode({1: b"x"})):
        with pytest.raises(FramingError):
            parse_update(payload)
    assert parse_update(cbor.encode({0: bytes(3), 7: 1})) is None


FUZZ = settings()


@FUZZ
@given(st.one_of(st.binary(max_size=80), st.binary(max_size=40).map(lambda b: b"\xa1\x01" + b)))
def test_parsers_only_raise_framing_error(data: bytes) -> None:
    for parse in (parse_post_handshake, parse_message, parse_update):
        try:
            parse(data)
        except FramingError:
            pass
