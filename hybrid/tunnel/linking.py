"""Linking information: what a phone sends so a desktop can contact it later without a QR code.

Protocol notes section 12.1. The phone sends a CBOR map (in an update message at key 1, or, from
older phones, at key 2 of the post-handshake message). A desktop validates it the way Chromium's
``Pairing::Parse`` does before it may keep it: keys 1 (contact id), 2 (link id), 3 (link secret),
4 (phone identity key) and 6 (handshake signature) are byte strings, key 5 (the phone's name) is a
text string, key 4 is a 65-byte uncompressed P-256 point, and the signature verifies against this
session's handshake hash (section 12.3). Anything else is a ``LinkingError``. Key 999 is a vendor
tag (``true`` from Google Play services' implementation), kept but otherwise ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from hybrid import keys
from hybrid.errors import ProtocolError

CONTACT_ID_KEY = 1
LINK_ID_KEY = 2
LINK_SECRET_KEY = 3
PUBLIC_KEY_KEY = 4
NAME_KEY = 5
SIGNATURE_KEY = 6
NEW_IMPLEMENTATION_KEY = 999
LINK_SECRET_LEN = 32
SIGNATURE_LEN = 32
PUBLIC_KEY_LEN = 65


class LinkingError(ProtocolError):
    """Linking information from the phone is malformed or its signature does not verify."""


@dataclass(frozen=True)
class LinkingInfo:
    """Validated linking information (section 12.1); ``public_key`` is the 65-byte point."""

    contact_id: bytes
    link_id: bytes
    link_secret: bytes
    public_key: bytes
    name: str
    signature: bytes
    from_new_implementation: bool = False

    def to_map(self) -> dict[int, Any]:
        """The CBOR map a phone sends (encode with ``fido2.cbor.encode``)."""
        fields: dict[int, Any] = {
            CONTACT_ID_KEY: self.contact_id,
            LINK_ID_KEY: self.link_id,
            LINK_SECRET_KEY: self.link_secret,
            PUBLIC_KEY_KEY: self.public_key,
            NAME_KEY: self.name,
            SIGNATURE_KEY: self.signature,
        }
        if self.from_new_implementation:
            fields[NEW_IMPLEMENTATION_KEY] = True
        return fields


def _bytes_field(
    fields: Mapping[Any, Any], key: int, what: str, length: int | None = None
) -> bytes:
    value = fields.get(key)
    if not isinstance(value, bytes):
        raise LinkingError(f"linking information key {key} ({what}) must be a byte string")
    if length is not None and len(value) != length:
        raise LinkingError(
            f"linking information key {key} ({what}) must be {length} bytes, got {len(value)}"
        )
    return value


def parse_linking(
    fields: Any,
    *,
    desktop_identity: ec.EllipticCurvePrivateKey,
    handshake_hash: bytes,
) -> LinkingInfo:
    """Validate a linking-information map against this session (QR identity key, handshake hash)."""
    if not isinstance(fields, dict):
        raise LinkingError("linking information must be a CBOR map")
    contact_id = _bytes_field(fields, CONTACT_ID_KEY, "contact id")
    link_id = _bytes_field(fields, LINK_ID_KEY, "link id")
    link_secret = _bytes_field(fields, LINK_SECRET_KEY, "link secret", LINK_SECRET_LEN)
    public_key = _bytes_field(fields, PUBLIC_KEY_KEY, "phone public key", PUBLIC_KEY_LEN)
    signature = _bytes_field(fields, SIGNATURE_KEY, "handshake signature", SIGNATURE_LEN)
    name = fields.get(NAME_KEY)
    if not isinstance(name, str):
        raise LinkingError(f"linking information key {NAME_KEY} (name) must be a text string")
    try:
        keys.load_public_key(public_key)
    except keys.InvalidKeyError as exc:
        raise LinkingError(f"linking information key 4 is not a P-256 point: {exc}") from None
    if not keys.verify_linking_signature(desktop_identity, public_key, handshake_hash, signature):
        raise LinkingError("linking information signature does not match this handshake")
    return LinkingInfo(
        contact_id=contact_id,
        link_id=link_id,
        link_secret=link_secret,
        public_key=public_key,
        name=name,
        signature=signature,
        from_new_implementation=fields.get(NEW_IMPLEMENTATION_KEY) is True,
    )


def create_linking(
    phone_identity: ec.EllipticCurvePrivateKey,
    desktop_identity_public: keys.PublicKeyLike,
    handshake_hash: bytes,
    *,
    contact_id: bytes,
    link_id: bytes,
    link_secret: bytes,
    name: str,
) -> LinkingInfo:
    """The phone side: linking information signed for this session's handshake (section 12.3)."""
    return LinkingInfo(
        contact_id=bytes(contact_id),
        link_id=bytes(link_id),
        link_secret=bytes(link_secret),
        public_key=keys.public_key_bytes(phone_identity),
        name=name,
        signature=keys.linking_signature(phone_identity, desktop_identity_public, handshake_hash),
    )
