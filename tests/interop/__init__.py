"""Independent hybrid (caBLE v2) primitives for interoperability peers.

Written only from /work/shared/docs/hybrid-protocol.md, never from hybrid/ or relay/, so that a
misreading of the protocol shared by our desktop and phone shows up against these peers. Owns:
the Derive helper (§2.1), the FIDO:/ digit codec (§3.3), QR map encode/validate (§3), key
derivation (§4), the 20-byte advert (§6), Noise KNpsk0 (§8), the Crypter (§9), canonical CBOR
(§2) and the trio-websocket glue for the tunnel paths (§7).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SUBPROTOCOL = "fido.cable"
ROUTING_ID_HEADER = "x-cable-routing-id"
UUID_FFF9 = b"\xff\xf9"
UUID_FDE2 = b"\xfd\xe2"
KN_NAME = b"Noise_KNpsk0_P256_AESGCM_SHA256"


class PeerError(Exception):
    """Anything the independent peer considers a protocol violation by the other side."""


# --- §2 primitives ---------------------------------------------------------------------------


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def derive(secret: bytes, salt: bytes, purpose: int, length: int) -> bytes:
    return hkdf(secret, salt, purpose.to_bytes(4, "little"), length)


def pub65(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def pub33(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def load_point(data: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError as exc:
        raise PeerError(f"invalid P-256 point ({len(data)} bytes)") from exc


def ecdh(priv: ec.EllipticCurvePrivateKey, pub: ec.EllipticCurvePublicKey) -> bytes:
    return priv.exchange(ec.ECDH(), pub)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- CBOR ------------------------------------------------------------------------------------


def cbor_encode(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def cbor_decode_one(data: bytes) -> Any:
    """Decode exactly one CBOR item; trailing bytes are an error (§2, §3.5)."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise PeerError(f"malformed CBOR: {exc}") from exc
    if fp.tell() != len(data):
        raise PeerError(f"trailing bytes after CBOR item ({len(data) - fp.tell()})")
    return item


def ctap_canonical_key_order(keys: list[Any]) -> list[Any]:
    """CTAP2 canonical order: encoded key length first, then bytewise (§2)."""
    return sorted(keys, key=lambda k: (len(cbor2.dumps(k)), cbor2.dumps(k)))


def is_ctap_canonical(data: bytes) -> bool:
    """True when re-encoding canonically gives the same bytes (order and shortest forms)."""
    return cbor_encode(cbor_decode_one(data)) == data


# --- §3.3 digits -----------------------------------------------------------------------------

WIDTH = {1: 3, 2: 5, 3: 8, 4: 10, 5: 13, 6: 15, 7: 17}
LEN_FOR_WIDTH = {0: 0, 3: 1, 5: 2, 8: 3, 10: 4, 13: 5, 15: 6}


def digits_encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data), 7):
        chunk = data[i : i + 7]
        out.append(str(int.from_bytes(chunk, "little")).zfill(WIDTH[len(chunk)]))
    return "".join(out)


def digits_decode(text: str) -> bytes:
    if not text or not all("0" <= c <= "9" for c in text):
        raise PeerError("invalid digits")
    out = bytearray()
    pos = 0
    while len(text) - pos >= 17:
        value = int(text[pos : pos + 17])
        if value >= 1 << 56:
            raise PeerError("digit group out of range")
        out += value.to_bytes(7, "little")
        pos += 17
    rest = text[pos:]
    if len(rest) not in LEN_FOR_WIDTH:
        raise PeerError("invalid digit length")
    n = LEN_FOR_WIDTH[len(rest)]
    if n:
        value = int(rest)
        if value >= 1 << (8 * n):
            raise PeerError("digit group out of range")
        out += value.to_bytes(n, "little")
    return bytes(out)


# --- §3 QR -----------------------------------------------------------------------------------


def qr_map(identity_pub33: bytes, secret: bytes, now: int, hint: str) -> bytes:
    return cbor_encode({0: identity_pub33, 1: secret, 2: 2, 3: now, 4: False, 5: hint})


def fido_url(cbor_bytes: bytes) -> str:
    return "FIDO:/" + digits_encode(cbor_bytes)


@dataclass
class QrInfo:
    identity: ec.EllipticCurvePublicKey
    secret: bytes
    known_domains: int
    hint: str
    raw: dict = field(default_factory=dict)


def parse_fido_url(url: str) -> QrInfo:
    """Strict phone-side validation (§3.5)."""
    if len(url) <= 6 or url[:6].upper() != "FIDO:/":
        raise PeerError("not a hybrid QR")
    m = cbor_decode_one(digits_decode(url[6:]))
    if not isinstance(m, dict):
        raise PeerError("QR CBOR is not a map")
    pk = m.get(0)
    if not isinstance(pk, bytes) or len(pk) != 33:
        raise PeerError("bad public key")
    identity = load_point(pk)
    secret = m.get(1)
    if not isinstance(secret, bytes) or len(secret) != 16:
        raise PeerError("bad secret")
    if 2 in m and (not isinstance(m[2], int) or isinstance(m[2], bool)):
        raise PeerError("key 2 wrong type")
    if 4 in m and not isinstance(m[4], bool):
        raise PeerError("key 4 wrong type")
    if 5 in m and not isinstance(m[5], str):
        raise PeerError("key 5 wrong type")
    return QrInfo(identity, secret, m.get(2, 0), m.get(5, "ga"), m)


# --- §4 / §6 advert ---------------------------------------------------------------------------


def eid_key(secret: bytes) -> bytes:
    return derive(secret, b"", 1, 64)


def tunnel_id(secret: bytes) -> bytes:
    return derive(secret, b"", 2, 16)


def psk(secret: bytes, eid_plaintext: bytes) -> bytes:
    return derive(secret, eid_plaintext, 3, 32)


def _aes_block(key: bytes, block: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(block) + ctx.finalize()


def advert_encrypt(key64: bytes, plaintext: bytes) -> bytes:
    assert len(plaintext) == 16
    ct = _aes_block(key64[:32], plaintext, True)
    return ct + hmac.new(key64[32:], ct, hashlib.sha256).digest()[:4]


def advert_trial_decrypt(key64: bytes, data: bytes) -> bytes | None:
    """§6.2 steps 1-4: the plaintext if the advert is ours and valid, else None."""
    if len(data) < 20:
        return None
    ct, tag = data[:16], data[16:20]
    want = hmac.new(key64[32:], ct, hashlib.sha256).digest()[:4]
    if not hmac.compare_digest(want, tag):
        return None
    plain = _aes_block(key64[:32], ct, False)
    domain = int.from_bytes(plain[14:16], "little")
    if plain[0] != 0 or 2 <= domain <= 255:
        return None
    return plain


# --- §8 Noise --------------------------------------------------------------------------------


class Symmetric:
    def __init__(self, name: bytes) -> None:
        self.h = self.ck = name.ljust(32, b"\x00")
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        out = hkdf(ikm, self.ck, b"", 64)
        self.ck, self.k, self.n = out[:32], out[32:], 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        out = hkdf(ikm, self.ck, b"", 96)
        self.ck, t, self.k = out[:32], out[32:64], out[64:]
        self.mix_hash(t)
        self.n = 0

    def _nonce(self) -> bytes:
        return b"\x00" * 4 + self.n.to_bytes(8, "big")

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.k is not None
        c = AESGCM(self.k).encrypt(self._nonce(), plaintext, self.h)
        self.n += 1
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, c: bytes) -> bytes:
        assert self.k is not None
        try:
            p = AESGCM(self.k).decrypt(self._nonce(), c, self.h)
        except Exception as exc:
            raise PeerError("Noise AEAD failure") from exc
        self.n += 1
        self.mix_hash(c)
        return p

    def split(self) -> tuple[bytes, bytes]:
        out = hkdf(b"", self.ck, b"", 64)
        return out[:32], out[32:]


class KNInitiator:
    """Desktop side of KNpsk0 (§8.2)."""

    def __init__(self, static: ec.EllipticCurvePrivateKey, psk_: bytes) -> None:
        self.s = static
        self.sym = Symmetric(KN_NAME)
        self.sym.mix_hash(b"\x01")
        self.sym.mix_hash(pub65(static.public_key()))
        self.sym.mix_key_and_hash(psk_)
        self.e = new_key()

    def message1(self) -> bytes:
        e65 = pub65(self.e.public_key())
        self.sym.mix_hash(e65)
        self.sym.mix_key(e65)
        return e65 + self.sym.encrypt_and_hash(b"")

    def read_message2(self, msg: bytes) -> tuple[bytes, bytes, bytes]:
        """Returns (write_key, read_key, handshake_hash)."""
        if len(msg) != 81:
            raise PeerError(f"Noise message 2 is {len(msg)} bytes, not 81")
        re = load_point(msg[:65])
        self.sym.mix_hash(msg[:65])
        self.sym.mix_key(msg[:65])
        self.sym.mix_key(ecdh(self.e, re))
        self.sym.mix_key(ecdh(self.s, re))
        if self.sym.decrypt_and_hash(msg[65:]) != b"":
            raise PeerError("non-empty handshake payload")
        k1, k2 = self.sym.split()
        return k1, k2, self.sym.h


def kn_respond(
    rs: ec.EllipticCurvePublicKey, psk_: bytes, msg1: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """Phone side of KNpsk0 (§8.2). Returns (message2, write_key, read_key, handshake_hash)."""
    if len(msg1) != 81:
        raise PeerError(f"Noise message 1 is {len(msg1)} bytes, not 81")
    sym = Symmetric(KN_NAME)
    sym.mix_hash(b"\x01")
    sym.mix_hash(pub65(rs))
    sym.mix_key_and_hash(psk_)
    re = load_point(msg1[:65])
    sym.mix_hash(msg1[:65])
    sym.mix_key(msg1[:65])
    if sym.decrypt_and_hash(msg1[65:]) != b"":
        raise PeerError("non-empty handshake payload")
    e = new_key()
    e65 = pub65(e.public_key())
    sym.mix_hash(e65)
    sym.mix_key(e65)
    sym.mix_key(ecdh(e, re))
    sym.mix_key(ecdh(e, rs))
    msg2 = e65 + sym.encrypt_and_hash(b"")
    k1, k2 = sym.split()
    return msg2, k2, k1, sym.h


# --- §9 Crypter ------------------------------------------------------------------------------


class Crypter:
    def __init__(self, write_key: bytes, read_key: bytes) -> None:
        self.write_key, self.read_key = write_key, read_key
        self.write_seq = self.read_seq = 0

    def encrypt(self, plaintext: bytes) -> bytes:
        padded_len = ((len(plaintext) + 1 + 31) // 32) * 32
        zeros = padded_len - len(plaintext) - 1
        padded = plaintext + b"\x00" * zeros + bytes([zeros])
        nonce = b"\x00" * 8 + self.write_seq.to_bytes(4, "big")
        self.write_seq += 1
        return AESGCM(self.write_key).encrypt(nonce, padded, b"")

    def decrypt(self, ciphertext: bytes) -> bytes:
        nonce = b"\x00" * 8 + self.read_seq.to_bytes(4, "big")
        try:
            padded = AESGCM(self.read_key).decrypt(nonce, ciphertext, b"")
        except Exception as exc:
            raise PeerError(f"Crypter failure on message {self.read_seq}") from exc
        self.read_seq += 1
        if not padded or padded[-1] + 1 > len(padded):
            raise PeerError("bad Crypter padding")
        return padded[: len(padded) - padded[-1] - 1]


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


async def recv_binary(ws: Any) -> bytes:
    msg = await ws.get_message()
    if not isinstance(msg, bytes):
        raise PeerError("text WebSocket message")
    return msg
