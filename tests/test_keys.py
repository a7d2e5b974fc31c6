"""Key derivation (docs/protocol.md sections 2.1 and 4) and the P-256 helpers."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hybrid import keys
from hybrid.errors import ProtocolError

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    # Written from RFC 5869 directly, so derive() is checked against something independent.
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_derive_is_hkdf_sha256_with_little_endian_purpose_as_info() -> None:
    secret, salt = bytes(range(16)), bytes(range(100, 116))
    for purpose in (1, 2, 3, 4, 5, 6, 0x01020304):
        expected = _rfc5869(secret, salt, purpose.to_bytes(4, "little"), 48)
        assert keys.derive(secret, salt, purpose, 48) == expected
    assert keys.derive(secret, b"", 1, 4) != keys.derive(secret, b"", 1 << 24, 4)


def test_derive_with_empty_salt_equals_32_zero_byte_salt() -> None:
    secret = b"\x42" * 16
    zero_salted = HKDF(hashes.SHA256(), 64, bytes(32), b"\x01\x00\x00\x00").derive(secret)
    assert keys.derive(secret, b"", 1, 64) == zero_salted
    assert keys.derive(secret, bytes(32), 1, 64) == zero_salted


def test_qr_derivations_have_the_right_lengths_and_purposes() -> None:
    secret = bytes(range(16))
    assert keys.eid_key(secret) == keys.derive(secret, b"", keys.EID_KEY_PURPOSE, 64)
    assert keys.tunnel_id(secret) == keys.derive(secret, b"", keys.TUNNEL_ID_PURPOSE, 16)
    plaintext = bytes(16)
    assert keys.psk(secret, plaintext) == keys.derive(secret, plaintext, keys.PSK_PURPOSE, 32)
    assert (len(keys.eid_key(secret)), len(keys.tunnel_id(secret))) == (64, 16)
    assert len(keys.psk(secret, plaintext)) == 32
    # Purposes 1, 2 and 3 as LE32 infos, spelled out (docs/protocol.md section 4).
    assert keys.eid_key(secret) == _rfc5869(secret, b"", b"\x01\x00\x00\x00", 64)
    assert keys.tunnel_id(secret) == _rfc5869(secret, b"", b"\x02\x00\x00\x00", 16)
    assert keys.psk(secret, plaintext) == _rfc5869(secret, plaintext, b"\x03\x00\x00\x00", 32)


def test_tunnel_id_matches_chromium_for_the_all_zero_secret() -> None:
    # From kanidm/webauthn-rs (webauthn-authenticator-rs/src/cable/discovery.rs,
    # "derives the tunnel id Chromium derives").
    assert keys.tunnel_id(bytes(16)).hex().upper() == "3EEF97097986413B059EAA2A30D653D4"


def test_linked_eid_key_is_salted_with_the_client_nonce() -> None:
    link_secret, nonce = b"\x07" * 32, b"\x09" * 16
    assert keys.eid_key(link_secret, nonce) == keys.derive(link_secret, nonce, 1, 64)
    assert keys.eid_key(link_secret, nonce) != keys.eid_key(link_secret)


def test_one_bit_change_of_the_eid_plaintext_changes_the_psk() -> None:
    secret, plaintext = bytes(range(16)), bytes(range(16))
    reference = keys.psk(secret, plaintext)
    for bit in range(128):
        flipped = bytearray(plaintext)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert keys.psk(secret, bytes(flipped)) != reference


def test_phone_internal_derivations_use_purposes_4_5_6() -> None:
    root, contact, link = b"\x01" * 32, b"contact", b"\x02" * 8
    per_contact = keys.per_contact_secret(root, contact)
    assert per_contact == keys.derive(root, contact, keys.PER_CONTACT_ID_PURPOSE, 32)
    assert keys.paired_secret(per_contact, link) == keys.derive(
        per_contact, link, keys.PAIRED_SECRET_PURPOSE, 32
    )
    assert keys.identity_seed(root) == keys.derive(root, b"", keys.IDENTITY_KEY_SEED_PURPOSE, 32)

    # The same values straight from RFC 5869 HKDF with info = LE32(purpose) (docs/protocol.md 4).
    def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt or None, info).derive(secret)

    assert per_contact == hkdf(root, contact, b"\x06\x00\x00\x00")
    assert keys.paired_secret(per_contact, link) == hkdf(per_contact, link, b"\x04\x00\x00\x00")
    assert keys.identity_seed(root) == hkdf(root, b"", b"\x05\x00\x00\x00")


def test_identity_key_from_seed_is_deterministic() -> None:
    seed = keys.identity_seed(b"\x05" * 32)
    a, b = keys.identity_key_from_seed(seed), keys.identity_key_from_seed(seed)
    assert keys.public_key_bytes(a) == keys.public_key_bytes(b)
    assert keys.public_key_bytes(keys.identity_key_from_seed(bytes(32))) != keys.public_key_bytes(a)


def test_public_key_encodings_round_trip() -> None:
    private = keys.generate_private_key()
    full, short = keys.public_key_bytes(private), keys.public_key_bytes(private, compressed=True)
    assert len(full) == 65 and full[0] == 4
    assert len(short) == 33 and short[0] in (2, 3)
    assert full[1:33] == short[1:]
    for encoded in (full, short):
        loaded = keys.load_public_key(encoded)
        assert keys.public_key_bytes(loaded) == full
        assert keys.public_key_bytes(loaded, compressed=True) == short
    assert keys.public_key_bytes(private.public_key()) == full


def _x_not_on_curve() -> bytes:
    for x in range(1, 100):
        try:
            keys.load_public_key(b"\x02" + x.to_bytes(32, "big"))
        except keys.InvalidKeyError:
            return x.to_bytes(32, "big")
    raise AssertionError("every small x is on the curve?")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04" + bytes(63),
        b"\x04" + bytes(64),  # (0, 0) is not on P-256
        b"\x04" + b"\x01" * 64,
        b"\x05" + bytes(64),
        b"\x02" + bytes(31),
        b"\x04" + bytes(32),
        b"\x00",
        bytes(66),
    ],
)
def test_load_public_key_rejects_malformed_points(data: bytes) -> None:
    with pytest.raises(keys.InvalidKeyError):
        keys.load_public_key(data)


def test_load_public_key_rejects_an_x_without_a_curve_point() -> None:
    x = _x_not_on_curve()
    with pytest.raises(keys.InvalidKeyError):
        keys.load_public_key(b"\x03" + x)
    assert issubclass(keys.InvalidKeyError, ProtocolError)


def test_ecdh_is_the_x_coordinate_of_the_shared_point() -> None:
    a, b = 0x1234567890ABCDEF, 0xFEDCBA0987654321
    key_a = ec.derive_private_key(a, ec.SECP256R1())
    key_b = ec.derive_private_key(b, ec.SECP256R1())
    shared = keys.ecdh(key_a, key_b.public_key())
    assert shared == keys.ecdh(key_b, keys.public_key_bytes(key_a))
    assert shared == keys.ecdh(key_b, keys.public_key_bytes(key_a, compressed=True))
    x = ec.derive_private_key(a * b % P256_ORDER, ec.SECP256R1()).public_key().public_numbers().x
    assert shared == x.to_bytes(32, "big")


def test_linking_signature_verifies_with_the_desktop_qr_key() -> None:
    phone, desktop = keys.generate_private_key(), keys.generate_private_key()
    handshake_hash = hashlib.sha256(b"session").digest()
    signature = keys.linking_signature(phone, keys.public_key_bytes(desktop), handshake_hash)
    assert len(signature) == 32
    expected = hmac.new(
        keys.ecdh(phone, desktop.public_key()), handshake_hash, hashlib.sha256
    ).digest()
    assert signature == expected
    phone_public = keys.public_key_bytes(phone)
    assert keys.verify_linking_signature(desktop, phone_public, handshake_hash, signature)
    for bit in range(256):
        changed = bytearray(handshake_hash)
        changed[bit // 8] ^= 1 << (bit % 8)
        assert not keys.verify_linking_signature(desktop, phone_public, bytes(changed), signature)
    other = keys.public_key_bytes(keys.generate_private_key())
    assert not keys.verify_linking_signature(desktop, other, handshake_hash, signature)
    assert not keys.verify_linking_signature(
        desktop, b"\x04" + bytes(64), handshake_hash, signature
    )
    assert not keys.verify_linking_signature(desktop, phone_public, handshake_hash, signature[:31])
