"""Key material of the hybrid transport: every HKDF derivation and the P-256 helpers.

docs/protocol.md sections 2, 4 and 12.3. All secrets come from one ``derive`` function
(HKDF-SHA256 with ``info = LE32(purpose)``); each purpose number is defined here once so that the
desktop, the phone and the tests cannot drift apart. Only purposes 1-3 must match other
implementations; 4-6 are phone internals that just need to be stable.

P-256 keys travel as 65-byte uncompressed points everywhere except the QR code (33-byte compressed);
ECDH output is the bare 32-byte X coordinate.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hybrid.errors import ProtocolError
from hybrid.wire import P256_COMPRESSED_LEN, P256_UNCOMPRESSED_LEN, PSK_LEN, TUNNEL_ID_LEN

EID_KEY_PURPOSE = 1
TUNNEL_ID_PURPOSE = 2
PSK_PURPOSE = 3
PAIRED_SECRET_PURPOSE = 4
IDENTITY_KEY_SEED_PURPOSE = 5
PER_CONTACT_ID_PURPOSE = 6

EID_KEY_LEN = 64
SECRET_LEN = 32

LINKING_SIGNATURE_LEN = 32

PublicKeyLike = ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | bytes


class InvalidKeyError(ProtocolError):
    """Bytes that should be a P-256 public key are not one (wrong length, format or off-curve)."""


def derive(secret: bytes, salt: bytes, purpose: int, length: int) -> bytes:
    """HKDF-SHA256(IKM=secret, salt=salt, info=LE32(purpose), L=length).

    An empty salt is what RFC 5869 turns into HashLen zero bytes, so both spellings agree.
    """
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=bytes(salt) if salt else None,
        info=purpose.to_bytes(4, "little"),
    ).derive(bytes(secret))


def eid_key(secret: bytes, salt: bytes = b"") -> bytes:
    """64-byte advert key: AES-256 key (0..31) then HMAC-SHA256 key (32..63).

    QR flow: ``secret`` is the QR secret and the salt is empty. Linked flow: ``secret`` is the link
    secret and ``salt`` the 16-byte client nonce.
    """
    return derive(secret, salt, EID_KEY_PURPOSE, EID_KEY_LEN)


def tunnel_id(qr_secret: bytes) -> bytes:
    """16-byte tunnel id that both sides put in the ``/cable/new`` and ``/cable/connect`` paths."""
    return derive(qr_secret, b"", TUNNEL_ID_PURPOSE, TUNNEL_ID_LEN)


def psk(secret: bytes, eid_plaintext: bytes) -> bytes:
    """32-byte Noise ``psk0``, salted with the decrypted 16-byte EID plaintext (proximity proof)."""
    return derive(secret, eid_plaintext, PSK_PURPOSE, PSK_LEN)


def per_contact_secret(root_secret: bytes, contact_id: bytes) -> bytes:
    """Phone-internal: per-contact-ID secret, so re-registering a contact id rotates its links."""
    return derive(root_secret, contact_id, PER_CONTACT_ID_PURPOSE, SECRET_LEN)


def paired_secret(per_contact: bytes, link_id: bytes) -> bytes:
    """Phone-internal: the link secret handed to a desktop in linking information (key 3)."""
    return derive(per_contact, link_id, PAIRED_SECRET_PURPOSE, SECRET_LEN)


def identity_seed(root_secret: bytes) -> bytes:
    """Phone-internal: 32-byte seed of the phone's long-term P-256 identity key."""
    return derive(root_secret, b"", IDENTITY_KEY_SEED_PURPOSE, SECRET_LEN)


def identity_key_from_seed(seed: bytes) -> ec.EllipticCurvePrivateKey:
    """Map a 32-byte seed to a P-256 private key deterministically.

    Any stable mapping works (docs/protocol.md section 17, item 12); this one hashes the seed with a
    counter until the scalar falls in [1, n-1], so it never fails and is uniform.
    """
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    counter = 0
    while True:
        digest = hashlib.sha256(bytes(seed) + counter.to_bytes(4, "big")).digest()
        scalar = int.from_bytes(digest, "big")
        if 0 < scalar < order:
            return ec.derive_private_key(scalar, ec.SECP256R1())
        counter += 1


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key (identity or ephemeral)."""
    return ec.generate_private_key(ec.SECP256R1())


def public_key_bytes(
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, compressed: bool = False
) -> bytes:
    """SEC1 encoding of a P-256 public key: 65 bytes uncompressed, or 33 bytes compressed."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    fmt = (
        serialization.PublicFormat.CompressedPoint
        if compressed
        else serialization.PublicFormat.UncompressedPoint
    )
    return key.public_bytes(serialization.Encoding.X962, fmt)


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a 33-byte compressed or 65-byte uncompressed P-256 point; reject anything else."""
    data = bytes(data)
    if len(data) == P256_UNCOMPRESSED_LEN:
        if data[0] != 0x04:
            raise InvalidKeyError("uncompressed P-256 public key must start with 0x04")
    elif len(data) == P256_COMPRESSED_LEN:
        if data[0] not in (0x02, 0x03):
            raise InvalidKeyError("compressed P-256 public key must start with 0x02 or 0x03")
    else:
        raise InvalidKeyError(f"P-256 public key must be 33 or 65 bytes, got {len(data)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyError("P-256 public key is not a point on the curve") from exc


def as_public_key(key: PublicKeyLike) -> ec.EllipticCurvePublicKey:
    """Accept a public key object, a private key (its public half) or encoded bytes."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidKeyError(f"expected a P-256 key, got curve {key.curve.name}")
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        return load_public_key(bytes(key))
    raise InvalidKeyError(f"expected a P-256 public key, got {type(key).__name__}")


def ecdh(private_key: ec.EllipticCurvePrivateKey, public_key: PublicKeyLike) -> bytes:
    """Plain SEC1 ECDH: the 32-byte big-endian X coordinate of the shared point."""
    return private_key.exchange(ec.ECDH(), as_public_key(public_key))


def linking_signature(
    phone_identity_private: ec.EllipticCurvePrivateKey,
    desktop_qr_public: PublicKeyLike,
    handshake_hash: bytes,
) -> bytes:
    """Linking-information key 6: HMAC-SHA256(ECDH(phone identity, desktop QR key), h).

    docs/protocol.md section 12.3: it binds the phone's identity key to the QR session's handshake.
    """
    shared = ecdh(phone_identity_private, desktop_qr_public)
    return hmac.new(shared, bytes(handshake_hash), hashlib.sha256).digest()


def verify_linking_signature(
    desktop_qr_private: ec.EllipticCurvePrivateKey,
    phone_identity_public: PublicKeyLike,
    handshake_hash: bytes,
    signature: bytes,
) -> bool:
    """Desktop side of section 12.3; constant-time comparison, False for any mismatch."""
    try:
        shared = ecdh(desktop_qr_private, phone_identity_public)
    except InvalidKeyError:
        return False
    expected = hmac.new(shared, bytes(handshake_hash), hashlib.sha256).digest()
    return hmac.compare_digest(expected, bytes(signature))
