"""The transaction state machines (hybrid.tunnel.connection), byte for byte and without sockets.

Both roles run with fixed keys, so every message is reproducible; legacy (revision 0) phones and
misbehaving peers are played by the Noise/Crypter primitives directly.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid.errors import ProtocolError
from hybrid.tunnel.connection import (
    NEED_DATA,
    CtapRequest,
    CtapResponse,
    DesktopConnection,
    DesktopState,
    HandshakeComplete,
    JsonMessage,
    PhoneConnection,
    PhoneState,
    PostHandshakeReceived,
    ShutdownReceived,
    TransactionError,
    TunnelClosed,
    UpdateReceived,
)
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.linking import create_linking
from hybrid.tunnel.messages import UPDATE_CIPHERTEXT_LEN, encode_message
from hybrid.tunnel.noise import Responder


def key(scalar: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(scalar, ec.SECP256R1())


IDENTITY = key(0x1D3)
PHONE_IDENTITY = key(0x9E7)
PSK = bytes(range(32))
GET_INFO = cbor.encode({1: ["FIDO_2_0", "FIDO_2_1"], 3: bytes(16), 4: {"rk": True, "uv": True}})
REQUEST = b"\x02" + cbor.encode({1: "example.com", 2: bytes(32)})
RESPONSE = b"\x00" + cbor.encode({1: {"id": b"c", "type": "public-key"}, 2: bytes(37)})


def drain(conn: DesktopConnection | PhoneConnection) -> list:
    events = list(conn.events())
    assert conn.next_event() is NEED_DATA
    return events


def handshake(features: tuple[str, ...] = ("ctap",)) -> tuple[DesktopConnection, PhoneConnection]:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    phone = PhoneConnection(IDENTITY.public_key(), PSK, key(0x22))
    phone.receive_data(desktop.send_handshake())
    desktop.receive_data(phone.send_handshake())
    desktop.receive_data(
        phone.send_post_handshake(None if "ctap" not in features else GET_INFO, features)
    )
    drain(desktop)
    drain(phone)
    return desktop, phone


def test_the_whole_transaction_byte_for_byte() -> None:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    phone = PhoneConnection(IDENTITY.public_key(), PSK, key(0x22))
    wire: list[bytes] = []

    wire.append(desktop.send_handshake())
    phone.receive_data(wire[-1])
    assert phone.state is PhoneState.SEND_HANDSHAKE and drain(phone) == []
    wire.append(phone.send_handshake())
    desktop.receive_data(wire[-1])
    (done,) = drain(desktop)
    assert done == HandshakeComplete(desktop.handshake_hash) and drain(phone) == [done]
    wire.append(phone.send_post_handshake(GET_INFO))
    desktop.receive_data(wire[-1])
    (post,) = drain(desktop)
    assert isinstance(post, PostHandshakeReceived)
    assert post.revision == 1 and post.post_handshake.get_info == GET_INFO and post.linking is None
    assert desktop.state is DesktopState.READY and desktop.features == ("ctap",)

    wire.append(desktop.send_request(REQUEST))
    phone.receive_data(wire[-1])
    assert drain(phone) == [CtapRequest(0x02, REQUEST[1:])]
    assert phone.state is PhoneState.ANSWERING
    wire.append(phone.send_response(RESPONSE))
    desktop.receive_data(wire[-1])
    assert drain(desktop) == [CtapResponse(0, RESPONSE[1:])]
    wire.append(desktop.send_shutdown())
    phone.receive_data(wire[-1])
    assert drain(phone) == [ShutdownReceived(answered=True)] and phone.state is PhoneState.DONE
    wire.append(phone.send_update())  # a late update, as the notes allow
    desktop.receive_data(wire[-1])
    assert drain(desktop) == [UpdateReceived(None)]
    desktop.receive_close()
    phone.receive_close()
    assert drain(desktop) == [TunnelClosed(complete=True)] == drain(phone)

    assert [len(m) for m in wire[:2]] == [81, 81]
    assert all(len(m) % 32 == 16 for m in wire[2:])
    assert len(wire[-2]) == 32 + 16  # shutdown: one type byte, padded to 32, plus the tag
    assert len(wire[-1]) == UPDATE_CIPHERTEXT_LEN

    # Fixed keys: the same conversation again gives the same bytes.
    again = DesktopConnection(IDENTITY, PSK, key(0x11))
    assert again.send_handshake() == wire[0]


def test_shutdown_from_the_phone_is_a_protocol_error_on_the_desktop() -> None:
    desktop, phone = handshake()
    desktop.send_request(REQUEST)
    rogue = phone._crypter
    assert rogue is not None
    with pytest.raises(TransactionError, match="only a desktop may send") as caught:
        desktop.receive_data(rogue.encrypt(encode_message(0)))
    assert caught.value.remote and desktop.state is DesktopState.FAILED
    with pytest.raises(TransactionError, match="failed"):
        desktop.receive_data(b"\x00" * 48)


def _phone_sends(phone: PhoneConnection, plaintext: bytes) -> bytes:
    assert phone._crypter is not None
    return phone._crypter.encrypt(plaintext)


@pytest.mark.parametrize(
    ("plaintext", "when", "reason"),
    [
        (b"\x01" + RESPONSE, "before the request", "unasked reply"),
        (b"\x04", "awaiting", "unknown tunnel message type 0x04"),
        (b"\xff\x00", "awaiting", "unknown tunnel message type 0xff"),
        (b"", "awaiting", "no type byte"),
        (b"\x01", "awaiting", "empty CTAP response"),
        (b"\x03{}", "awaiting", "answered a CTAP request with a JSON message"),
        (b"\x02" + cbor.encode([1]), "awaiting", "update message must be a CBOR map"),
        (
            b"\x02" + cbor.encode({1: b"x"}),
            "awaiting",
            r"key 1 \(linking information\) must",
        ),
        (b"\x02\xa1\x01\x58\x20abc", "awaiting", "truncated byte string"),
        (b"\x01\x00\xa2\x02\x01\x01\x02", "awaiting", "out of CTAP2 canonical order"),
        (b"\x01\x00\xa1\x01\x02\x00", "awaiting", "trailing bytes"),
    ],
)
def test_desktop_refuses_each_illegal_message(plaintext: bytes, when: str, reason: str) -> None:
    desktop, phone = handshake()
    if when == "awaiting":
        desktop.send_request(REQUEST)
    with pytest.raises(TransactionError, match=reason) as caught:
        desktop.receive_data(_phone_sends(phone, plaintext))
    assert caught.value.remote and isinstance(caught.value, ProtocolError)
    assert desktop.state is DesktopState.FAILED


def test_a_second_response_is_refused() -> None:
    desktop, phone = handshake()
    phone.receive_data(desktop.send_request(REQUEST))
    desktop.receive_data(phone.send_response(RESPONSE))
    with pytest.raises(TransactionError, match="second response"):
        desktop.receive_data(_phone_sends(phone, b"\x01" + RESPONSE))


def test_noise_message_2_must_be_81_authentic_bytes() -> None:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    phone = PhoneConnection(IDENTITY.public_key(), PSK, key(0x22))
    with pytest.raises(TransactionError, match="nothing from the phone before"):
        DesktopConnection(IDENTITY, PSK, key(0x11)).receive_data(bytes(81))
    phone.receive_data(desktop.send_handshake())
    message2 = bytearray(phone.send_handshake())
    other = DesktopConnection(IDENTITY, PSK, key(0x11))
    other.send_handshake()
    with pytest.raises(TransactionError, match="must be 81 bytes"):
        other.receive_data(bytes(message2[:80]))
    message2[-1] ^= 1
    with pytest.raises(TransactionError, match="bad Noise message 2"):
        desktop.receive_data(bytes(message2))


def test_a_wrong_psk_fails_the_phones_handshake() -> None:
    desktop = DesktopConnection(IDENTITY, bytes(32), key(0x11))
    phone = PhoneConnection(IDENTITY.public_key(), PSK, key(0x22))
    with pytest.raises(TransactionError, match="bad Noise message 1") as caught:
        phone.receive_data(desktop.send_handshake())
    assert caught.value.remote and phone.state is PhoneState.FAILED


def test_replayed_and_tampered_messages_fail_decryption() -> None:
    desktop, phone = handshake()
    desktop.send_request(REQUEST)
    update = phone.send_update()
    desktop.receive_data(update)
    with pytest.raises(TransactionError, match="does not decrypt"):
        desktop.receive_data(update)


def test_local_misuse_says_what_the_state_allows() -> None:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    with pytest.raises(TransactionError, match="cannot send shutdown now") as caught:
        desktop.send_shutdown()
    assert not caught.value.remote and "expected" in str(caught.value)
    assert not desktop.may_send_shutdown
    desktop, phone = handshake()
    assert desktop.may_send_shutdown
    with pytest.raises(TransactionError, match="a phone that listed 'dc'"):
        desktop.send_json({"digital": {}})
    desktop.send_request(REQUEST)
    with pytest.raises(TransactionError, match="cannot send a CTAP request now"):
        desktop.send_request(REQUEST)
    with pytest.raises(TransactionError, match="cannot send the response now"):
        phone.send_response(RESPONSE)  # the phone has not received the request yet
    with pytest.raises(TransactionError, match="cannot send Noise message 2"):
        phone.send_handshake()


def test_phone_refuses_a_second_request() -> None:
    desktop, phone = handshake()
    request = desktop.send_request(REQUEST)
    phone.receive_data(request)
    assert desktop._crypter is not None
    with pytest.raises(TransactionError, match="second request") as caught:
        phone.receive_data(desktop._crypter.encrypt(b"\x01" + REQUEST))
    assert caught.value.remote and phone.state is PhoneState.FAILED


def test_phone_treats_shutdown_before_the_answer_as_the_desktop_giving_up() -> None:
    desktop, phone = handshake()
    phone.receive_data(desktop.send_request(REQUEST))
    drain(phone)
    assert desktop.may_send_shutdown
    phone.receive_data(desktop.send_shutdown())
    assert drain(phone) == [ShutdownReceived(answered=False)]
    assert phone.state is PhoneState.DESKTOP_STOPPED
    with pytest.raises(TransactionError, match="cannot send the response now"):
        phone.send_response(RESPONSE)
    # The desktop that gave up still tolerates the answer racing its shutdown, but only once.
    assert desktop.state is DesktopState.SHUT_DOWN and not desktop.may_send_shutdown


def test_desktop_gives_up_before_sending_a_request() -> None:
    desktop, phone = handshake()
    phone.receive_data(desktop.send_shutdown())
    assert drain(phone) == [ShutdownReceived(answered=False)]
    phone.receive_close()
    assert drain(phone) == [TunnelClosed(complete=False)]


def test_a_reply_racing_the_desktops_shutdown_is_accepted_once() -> None:
    desktop, phone = handshake()
    phone.receive_data(desktop.send_request(REQUEST))
    shutdown = desktop.send_shutdown()
    reply = phone.send_response(RESPONSE)
    desktop.receive_data(reply)
    assert drain(desktop) == [CtapResponse(0, RESPONSE[1:])]
    phone.receive_data(shutdown)
    assert drain(phone)[-1] == ShutdownReceived(answered=True)
    with pytest.raises(TransactionError, match="second response"):
        desktop.receive_data(_phone_sends(phone, b"\x01" + RESPONSE))


def test_phone_closed_tunnel_while_answering_is_incomplete() -> None:
    desktop, phone = handshake()
    phone.receive_data(desktop.send_request(REQUEST))
    phone.receive_close()
    assert drain(phone)[-1] == TunnelClosed(complete=False)
    desktop.receive_close()
    assert drain(desktop) == [TunnelClosed(complete=False)]


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (b"\x04", "unknown tunnel message type"),
        (b"", "no type byte"),
        (b"\x01", "empty CTAP request"),
        (b"\x00\x01", "shutdown message with a payload"),
        (b"\x02\xa1\x01", "update that is not CBOR"),
        (b"\x03{}", "did not offer 'dc'"),
    ],
)
def test_phone_refuses_each_illegal_message(plaintext: bytes, reason: str) -> None:
    desktop, phone = handshake()
    assert desktop._crypter is not None
    with pytest.raises(TransactionError, match=reason) as caught:
        phone.receive_data(desktop._crypter.encrypt(plaintext))
    assert caught.value.remote


def test_phone_accepts_any_cbor_update_and_flags_non_canonical_requests() -> None:
    desktop, phone = handshake()
    assert desktop._crypter is not None
    phone.receive_data(desktop._crypter.encrypt(b"\x02" + cbor.encode({7: [1, 2]})))
    assert drain(phone) == [UpdateReceived(None)]
    phone.receive_data(desktop._crypter.encrypt(b"\x01\x02\xa1\x01\x58\x20abc"))
    (request,) = drain(phone)
    assert isinstance(request, CtapRequest) and request.command == 0x02
    assert request.cbor_error is not None and "truncated byte string" in request.cbor_error


def test_json_messages_flow_only_when_the_phone_offers_dc() -> None:
    desktop, phone = handshake(("dc",))
    assert desktop.features == ("dc",)
    with pytest.raises(TransactionError, match="listed 'ctap'"):
        desktop.send_request(REQUEST)
    phone.receive_data(desktop.send_json({"requests": [1]}))
    assert drain(phone) == [JsonMessage({"requests": [1]})]
    with pytest.raises(TransactionError, match="JSON request with CTAP"):
        phone.send_response(RESPONSE)
    desktop.receive_data(phone.send_json_response({"data": "ok"}))
    assert drain(desktop) == [JsonMessage({"data": "ok"})]


def test_linking_information_is_verified_against_the_handshake() -> None:
    desktop, phone = handshake()
    assert phone.handshake_hash is not None and phone.handshake_hash == desktop.handshake_hash
    linking = create_linking(
        PHONE_IDENTITY,
        IDENTITY.public_key(),
        phone.handshake_hash,
        contact_id=b"contact",
        link_id=bytes(8),
        link_secret=bytes(range(32)),
        name="Pixel",
    )
    update = phone.send_update(linking)
    assert len(update) == UPDATE_CIPHERTEXT_LEN
    desktop.receive_data(update)
    assert drain(desktop) == [UpdateReceived(linking)]
    forged = create_linking(
        PHONE_IDENTITY,
        IDENTITY.public_key(),
        bytes(32),  # signed for another handshake
        contact_id=b"contact",
        link_id=bytes(8),
        link_secret=bytes(range(32)),
        name="Pixel",
    )
    with pytest.raises(TransactionError, match="signature does not match this handshake"):
        desktop.receive_data(phone.send_update(forged))


def _legacy_phone(padding: int = 2) -> tuple[DesktopConnection, Crypter]:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    responder = Responder.qr(IDENTITY.public_key(), PSK, ephemeral=key(0x22))
    responder.read_message(desktop.send_handshake())
    message2, result = responder.write_message()
    desktop.receive_data(message2)
    crypter = Crypter.from_handshake(result)
    body = cbor.encode({1: GET_INFO})
    zeros = (512 if padding == 2 else 128) - len(body) - padding
    desktop.receive_data(crypter.encrypt(body + bytes(zeros) + zeros.to_bytes(padding, "little")))
    return desktop, crypter


@pytest.mark.parametrize("padding", [2, 1])
def test_revision_0_phones_get_bare_messages_and_no_shutdown(padding: int) -> None:
    desktop, crypter = _legacy_phone(padding)
    post = drain(desktop)[-1]
    assert isinstance(post, PostHandshakeReceived) and post.revision == 0 == desktop.revision
    assert crypter.decrypt(desktop.send_request(REQUEST)) == REQUEST  # no type byte
    desktop.receive_data(crypter.encrypt(RESPONSE))
    assert drain(desktop) == [CtapResponse(0, RESPONSE[1:])]
    assert desktop.send_shutdown() == b""
    with pytest.raises(TransactionError, match="revision-0 message when no request"):
        desktop.receive_data(crypter.encrypt(RESPONSE))


@settings(deadline=None)
@given(st.binary(max_size=80))
def test_any_plaintext_from_the_phone_is_an_event_or_a_transaction_error(plaintext: bytes) -> None:
    desktop, phone = handshake()
    desktop.send_request(REQUEST)
    try:
        desktop.receive_data(_phone_sends(phone, plaintext))
    except TransactionError as exc:
        assert exc.remote and desktop.state is DesktopState.FAILED
        return
    (event,) = drain(desktop)
    assert isinstance(event, CtapResponse | UpdateReceived)


@settings(deadline=None)
@given(st.binary(max_size=80))
def test_any_plaintext_from_the_desktop_is_an_event_or_a_transaction_error(data: bytes) -> None:
    desktop, phone = handshake()
    assert desktop._crypter is not None
    try:
        phone.receive_data(desktop._crypter.encrypt(data))
    except TransactionError as exc:
        assert exc.remote and phone.state is PhoneState.FAILED
        return
    (event,) = drain(phone)
    assert isinstance(event, CtapRequest | UpdateReceived | ShutdownReceived)


def test_json_payloads_are_compact_utf8() -> None:
    desktop, phone = handshake(("ctap", "dc"))
    assert phone._crypter is not None
    framed = phone._crypter.decrypt(desktop.send_json({"a": "é"}))
    assert framed == b"\x03" + json.dumps({"a": "é"}, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("get_info", "reason"),
    [
        (b"\xa1\x01\x58\x20abc", "truncated byte string"),
        (cbor.encode([1]), "getInfo \\(post-handshake key 1\\) must be a CBOR map"),
    ],
)
def test_desktop_checks_the_cached_get_info_strictly(get_info: bytes, reason: str) -> None:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    phone = PhoneConnection(IDENTITY.public_key(), PSK, key(0x22))
    phone.receive_data(desktop.send_handshake())
    desktop.receive_data(phone.send_handshake())
    with pytest.raises(TransactionError, match=reason):
        desktop.receive_data(phone.send_post_handshake(get_info))


def test_phone_refuses_messages_before_its_handshake_is_sent_and_after_shutdown() -> None:
    desktop = DesktopConnection(IDENTITY, PSK, key(0x11))
    phone = PhoneConnection(IDENTITY.public_key(), PSK, key(0x22))
    first = desktop.send_handshake()
    phone.receive_data(first)
    with pytest.raises(
        TransactionError, match="out of turn .expected nothing before Noise message 2"
    ):
        phone.receive_data(first)
    desktop, phone = handshake()
    phone.receive_data(desktop.send_request(REQUEST))
    phone.send_response(RESPONSE)
    phone.receive_data(desktop.send_shutdown())
    assert desktop._crypter is not None
    with pytest.raises(TransactionError, match="nothing after shutdown but the close"):
        phone.receive_data(desktop._crypter.encrypt(b"\x02\xa0"))


def test_desktop_refuses_a_ctap_answer_to_a_json_request() -> None:
    desktop, phone = handshake(("ctap", "dc"))
    phone.receive_data(desktop.send_json({"q": 1}))
    with pytest.raises(TransactionError, match="answered a JSON request with a CTAP message"):
        desktop.receive_data(_phone_sends(phone, b"\x01" + RESPONSE))


def test_desktop_refuses_a_second_post_handshake_style_message_as_a_bad_frame() -> None:
    desktop, phone = handshake()
    # A phone repeating its post-handshake map: type byte 0xa2 is not a message type.
    with pytest.raises(TransactionError, match="unknown tunnel message type 0xa2"):
        desktop.receive_data(_phone_sends(phone, cbor.encode({1: GET_INFO, 3: ["ctap"]})))


def test_desktop_still_says_shutdown_after_a_bad_message_but_not_after_bad_crypto() -> None:
    desktop, phone = handshake()
    phone.receive_data(desktop.send_request(REQUEST))
    with pytest.raises(TransactionError):
        desktop.receive_data(_phone_sends(phone, b"\x07"))
    assert desktop.state is DesktopState.FAILED and desktop.may_send_shutdown
    phone.receive_data(desktop.send_shutdown())
    assert drain(phone)[-1] == ShutdownReceived(answered=False)
    assert not desktop.may_send_shutdown
    with pytest.raises(TransactionError, match="cannot send shutdown"):
        desktop.send_shutdown()

    desktop, phone = handshake()
    with pytest.raises(TransactionError, match="does not decrypt"):
        desktop.receive_data(bytes(48))
    assert not desktop.may_send_shutdown
