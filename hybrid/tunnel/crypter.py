"""The post-handshake "Crypter": AES-256-GCM with padding and implicit per-direction counters.

docs/protocol.md section 9. Each plaintext is padded to a multiple of 32 bytes, the last byte saying
how many zero bytes precede it, then sealed with a nonce built from the direction's sequence number.
There is no replay window and no reordering: the counter is implicit, so a lost, repeated or
reordered message fails authentication, and after any failure the Crypter refuses to continue
(the session must end).

Two nonce/AD layouts exist. The *new* one (8 zero bytes + BE32(seq), empty AD) is what every current
peer sends and what we always send. The *legacy* one (LE32(seq) + 8 zero bytes, AD ``0x02``) came
from early phones; ``decrypt_first`` accepts either on the first received message and then fixes
that mode for both directions.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hybrid.errors import ProtocolError
from hybrid.tunnel.noise import HandshakeResult
from hybrid.wire import GCM_TAG_LEN

PADDING_GRANULARITY = 32
KEY_LEN = 32
# Browsers refuse to use sequence numbers beyond 2^24 - 1 in either direction.
MAX_SEQUENCE = (1 << 24) - 1
LEGACY_AD = b"\x02"


class CrypterError(ProtocolError):
    """A tunnel message failed to decrypt or unpad, or the Crypter can no longer be used."""


def pad(plaintext: bytes) -> bytes:
    """Append zeros and a count byte so the length is the next multiple of 32 (at least 1 more)."""
    padded_len = (len(plaintext) + 1 + PADDING_GRANULARITY - 1) // PADDING_GRANULARITY
    padded_len *= PADDING_GRANULARITY
    zeros = padded_len - len(plaintext) - 1
    return plaintext + b"\x00" * zeros + bytes([zeros])


def unpad(padded: bytes) -> bytes:
    """Inverse of ``pad``; like deployed receivers it checks only the trailing count byte."""
    if not padded:
        raise CrypterError("decrypted tunnel message is empty (no padding count byte)")
    zeros = padded[-1]
    if zeros + 1 > len(padded):
        raise CrypterError("tunnel message padding count exceeds the message length")
    return padded[: len(padded) - zeros - 1]


def _nonce(seq: int, legacy: bool) -> bytes:
    if legacy:
        return seq.to_bytes(4, "little") + b"\x00" * 8
    return b"\x00" * 8 + seq.to_bytes(4, "big")


class Crypter:
    """Transport encryption of one session; one side's ``write_key`` is the other's read key."""

    def __init__(self, read_key: bytes, write_key: bytes, *, legacy: bool = False) -> None:
        if len(read_key) != KEY_LEN or len(write_key) != KEY_LEN:
            raise CrypterError(f"Crypter keys must be {KEY_LEN} bytes")
        self._read = AESGCM(bytes(read_key))
        self._write = AESGCM(bytes(write_key))
        self._read_seq = 0
        self._write_seq = 0
        self._legacy = legacy
        # Until the first message is sent or received, decrypt_first may still switch to legacy.
        self._mode_fixed = legacy
        self._failed = False

    @classmethod
    def from_handshake(cls, result: HandshakeResult) -> Crypter:
        return cls(result.read_key, result.write_key)

    @property
    def legacy(self) -> bool:
        """True when the legacy nonce/AD construction is in use."""
        return self._legacy

    @property
    def read_sequence(self) -> int:
        return self._read_seq

    @property
    def write_sequence(self) -> int:
        return self._write_seq

    @property
    def failed(self) -> bool:
        return self._failed

    def _check_usable(self) -> None:
        if self._failed:
            raise CrypterError("tunnel encryption failed earlier; the session cannot continue")

    def _fail(self, message: str) -> CrypterError:
        self._failed = True
        return CrypterError(message)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Pad and seal one message; the ciphertext is always 32*k + 16 bytes."""
        self._check_usable()
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise CrypterError(f"plaintext must be bytes, got {type(plaintext).__name__}")
        if self._write_seq > MAX_SEQUENCE:
            raise self._fail("tunnel write sequence number exhausted (2^24 messages)")
        ad = LEGACY_AD if self._legacy else b""
        ciphertext = self._write.encrypt(
            _nonce(self._write_seq, self._legacy), pad(bytes(plaintext)), ad
        )
        self._write_seq += 1
        self._mode_fixed = True
        return ciphertext

    def _open(self, ciphertext: bytes, legacy: bool) -> bytes | None:
        try:
            return self._read.decrypt(
                _nonce(self._read_seq, legacy), ciphertext, LEGACY_AD if legacy else b""
            )
        except InvalidTag:
            return None

    def _accept(self, padded: bytes) -> bytes:
        self._read_seq += 1
        self._mode_fixed = True
        try:
            return unpad(padded)
        except CrypterError:
            self._failed = True
            raise

    def _check_ciphertext(self, ciphertext: bytes) -> bytes:
        self._check_usable()
        if not isinstance(ciphertext, bytes | bytearray | memoryview):
            raise self._fail(f"ciphertext must be bytes, got {type(ciphertext).__name__}")
        if self._read_seq > MAX_SEQUENCE:
            raise self._fail("tunnel read sequence number exhausted (2^24 messages)")
        ciphertext = bytes(ciphertext)
        if len(ciphertext) < GCM_TAG_LEN:
            raise self._fail(f"tunnel message too short ({len(ciphertext)} bytes)")
        return ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Open the next message in order; any failure is fatal for the session."""
        ciphertext = self._check_ciphertext(ciphertext)
        padded = self._open(ciphertext, self._legacy)
        if padded is None:
            raise self._fail(
                "tunnel message failed authentication (tampered, replayed, reordered or lost)"
            )
        return self._accept(padded)

    def decrypt_first(self, ciphertext: bytes) -> bytes:
        """Open the first received message, accepting either construction.

        The construction that works is then used for both directions. Once anything has been sent
        or received the mode is fixed and this behaves like ``decrypt``.
        """
        if self._mode_fixed:
            return self.decrypt(ciphertext)
        ciphertext = self._check_ciphertext(ciphertext)
        # New first: every current peer uses it; the order cannot change the outcome because a tag
        # that verifies under both nonce/AD pairs would be a GCM forgery.
        for legacy in (False, True):
            padded = self._open(ciphertext, legacy)
            if padded is not None:
                self._legacy = legacy
                return self._accept(padded)
        raise self._fail("first tunnel message failed authentication under both constructions")
