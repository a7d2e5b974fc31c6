"""The Noise handshake of the hybrid tunnel: ``KNpsk0`` (QR flow) and ``NKpsk0`` (linked flow).

docs/protocol.md section 8. The handshake is standard Noise (revision 34) with a P-256 DH function:
65-byte uncompressed points on the wire and in ``mix_hash``, DH output = the 32-byte X coordinate,
AES-256-GCM and SHA-256, a one-byte prologue (``0x01`` QR, ``0x00`` linked), empty payloads and
81-byte messages. This module is sans-IO: objects take and return bytes, and ephemeral keys can be
injected so every byte is reproducible.

Why a hand-written symmetric state instead of ``noiseprotocol`` (package ``noise`` 0.3.1)
------------------------------------------------------------------------------------------
``noiseprotocol`` implements the PSK modifier correctly and accepts custom backends, but:

* its ``HandshakeState.read_message`` slices the remote ephemeral as ``DHLEN`` bytes and uses no
  other notion of public-key length, so a P-256 DH can only be plugged in by lying that
  ``dhlen == 65`` (the real DH output is 32 bytes): it works, but only by accident of its internals;
* its failures are untyped (``cryptography.exceptions.InvalidTag``, bare ``Exception``,
  ``NoiseValueError``), it never checks message lengths, and it emits a ``UserWarning`` whenever an
  ephemeral key is injected, which is exactly what deterministic, fuzzable sans-IO code needs;
* it is effectively unmaintained (0.3.1 is its latest release, years old).

So the symmetric and handshake state below are written out (about a hundred lines), generic over the
DH function, and ``tests/test_noise.py`` proves them byte for byte against ``noiseprotocol``:
``test_generic_handshake_matches_noiseprotocol_on_25519`` runs ``Noise_KNpsk0_25519_AESGCM_SHA256``
and ``Noise_NKpsk0_25519_AESGCM_SHA256`` with the same fixed statics and ephemerals in both and gets
identical messages, handshake hashes and split keys;
``test_hybrid_roles_match_noiseprotocol_with_a_p256_backend`` does the same for the two hybrid
protocols, giving ``noiseprotocol`` a P-256 backend (the ``dhlen == 65`` trick above, acceptable in
a test oracle). The P-256 wrappers
``Initiator``/``Responder`` add what hybrid requires on top: exact 81-byte messages, empty payloads,
point validation and one typed ``HandshakeError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hybrid.errors import ProtocolError
from hybrid.keys import (
    InvalidKeyError,
    as_public_key,
    ecdh,
    generate_private_key,
    load_public_key,
    public_key_bytes,
)
from hybrid.wire import GCM_TAG_LEN, HANDSHAKE_MESSAGE_LEN, P256_UNCOMPRESSED_LEN, PSK_LEN

HASH_LEN = 32

KN_PROTOCOL_NAME = b"Noise_KNpsk0_P256_AESGCM_SHA256"
NK_PROTOCOL_NAME = b"Noise_NKpsk0_P256_AESGCM_SHA256"
QR_PROLOGUE = b"\x01"
LINKED_PROLOGUE = b"\x00"


class HandshakeError(ProtocolError):
    """A Noise handshake message was malformed, failed authentication, or arrived out of turn."""


@dataclass(frozen=True)
class HandshakeResult:
    """Transport keys and the final handshake hash (the latter signs linking information)."""

    read_key: bytes
    write_key: bytes
    handshake_hash: bytes


# ---------------------------------------------------------------------------------------------
# Generic Noise machinery (DH-agnostic, so it can be checked against noiseprotocol on 25519).


class DhFunction(Protocol):
    """What the handshake needs from a DH function; keys are opaque objects."""

    public_len: int

    def generate(self) -> Any: ...

    def public_bytes(self, private: Any) -> bytes: ...

    def load_public(self, data: bytes) -> Any: ...

    def dh(self, private: Any, public: Any) -> bytes: ...


class P256:
    """Hybrid's DH: SEC1 uncompressed points, X coordinate as the shared secret."""

    public_len = P256_UNCOMPRESSED_LEN

    def generate(self) -> ec.EllipticCurvePrivateKey:
        return generate_private_key()

    def public_bytes(self, private: ec.EllipticCurvePrivateKey) -> bytes:
        return public_key_bytes(private)

    def load_public(self, data: bytes) -> ec.EllipticCurvePublicKey:
        if len(data) != P256_UNCOMPRESSED_LEN:
            raise InvalidKeyError(
                f"P-256 point must be {P256_UNCOMPRESSED_LEN} bytes, got {len(data)}"
            )
        return load_public_key(data)

    def dh(self, private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
        return ecdh(private, public)


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    # Noise's HKDF(ck, ikm, n) is RFC 5869 HKDF-SHA256 with salt=ck, empty info, n*32 bytes.
    okm = HKDF(algorithm=hashes.SHA256(), length=HASH_LEN * outputs, salt=chaining_key, info=b"")
    material = okm.derive(ikm)
    return [material[i : i + HASH_LEN] for i in range(0, len(material), HASH_LEN)]


class SymmetricState:
    """Noise SymmetricState with SHA-256 and AES-256-GCM (nonce = 4 zero bytes + BE64(n))."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self._k: bytes | None = None
        self._n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self._k = _hkdf(self.ck, ikm, 2)
        self._n = 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, self._k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self._n = 0

    def _nonce(self) -> bytes:
        return b"\x00" * 4 + self._n.to_bytes(8, "big")

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._k is None:
            ciphertext = plaintext
        else:
            ciphertext = AESGCM(self._k).encrypt(self._nonce(), plaintext, self.h)
            self._n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._k is None:
            plaintext = ciphertext
        else:
            try:
                plaintext = AESGCM(self._k).decrypt(self._nonce(), ciphertext, self.h)
            except InvalidTag:
                raise HandshakeError(
                    "handshake message failed authentication (wrong PSK, key or prologue)"
                ) from None
            self._n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = _hkdf(self.ck, b"", 2)
        return k1, k2


@dataclass(frozen=True)
class Pattern:
    """A one-round-trip Noise pattern with a ``psk0`` modifier."""

    name: str
    initiator_premessage: bool  # "-> s" before the handshake (K...)
    responder_premessage: bool  # "<- s" before the handshake (...K)
    messages: tuple[tuple[str, ...], tuple[str, ...]]


KN_PSK0 = Pattern("KNpsk0", True, False, (("psk", "e"), ("e", "ee", "se")))
NK_PSK0 = Pattern("NKpsk0", False, True, (("psk", "e", "es"), ("e", "ee")))


class HandshakeState:
    """Noise HandshakeState for ``Pattern`` over any ``DhFunction``; raises ``HandshakeError``.

    ``s`` is the local static private key, ``rs`` the remote static public key as encoded bytes
    (as hashed in the pre-message), ``e`` an optional injected ephemeral private key.
    """

    def __init__(
        self,
        *,
        protocol_name: bytes,
        pattern: Pattern,
        dh: DhFunction,
        initiator: bool,
        prologue: bytes,
        psk: bytes,
        s: Any = None,
        rs: bytes | None = None,
        e: Any = None,
    ) -> None:
        if len(psk) != PSK_LEN:
            raise HandshakeError(f"PSK must be {PSK_LEN} bytes, got {len(psk)}")
        self._dh = dh
        self._initiator = initiator
        self._psk = bytes(psk)
        self._s, self._e, self._re = s, e, None
        self._rs = None
        if rs is not None:
            try:
                self._rs = dh.load_public(bytes(rs))
            except (InvalidKeyError, ValueError) as exc:
                raise HandshakeError(f"invalid remote static key: {exc}") from None
        self._messages = list(pattern.messages)
        self.symmetric = SymmetricState(protocol_name)
        self.symmetric.mix_hash(prologue)
        # Pre-messages: "-> s" (initiator's static) then "<- s" (responder's static).
        for present, local in (
            (pattern.initiator_premessage, initiator),
            (pattern.responder_premessage, not initiator),
        ):
            if not present:
                continue
            if local:
                if s is None:
                    raise HandshakeError(f"{pattern.name} needs the local static key")
                self.symmetric.mix_hash(dh.public_bytes(s))
            else:
                if rs is None:
                    raise HandshakeError(f"{pattern.name} needs the remote static key")
                self.symmetric.mix_hash(bytes(rs))

    def _dh_token(self, token: str) -> bytes:
        # es/se name (initiator key, responder key); each side uses its own private half.
        if token == "ee":
            return self._dh.dh(self._e, self._re)
        if token == "es":
            if self._initiator:
                return self._dh.dh(self._e, self._rs)
            return self._dh.dh(self._s, self._re)
        if token == "se":
            if self._initiator:
                return self._dh.dh(self._s, self._re)
            return self._dh.dh(self._e, self._rs)
        raise HandshakeError(f"unsupported token {token!r}")

    def write_message(self, payload: bytes) -> bytes:
        if not self._messages:
            raise HandshakeError("handshake already finished")
        out = bytearray()
        for token in self._messages.pop(0):
            if token == "psk":
                self.symmetric.mix_key_and_hash(self._psk)
            elif token == "e":
                if self._e is None:
                    self._e = self._dh.generate()
                e_pub = self._dh.public_bytes(self._e)
                out += e_pub
                # In a PSK handshake the "e" token also mixes the key (Noise section 9.2).
                self.symmetric.mix_hash(e_pub)
                self.symmetric.mix_key(e_pub)
            else:
                self.symmetric.mix_key(self._dh_token(token))
        out += self.symmetric.encrypt_and_hash(payload)
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if not self._messages:
            raise HandshakeError("handshake already finished")
        rest = bytes(message)
        for token in self._messages.pop(0):
            if token == "psk":
                self.symmetric.mix_key_and_hash(self._psk)
            elif token == "e":
                if len(rest) < self._dh.public_len:
                    raise HandshakeError("handshake message too short for an ephemeral key")
                re_bytes, rest = rest[: self._dh.public_len], rest[self._dh.public_len :]
                try:
                    self._re = self._dh.load_public(re_bytes)
                except (InvalidKeyError, ValueError) as exc:
                    raise HandshakeError(f"invalid ephemeral public key: {exc}") from None
                self.symmetric.mix_hash(re_bytes)
                self.symmetric.mix_key(re_bytes)
            else:
                self.symmetric.mix_key(self._dh_token(token))
        if len(rest) < GCM_TAG_LEN:
            raise HandshakeError("handshake message too short for its authentication tag")
        return self.symmetric.decrypt_and_hash(rest)

    @property
    def finished(self) -> bool:
        return not self._messages

    def result(self) -> HandshakeResult:
        """Split into transport keys: initiator writes k1 and reads k2, responder the reverse."""
        if self._messages:
            raise HandshakeError("handshake not finished yet")
        k1, k2 = self.symmetric.split()
        if self._initiator:
            return HandshakeResult(read_key=k2, write_key=k1, handshake_hash=self.symmetric.h)
        return HandshakeResult(read_key=k1, write_key=k2, handshake_hash=self.symmetric.h)


# ---------------------------------------------------------------------------------------------
# Hybrid roles (P-256, fixed names and prologues, 81-byte messages, empty payloads).

PrivateKeyLike = ec.EllipticCurvePrivateKey | bytes
PublicKeyLike = ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | bytes


def _private(key: PrivateKeyLike, what: str) -> ec.EllipticCurvePrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise HandshakeError(f"{what} must be a P-256 key, got curve {key.curve.name}")
        return key
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        try:
            return ec.derive_private_key(int.from_bytes(key, "big"), ec.SECP256R1())
        except ValueError as exc:
            raise HandshakeError(f"{what} is not a valid P-256 scalar") from exc
    raise HandshakeError(f"{what} must be a P-256 private key or a 32-byte scalar")


def _public(key: PublicKeyLike, what: str) -> bytes:
    try:
        return public_key_bytes(as_public_key(key))
    except InvalidKeyError as exc:
        raise HandshakeError(f"{what}: {exc}") from None


def _check_psk(psk: bytes) -> bytes:
    if not isinstance(psk, bytes | bytearray) or len(psk) != PSK_LEN:
        raise HandshakeError(f"PSK must be {PSK_LEN} bytes")
    return bytes(psk)


def _check_message(message: bytes, which: str) -> bytes:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise HandshakeError(f"{which} must be bytes, got {type(message).__name__}")
    message = bytes(message)
    if len(message) != HANDSHAKE_MESSAGE_LEN:
        raise HandshakeError(f"{which} must be {HANDSHAKE_MESSAGE_LEN} bytes, got {len(message)}")
    return message


_T = TypeVar("_T")


def _guarded(step: Callable[[], _T]) -> _T:
    try:
        return step()
    except HandshakeError:
        raise
    except (InvalidKeyError, ValueError) as exc:
        raise HandshakeError(f"handshake failed: {exc}") from None


class _Role:
    """Shared turn-taking: each role has a fixed order of steps and dies on the first error."""

    _steps: Sequence[str]

    def __init__(self, state: HandshakeState) -> None:
        self._state = state
        self._step = 0
        self._failed = False

    def _begin(self, step: str) -> None:
        if self._failed:
            raise HandshakeError("handshake already failed")
        if self._step >= len(self._steps) or self._steps[self._step] != step:
            expected = self._steps[self._step] if self._step < len(self._steps) else "nothing"
            raise HandshakeError(f"{step} called out of turn (expected {expected})")

    def _run(self, step: str, action: Callable[[], _T]) -> _T:
        self._begin(step)
        try:
            out = _guarded(action)
        except HandshakeError:
            self._failed = True
            raise
        self._step += 1
        return out


def _hybrid_state(
    psk: bytes,
    ephemeral: PrivateKeyLike | None,
    *,
    linked: bool,
    initiator: bool,
    s: ec.EllipticCurvePrivateKey | None = None,
    rs: bytes | None = None,
) -> HandshakeState:
    """The handshake state for one hybrid flow: QR (``KNpsk0``) or linked (``NKpsk0``)."""
    return HandshakeState(
        protocol_name=NK_PROTOCOL_NAME if linked else KN_PROTOCOL_NAME,
        pattern=NK_PSK0 if linked else KN_PSK0,
        dh=P256(),
        initiator=initiator,
        prologue=LINKED_PROLOGUE if linked else QR_PROLOGUE,
        psk=_check_psk(psk),
        s=s,
        rs=rs,
        e=None if ephemeral is None else _private(ephemeral, "ephemeral key"),
    )


class Initiator(_Role):
    """The desktop: sends Noise message 1, reads message 2, then holds the transport keys."""

    _steps = ("write_message", "read_message")

    @classmethod
    def qr(
        cls,
        identity_private: PrivateKeyLike,
        psk: bytes,
        *,
        ephemeral: PrivateKeyLike | None = None,
    ) -> Initiator:
        """QR flow (``KNpsk0``, prologue 0x01): the desktop's QR identity key is the static."""
        s = _private(identity_private, "identity key")
        return cls(_hybrid_state(psk, ephemeral, linked=False, initiator=True, s=s))

    @classmethod
    def linked(
        cls,
        phone_identity_public: PublicKeyLike,
        psk: bytes,
        *,
        ephemeral: PrivateKeyLike | None = None,
    ) -> Initiator:
        """Linked flow (``NKpsk0``, prologue 0x00): the phone's identity key is the known static."""
        rs = _public(phone_identity_public, "phone identity key")
        return cls(_hybrid_state(psk, ephemeral, linked=True, initiator=True, rs=rs))

    def write_message(self) -> bytes:
        """Noise message 1: ephemeral point and the tag over an empty payload (81 bytes)."""
        return self._run("write_message", lambda: self._state.write_message(b""))

    def read_message(self, message: bytes) -> HandshakeResult:
        """Process message 2 (exactly 81 bytes, empty payload) and return the transport keys."""

        def step() -> HandshakeResult:
            payload = self._state.read_message(_check_message(message, "Noise message 2"))
            if payload:
                raise HandshakeError("Noise message 2 carries a non-empty payload")
            return self._state.result()

        return self._run("read_message", step)


class Responder(_Role):
    """The phone: reads Noise message 1, answers with message 2 and the transport keys."""

    _steps = ("read_message", "write_message")

    @classmethod
    def qr(
        cls,
        initiator_identity_public: PublicKeyLike,
        psk: bytes,
        *,
        ephemeral: PrivateKeyLike | None = None,
    ) -> Responder:
        """QR flow: ``initiator_identity_public`` is QR key 0 (33 or 65 bytes, or a key object)."""
        rs = _public(initiator_identity_public, "desktop identity key")
        return cls(_hybrid_state(psk, ephemeral, linked=False, initiator=False, rs=rs))

    @classmethod
    def linked(
        cls,
        identity_private: PrivateKeyLike,
        psk: bytes,
        *,
        ephemeral: PrivateKeyLike | None = None,
    ) -> Responder:
        """Linked flow: the phone's long-term identity key is the static."""
        s = _private(identity_private, "identity key")
        return cls(_hybrid_state(psk, ephemeral, linked=True, initiator=False, s=s))

    def read_message(self, message: bytes) -> None:
        """Process message 1 (exactly 81 bytes); its tag proves the PSK, i.e. proximity."""

        def step() -> None:
            payload = self._state.read_message(_check_message(message, "Noise message 1"))
            if payload:
                raise HandshakeError("Noise message 1 carries a non-empty payload")

        self._run("read_message", step)

    def write_message(self) -> tuple[bytes, HandshakeResult]:
        """Noise message 2 (81 bytes) and the transport keys."""

        def step() -> tuple[bytes, HandshakeResult]:
            message = self._state.write_message(b"")
            return message, self._state.result()

        return self._run("write_message", step)
