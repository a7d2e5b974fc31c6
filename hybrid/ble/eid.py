"""The BLE advert: EID plaintext layout, advert encryption and trial decryption.

docs/protocol.md section 6. The phone packs a 16-byte EID plaintext (reserved byte, connection
nonce, routing id, little-endian tunnel-domain id), encrypts it as one raw AES-256 block and appends
the first 4 bytes of HMAC-SHA256 over the ciphertext. The desktop checks the tag first (constant
time), only then decrypts, and treats every mismatch as "not ours" (``None``): scanning sees adverts
from every phone nearby, so a foreign advert is normal traffic, not an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hybrid.errors import ProtocolError
from hybrid.keys import EID_KEY_LEN
from hybrid.tunnel.domains import is_known_domain_id
from hybrid.wire import FIDO_SERVICE_UUID16, GOOGLE_SERVICE_UUID16, ROUTING_ID_LEN

EID_PLAINTEXT_LEN = 16
ADVERT_LEN = 20
NONCE_LEN = 10
TAG_LEN = 4

FIDO_SERVICE_UUID = "0000fff9-0000-1000-8000-00805f9b34fb"
GOOGLE_SERVICE_UUID = "0000fde2-0000-1000-8000-00805f9b34fb"
SERVICE_UUIDS = (FIDO_SERVICE_UUID, GOOGLE_SERVICE_UUID)
SERVICE_UUID16S = (FIDO_SERVICE_UUID16, GOOGLE_SERVICE_UUID16)


class EidError(ProtocolError):
    """An EID plaintext or advert key is malformed (wrong length, reserved byte, unknown domain)."""


@dataclass(frozen=True)
class Eid:
    """The decrypted 16-byte advert content of the QR flow."""

    nonce: bytes
    routing_id: bytes
    tunnel_server_id: int

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LEN:
            raise EidError(f"EID nonce must be {NONCE_LEN} bytes, got {len(self.nonce)}")
        if len(self.routing_id) != ROUTING_ID_LEN:
            raise EidError(
                f"EID routing id must be {ROUTING_ID_LEN} bytes, got {len(self.routing_id)}"
            )
        domain_id = self.tunnel_server_id
        # Any uint16 can be packed (tests craft reserved ids); parse() enforces assigned ones.
        if isinstance(domain_id, bool) or not isinstance(domain_id, int):
            raise EidError(f"tunnel-server domain id must be an integer, got {domain_id!r}")
        if not 0 <= domain_id <= 0xFFFF:
            raise EidError(f"tunnel-server domain id {domain_id} does not fit in 16 bits")

    @classmethod
    def create(cls, routing_id: bytes, tunnel_server_id: int, nonce: bytes | None = None) -> Eid:
        """A new EID for a session; a random connection nonce unless one is injected."""
        return cls(
            nonce=os.urandom(NONCE_LEN) if nonce is None else bytes(nonce),
            routing_id=bytes(routing_id),
            tunnel_server_id=tunnel_server_id,
        )

    def pack(self) -> bytes:
        """Byte 0 reserved (0), 1..10 nonce, 11..13 routing id, 14..15 domain id (LE16)."""
        return b"\x00" + self.nonce + self.routing_id + self.tunnel_server_id.to_bytes(2, "little")

    @classmethod
    def parse(cls, data: bytes) -> Eid:
        """Inverse of ``pack``; ``EidError`` on a bad length, reserved byte or unassigned domain."""
        data = bytes(data)
        if len(data) != EID_PLAINTEXT_LEN:
            raise EidError(f"EID plaintext must be {EID_PLAINTEXT_LEN} bytes, got {len(data)}")
        if data[0] != 0:
            raise EidError(f"EID reserved byte must be 0, got {data[0]:#04x}")
        domain_id = int.from_bytes(data[14:16], "little")
        if not is_known_domain_id(domain_id):
            raise EidError(f"EID names unassigned tunnel-server domain id {domain_id}")
        return cls(nonce=data[1:11], routing_id=data[11:14], tunnel_server_id=domain_id)


def _split_key(eid_key: bytes) -> tuple[bytes, bytes]:
    if len(eid_key) != EID_KEY_LEN:
        raise EidError(f"EID key must be {EID_KEY_LEN} bytes, got {len(eid_key)}")
    return bytes(eid_key[:32]), bytes(eid_key[32:])


def _tag(mac_key: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(mac_key, ciphertext, hashlib.sha256).digest()[:TAG_LEN]


def encrypt_advert(eid_key: bytes, plaintext: bytes) -> bytes:
    """20-byte service data: AES-256 of the single plaintext block, then a 4-byte HMAC tag."""
    aes_key, mac_key = _split_key(eid_key)
    if len(plaintext) != EID_PLAINTEXT_LEN:
        raise EidError(f"EID plaintext must be {EID_PLAINTEXT_LEN} bytes, got {len(plaintext)}")
    encryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    ciphertext = encryptor.update(bytes(plaintext)) + encryptor.finalize()
    return ciphertext + _tag(mac_key, ciphertext)


def decrypt_advert(eid_key: bytes, service_data: bytes, *, linked: bool = False) -> bytes | None:
    """Trial-decrypt one service-data value; the 16-byte plaintext if it is ours, else ``None``.

    At least 20 bytes are required and only the first 20 are used (CTAP 2.3 may append a suffix
    that the tag does not cover). QR flow: byte 0 must be 0 and the domain id assigned or hashed.
    Linked flow: only byte 0 is checked, since deployed phones fill the rest randomly (12.5).
    """
    aes_key, mac_key = _split_key(eid_key)
    if not isinstance(service_data, bytes | bytearray | memoryview):
        return None
    data = bytes(service_data)
    if len(data) < ADVERT_LEN:
        return None
    ciphertext, tag = data[:EID_PLAINTEXT_LEN], data[EID_PLAINTEXT_LEN:ADVERT_LEN]
    # MAC before decrypt, compared in constant time, so foreign adverts leak nothing.
    if not hmac.compare_digest(_tag(mac_key, ciphertext), tag):
        return None
    decryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).decryptor()
    plaintext = decryptor.update(ciphertext) + decryptor.finalize()
    if plaintext[0] != 0:
        return None
    if not linked and not is_known_domain_id(int.from_bytes(plaintext[14:16], "little")):
        return None
    return plaintext
