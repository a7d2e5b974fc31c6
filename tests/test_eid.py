"""BLE EID plaintext and advert encryption (docs/protocol.md section 6)."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import interop
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid import keys
from hybrid.ble import eid as eid_module
from hybrid.ble.eid import (
    ADVERT_LEN,
    EID_PLAINTEXT_LEN,
    Eid,
    EidError,
    decrypt_advert,
    encrypt_advert,
)

FAST = settings()

KNOWN_DOMAIN_IDS = st.one_of(st.sampled_from([0, 1]), st.integers(256, 65535))
SECRETS = st.binary(min_size=16, max_size=16)

# An advert captured from a real phone, with its QR secret, as published in the tests of
# kanidm/webauthn-rs (webauthn-authenticator-rs/src/cable/discovery.rs).
CAPTURED_SECRET = bytes(
    [1, 254, 166, 247, 196, 128, 116, 147, 220, 37, 111, 158, 172, 247, 86, 201]
)
CAPTURED_ADVERT = bytes(
    [2, 125, 132, 237, 96, 118, 181, 94, 36, 124, 131, 15, 130, 149, 94, 77, 18, 110, 127, 67]
)


def _eids() -> st.SearchStrategy[Eid]:
    return st.builds(
        Eid,
        nonce=st.binary(min_size=10, max_size=10),
        routing_id=st.binary(min_size=3, max_size=3),
        tunnel_server_id=KNOWN_DOMAIN_IDS,
    )


def test_128_bit_service_uuids_are_the_16_bit_ones_on_the_bluetooth_base_uuid() -> None:
    # Bluetooth Core Specification, Vol 3 Part B 2.5.1: a 16-bit UUID xxxx stands for
    # 0000xxxx-0000-1000-8000-00805F9B34FB; bleak reports service data under the long form.
    base = uuid.UUID("00000000-0000-1000-8000-00805f9b34fb").int
    assert len(eid_module.SERVICE_UUIDS) == len(eid_module.SERVICE_UUID16S) == 2
    for short, long in zip(eid_module.SERVICE_UUID16S, eid_module.SERVICE_UUIDS, strict=True):
        assert uuid.UUID(long).int == base | (short << 96)


def test_service_uuids_agree_with_the_independent_peers() -> None:
    # tests/interop spells the on-air UUIDs itself, from docs/protocol.md section 6.3.
    ours = {u.to_bytes(2, "big") for u in eid_module.SERVICE_UUID16S}
    assert ours == {interop.UUID_FFF9, interop.UUID_FDE2}
    assert eid_module.FIDO_SERVICE_UUID16.to_bytes(2, "big") == interop.UUID_FFF9


def test_captured_advert_decrypts_to_its_routing_id_and_domain() -> None:
    plaintext = decrypt_advert(keys.eid_key(CAPTURED_SECRET), CAPTURED_ADVERT)
    assert plaintext is not None
    eid = Eid.parse(plaintext)
    assert eid.tunnel_server_id == 0
    assert eid.routing_id == bytes([2, 101, 85])
    assert eid.nonce == bytes([139, 181, 197, 201, 164, 77, 145, 58, 94, 178])
    assert keys.tunnel_id(CAPTURED_SECRET).hex().upper() == "367CBBF5F5085DF4098476AFE4B9B1D2"


def test_pack_layout_is_reserved_nonce_routing_id_little_endian_domain() -> None:
    eid = Eid(nonce=bytes(range(1, 11)), routing_id=b"\xaa\xbb\xcc", tunnel_server_id=0x1234)
    assert eid.pack() == b"\x00" + bytes(range(1, 11)) + b"\xaa\xbb\xcc" + b"\x34\x12"


def test_advert_is_one_aes_block_then_a_truncated_hmac() -> None:
    key = keys.eid_key(bytes(16))
    plaintext = Eid.create(b"\x01\x02\x03", 1, nonce=bytes(10)).pack()
    encryptor = Cipher(algorithms.AES(key[:32]), modes.ECB()).encryptor()
    block = encryptor.update(plaintext) + encryptor.finalize()
    tag = hmac.new(key[32:], block, hashlib.sha256).digest()[:4]
    assert encrypt_advert(key, plaintext) == block + tag


@FAST
@given(_eids())
def test_eid_pack_parse_round_trip(eid: Eid) -> None:
    packed = eid.pack()
    assert len(packed) == EID_PLAINTEXT_LEN
    assert Eid.parse(packed) == eid


@FAST
@given(SECRETS, _eids(), st.binary(max_size=12))
def test_advert_round_trip(secret: bytes, eid: Eid, suffix: bytes) -> None:
    key = keys.eid_key(secret)
    advert = encrypt_advert(key, eid.pack())
    assert len(advert) == ADVERT_LEN
    assert decrypt_advert(key, advert) == eid.pack()
    # CTAP 2.3 may append a suffix that the tag does not cover: only the first 20 bytes count.
    assert decrypt_advert(key, advert + suffix) == eid.pack()
    assert decrypt_advert(key, advert, linked=True) == eid.pack()


def test_flipping_any_bit_makes_the_advert_not_ours() -> None:
    key = keys.eid_key(CAPTURED_SECRET)
    for bit in range(ADVERT_LEN * 8):
        flipped = bytearray(CAPTURED_ADVERT)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert decrypt_advert(key, bytes(flipped)) is None


def test_advert_for_another_qr_secret_is_ignored() -> None:
    assert decrypt_advert(keys.eid_key(bytes(16)), CAPTURED_ADVERT) is None
    other = bytearray(CAPTURED_SECRET)
    other[-1] ^= 1
    assert decrypt_advert(keys.eid_key(bytes(other)), CAPTURED_ADVERT) is None


def test_short_adverts_are_not_ours() -> None:
    key = keys.eid_key(CAPTURED_SECRET)
    for length in range(ADVERT_LEN):
        assert decrypt_advert(key, CAPTURED_ADVERT[:length]) is None


def test_reserved_byte_set_is_ignored_even_when_linked() -> None:
    key = keys.eid_key(bytes(16))
    plaintext = b"\x01" + bytes(13) + b"\x00\x00"
    advert = encrypt_advert(key, plaintext)
    assert decrypt_advert(key, advert) is None
    assert decrypt_advert(key, advert, linked=True) is None


@pytest.mark.parametrize("domain_id", [2, 3, 100, 255])
def test_unassigned_domain_id_is_ignored_in_the_qr_flow_only(domain_id: int) -> None:
    key = keys.eid_key(bytes(16))
    plaintext = Eid(bytes(10), bytes(3), domain_id).pack()
    assert plaintext == bytes(14) + domain_id.to_bytes(2, "little")
    advert = encrypt_advert(key, plaintext)
    assert decrypt_advert(key, advert) is None
    # Deployed phones fill linked adverts randomly: only byte 0 is checked there (12.5).
    assert decrypt_advert(key, advert, linked=True) == plaintext


@pytest.mark.parametrize("domain_id", [0, 1, 256, 65535])
def test_known_domain_ids_are_accepted(domain_id: int) -> None:
    key = keys.eid_key(bytes(16))
    plaintext = Eid.create(b"abc", domain_id).pack()
    assert decrypt_advert(key, encrypt_advert(key, plaintext)) == plaintext


def test_eid_create_picks_a_fresh_random_nonce() -> None:
    first, second = Eid.create(b"abc", 0), Eid.create(b"abc", 0)
    assert len(first.nonce) == 10
    assert first.nonce != second.nonce
    assert Eid.create(b"abc", 0, nonce=b"n" * 10).nonce == b"n" * 10


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(15),
        bytes(17),
        b"\x01" + bytes(15),
        b"\x80" + bytes(15),
        bytes(14) + b"\x02\x00",
        bytes(14) + b"\xff\x00",
    ],
)
def test_eid_parse_rejects_malformed_plaintexts(data: bytes) -> None:
    with pytest.raises(EidError):
        Eid.parse(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(nonce=bytes(9), routing_id=b"abc", tunnel_server_id=0),
        dict(nonce=bytes(10), routing_id=b"ab", tunnel_server_id=0),
        dict(nonce=bytes(10), routing_id=b"abc", tunnel_server_id="0"),
        dict(nonce=bytes(10), routing_id=b"abc", tunnel_server_id=True),
        dict(nonce=bytes(10), routing_id=b"abc", tunnel_server_id=65536),
        dict(nonce=bytes(10), routing_id=b"abc", tunnel_server_id=-1),
    ],
)
def test_eid_constructor_rejects_bad_fields(kwargs: dict) -> None:
    with pytest.raises(EidError):
        Eid(**kwargs)


def test_bad_key_or_plaintext_length_is_a_typed_error() -> None:
    with pytest.raises(EidError):
        encrypt_advert(bytes(32), bytes(16))
    with pytest.raises(EidError):
        encrypt_advert(bytes(64), bytes(15))
    with pytest.raises(EidError):
        decrypt_advert(bytes(63), bytes(20))


@given(st.binary(max_size=40), st.booleans())
def test_decrypt_advert_never_raises_on_arbitrary_service_data(data: bytes, linked: bool) -> None:
    result = decrypt_advert(keys.eid_key(b"\x11" * 16), data, linked=linked)
    if result is not None:  # only possible with a forged 32-bit tag; then it must be valid
        assert len(result) == 16 and result[0] == 0


def test_decrypt_advert_treats_non_bytes_as_not_ours() -> None:
    key = keys.eid_key(bytes(16))
    for value in (None, "00" * 20, 12345, [0] * 20):
        assert decrypt_advert(key, value) is None  # type: ignore[arg-type]
    assert decrypt_advert(key, bytearray(CAPTURED_ADVERT)) is None
