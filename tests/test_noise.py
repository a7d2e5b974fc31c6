"""Noise handshake: hybrid KNpsk0/NKpsk0 over P-256, and conformance with ``noiseprotocol``."""

from __future__ import annotations

import warnings

import interop
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.backends.default import DefaultNoiseBackend
from noise.connection import NoiseConnection
from noise.functions.dh import DH
from noise.functions.keypair import KeyPair

from hybrid import keys
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.noise import (
    HANDSHAKE_MESSAGE_LEN,
    KN_PSK0,
    NK_PSK0,
    P256,
    HandshakeError,
    HandshakeState,
    Initiator,
    Pattern,
    Responder,
)

PSK = bytes(range(32))


def _scalar_key(n: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(n, ec.SECP256R1())


# ---------------------------------------------------------------------------------------------
# A DH function for our generic handshake, and P-256 for noiseprotocol's pluggable backend.


class X25519Dh:
    public_len = 32

    def generate(self) -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.generate()

    def public_bytes(self, private: x25519.X25519PrivateKey) -> bytes:
        return private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def load_public(self, data: bytes) -> x25519.X25519PublicKey:
        return x25519.X25519PublicKey.from_public_bytes(data)

    def dh(self, private: x25519.X25519PrivateKey, public: x25519.X25519PublicKey) -> bytes:
        return private.exchange(public)


class _KeyPairP256(KeyPair):
    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> _KeyPairP256:
        private = _scalar_key(int.from_bytes(private_bytes, "big"))
        return cls(private, private.public_key(), keys.public_key_bytes(private))

    @classmethod
    def from_public_bytes(cls, public_bytes: bytes) -> _KeyPairP256:
        public = keys.load_public_key(public_bytes)
        return cls(None, public, keys.public_key_bytes(public))


class _DhP256(DH):
    @property
    def klass(self) -> type[_KeyPairP256]:
        return _KeyPairP256

    @property
    def dhlen(self) -> int:
        # noiseprotocol only uses dhlen to slice the remote ephemeral out of a message.
        return 65

    def generate_keypair(self) -> _KeyPairP256:
        return _KeyPairP256.from_private_bytes(
            keys.generate_private_key().private_numbers().private_value.to_bytes(32, "big")
        )

    def dh(self, private_key: ec.EllipticCurvePrivateKey, public_key: object) -> bytes:
        return keys.ecdh(private_key, public_key)  # type: ignore[arg-type]


class _P256Backend(DefaultNoiseBackend):
    def __init__(self) -> None:
        super().__init__()
        self.diffie_hellmans["P256"] = _DhP256
        self.keypairs["P256"] = _KeyPairP256


def _x25519(seed: int) -> bytes:
    return bytes([seed]) * 32


def _noiseprotocol_run(
    name: bytes,
    prologue: bytes,
    backend: DefaultNoiseBackend,
    *,
    init_s: bytes | None,
    resp_s: bytes | None,
    init_e: bytes,
    resp_e: bytes,
) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Run a full handshake in noiseprotocol; returns msg1, msg2, h, and initiator k1/k2 probes."""
    from noise.connection import Keypair

    init = NoiseConnection.from_name(name, backend=backend)
    resp = NoiseConnection.from_name(name, backend=backend)
    for conn in (init, resp):
        conn.set_psks(PSK)
        conn.set_prologue(prologue)
    init.set_as_initiator()
    resp.set_as_responder()
    klass = init.noise_protocol.dh_fn.klass
    if init_s is not None:
        init.set_keypair_from_private_bytes(Keypair.STATIC, init_s)
        pub = klass.from_private_bytes(init_s).public_bytes
        resp.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, pub)
    if resp_s is not None:
        resp.set_keypair_from_private_bytes(Keypair.STATIC, resp_s)
        pub = klass.from_private_bytes(resp_s).public_bytes
        init.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, pub)
    init.noise_protocol.keypairs["e"] = klass.from_private_bytes(init_e)
    resp.noise_protocol.keypairs["e"] = klass.from_private_bytes(resp_e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that injected ephemerals are for tests only
        init.start_handshake()
        resp.start_handshake()
    m1 = bytes(init.write_message())
    resp.read_message(m1)
    m2 = bytes(resp.write_message())
    init.read_message(m2)
    assert init.handshake_finished and resp.handshake_finished
    h = init.get_handshake_hash()
    assert h == resp.get_handshake_hash()
    # Transport ciphertexts of a known plaintext pin k1 (initiator->responder) and k2.
    probe1 = bytes(init.encrypt(b"probe"))
    probe2 = bytes(resp.encrypt(b"probe"))
    return m1, m2, h, probe1, probe2


def _our_run(
    name: bytes,
    pattern: Pattern,
    dh: object,
    prologue: bytes,
    *,
    init_s: object,
    resp_s: object,
    init_e: object,
    resp_e: object,
) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    init_s_pub = None if init_s is None else dh.public_bytes(init_s)  # type: ignore[attr-defined]
    resp_s_pub = None if resp_s is None else dh.public_bytes(resp_s)  # type: ignore[attr-defined]
    common = dict(protocol_name=name, pattern=pattern, dh=dh, prologue=prologue, psk=PSK)
    init = HandshakeState(initiator=True, s=init_s, rs=resp_s_pub, e=init_e, **common)
    resp = HandshakeState(initiator=False, s=resp_s, rs=init_s_pub, e=resp_e, **common)
    m1 = init.write_message(b"")
    assert resp.read_message(m1) == b""
    m2 = resp.write_message(b"")
    assert init.read_message(m2) == b""
    ir, rr = init.result(), resp.result()
    assert ir.handshake_hash == rr.handshake_hash
    assert (ir.write_key, ir.read_key) == (rr.read_key, rr.write_key)
    nonce = bytes(12)
    probe1 = AESGCM(ir.write_key).encrypt(nonce, b"probe", b"")
    probe2 = AESGCM(rr.write_key).encrypt(nonce, b"probe", b"")
    return m1, m2, ir.handshake_hash, probe1, probe2


@pytest.mark.parametrize(
    ("name", "pattern", "init_static", "resp_static"),
    [
        (b"Noise_KNpsk0_25519_AESGCM_SHA256", KN_PSK0, True, False),
        (b"Noise_NKpsk0_25519_AESGCM_SHA256", NK_PSK0, False, True),
    ],
)
@pytest.mark.parametrize("prologue", [b"", b"\x01", b"\x00"])
def test_generic_handshake_matches_noiseprotocol_on_25519(
    name: bytes, pattern: Pattern, init_static: bool, resp_static: bool, prologue: bytes
) -> None:
    x = x25519.X25519PrivateKey.from_private_bytes
    init_s, resp_s = _x25519(1), _x25519(2)
    init_e, resp_e = _x25519(3), _x25519(4)
    expected = _noiseprotocol_run(
        name,
        prologue,
        DefaultNoiseBackend(),
        init_s=init_s if init_static else None,
        resp_s=resp_s if resp_static else None,
        init_e=init_e,
        resp_e=resp_e,
    )
    ours = _our_run(
        name,
        pattern,
        X25519Dh(),
        prologue,
        init_s=x(init_s) if init_static else None,
        resp_s=x(resp_s) if resp_static else None,
        init_e=x(init_e),
        resp_e=x(resp_e),
    )
    assert ours == expected
    assert len(ours[0]) == len(ours[1]) == 32 + 16


@pytest.mark.parametrize("flow", ["qr", "linked"])
def test_hybrid_roles_match_noiseprotocol_with_a_p256_backend(flow: str) -> None:
    init_s, resp_s, init_e, resp_e = (n.to_bytes(32, "big") for n in (11, 12, 13, 14))
    if flow == "qr":
        name, prologue = b"Noise_KNpsk0_P256_AESGCM_SHA256", b"\x01"
        expected = _noiseprotocol_run(
            name,
            prologue,
            _P256Backend(),
            init_s=init_s,
            resp_s=None,
            init_e=init_e,
            resp_e=resp_e,
        )
        init = Initiator.qr(_scalar_key(11), PSK, ephemeral=_scalar_key(13))
        resp = Responder.qr(keys.public_key_bytes(_scalar_key(11), True), PSK, ephemeral=resp_e)
    else:
        name, prologue = b"Noise_NKpsk0_P256_AESGCM_SHA256", b"\x00"
        expected = _noiseprotocol_run(
            name,
            prologue,
            _P256Backend(),
            init_s=None,
            resp_s=resp_s,
            init_e=init_e,
            resp_e=resp_e,
        )
        init = Initiator.linked(_scalar_key(12).public_key(), PSK, ephemeral=init_e)
        resp = Responder.linked(resp_s, PSK, ephemeral=_scalar_key(14))
    m1 = init.write_message()
    resp.read_message(m1)
    m2, resp_result = resp.write_message()
    init_result = init.read_message(m2)
    assert m1 == expected[0]
    assert m2 == expected[1]
    assert init_result.handshake_hash == resp_result.handshake_hash == expected[2]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(init_result.write_key).encrypt(bytes(12), b"probe", b"") == expected[3]
    assert AESGCM(resp_result.write_key).encrypt(bytes(12), b"probe", b"") == expected[4]


# ---------------------------------------------------------------------------------------------
# Hybrid roles end to end.


def _qr_pair(psk: bytes = PSK) -> tuple[ec.EllipticCurvePrivateKey, Initiator, Responder]:
    identity = keys.generate_private_key()
    initiator = Initiator.qr(identity, psk)
    responder = Responder.qr(keys.public_key_bytes(identity, compressed=True), psk)
    return identity, initiator, responder


def _exchange_traffic(desktop: Crypter, phone: Crypter) -> None:
    first = phone.encrypt(b"post-handshake")
    assert desktop.decrypt_first(first) == b"post-handshake"
    for i in range(5):
        request = bytes([1, i]) + b"request" * i
        assert phone.decrypt(desktop.encrypt(request)) == request
        reply = bytes([1, 0]) + b"response" * i
        assert desktop.decrypt(phone.encrypt(reply)) == reply


@pytest.mark.parametrize("flow", ["qr", "linked"])
def test_complete_handshake_then_crypter_traffic_both_ways(flow: str) -> None:
    if flow == "qr":
        _, initiator, responder = _qr_pair()
    else:
        phone_identity = keys.generate_private_key()
        initiator = Initiator.linked(keys.public_key_bytes(phone_identity), PSK)
        responder = Responder.linked(phone_identity, PSK)
    message1 = initiator.write_message()
    assert len(message1) == HANDSHAKE_MESSAGE_LEN == 81
    assert responder.read_message(message1) is None
    message2, phone_result = responder.write_message()
    assert len(message2) == 81
    desktop_result = initiator.read_message(message2)
    assert desktop_result.write_key == phone_result.read_key
    assert desktop_result.read_key == phone_result.write_key
    assert desktop_result.write_key != desktop_result.read_key
    assert desktop_result.handshake_hash == phone_result.handshake_hash
    assert len(desktop_result.handshake_hash) == 32
    _exchange_traffic(Crypter.from_handshake(desktop_result), Crypter.from_handshake(phone_result))


def test_linking_signature_over_the_qr_handshake_hash() -> None:
    identity, initiator, responder = _qr_pair()
    responder.read_message(initiator.write_message())
    message2, phone_result = responder.write_message()
    desktop_result = initiator.read_message(message2)
    phone_identity = keys.generate_private_key()
    signature = keys.linking_signature(
        phone_identity, keys.public_key_bytes(identity), phone_result.handshake_hash
    )
    phone_public = keys.public_key_bytes(phone_identity)
    assert keys.verify_linking_signature(
        identity, phone_public, desktop_result.handshake_hash, signature
    )
    assert not keys.verify_linking_signature(
        identity, phone_public, desktop_result.read_key, signature
    )


def test_injected_ephemerals_make_the_handshake_deterministic() -> None:
    def run() -> tuple[bytes, bytes, bytes]:
        initiator = Initiator.qr(_scalar_key(5), PSK, ephemeral=_scalar_key(6))
        responder = Responder.qr(_scalar_key(5).public_key(), PSK, ephemeral=_scalar_key(7))
        m1 = initiator.write_message()
        responder.read_message(m1)
        m2, result = responder.write_message()
        return m1, m2, result.handshake_hash

    assert run() == run()
    assert run()[0][:65] == keys.public_key_bytes(_scalar_key(6))


def test_protocol_names_are_31_bytes() -> None:
    from hybrid.tunnel import noise

    # The independent peer (tests/interop) spells the QR flow's name itself; the linked one is
    # the same name with the pattern swapped, as the Noise naming rules build it.
    assert noise.KN_PROTOCOL_NAME == interop.KN_NAME
    assert noise.NK_PROTOCOL_NAME == interop.KN_NAME.replace(b"KNpsk0", b"NKpsk0")
    assert len(noise.KN_PROTOCOL_NAME) == len(noise.NK_PROTOCOL_NAME) == 31


def test_wrong_psk_fails_at_the_responder() -> None:
    identity = keys.generate_private_key()
    initiator = Initiator.qr(identity, PSK)
    responder = Responder.qr(identity.public_key(), bytes(32))
    with pytest.raises(HandshakeError, match="authentication"):
        responder.read_message(initiator.write_message())


def test_wrong_static_key_fails_in_both_flows() -> None:
    identity = keys.generate_private_key()
    initiator = Initiator.qr(identity, PSK)
    responder = Responder.qr(keys.generate_private_key().public_key(), PSK)
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message())

    phone = keys.generate_private_key()
    initiator = Initiator.linked(keys.generate_private_key().public_key(), PSK)
    responder = Responder.linked(phone, PSK)
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message())


@pytest.mark.parametrize("prologue", [b"\x00", b"\x02", b""])
def test_wrong_prologue_fails(prologue: bytes) -> None:
    identity = keys.generate_private_key()
    from hybrid.tunnel.noise import KN_PROTOCOL_NAME

    impostor = HandshakeState(
        protocol_name=KN_PROTOCOL_NAME,
        pattern=KN_PSK0,
        dh=P256(),
        initiator=True,
        prologue=prologue,
        psk=PSK,
        s=identity,
    )
    responder = Responder.qr(identity.public_key(), PSK)
    with pytest.raises(HandshakeError):
        responder.read_message(impostor.write_message(b""))


def test_qr_and_linked_flows_do_not_mix() -> None:
    phone = keys.generate_private_key()
    initiator = Initiator.qr(phone, PSK)
    responder = Responder.linked(phone, PSK)
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message())


def test_tampered_message_two_fails_at_the_initiator() -> None:
    _, initiator, responder = _qr_pair()
    responder.read_message(initiator.write_message())
    message2, _ = responder.write_message()
    tampered = message2[:-1] + bytes([message2[-1] ^ 1])
    with pytest.raises(HandshakeError):
        initiator.read_message(tampered)
    with pytest.raises(HandshakeError, match="already failed"):
        initiator.read_message(message2)


@pytest.mark.parametrize("length", [0, 1, 64, 65, 80, 82, 97, 200])
def test_wrong_message_lengths_are_rejected(length: int) -> None:
    _, initiator, responder = _qr_pair()
    message1 = initiator.write_message()
    bad = (message1 * 3)[:length]
    with pytest.raises(HandshakeError, match="81 bytes"):
        responder.read_message(bad)
    _, initiator, responder = _qr_pair()
    responder.read_message(initiator.write_message())
    message2, _ = responder.write_message()
    with pytest.raises(HandshakeError, match="81 bytes"):
        initiator.read_message((message2 * 3)[:length])


def test_non_empty_payload_is_rejected() -> None:
    identity = keys.generate_private_key()
    from hybrid.tunnel.noise import KN_PROTOCOL_NAME, QR_PROLOGUE

    sender = HandshakeState(
        protocol_name=KN_PROTOCOL_NAME,
        pattern=KN_PSK0,
        dh=P256(),
        initiator=True,
        prologue=QR_PROLOGUE,
        psk=PSK,
        s=identity,
    )
    message = sender.write_message(b"x")
    assert len(message) == 82
    with pytest.raises(HandshakeError):
        Responder.qr(identity.public_key(), PSK).read_message(message)


def _off_curve_point() -> bytes:
    return b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")


@pytest.mark.parametrize(
    "point",
    [
        _off_curve_point(),
        b"\x04" + bytes(64),
        b"\x02" + bytes(64),
        b"\x00" * 65,
        b"\x06" + keys.public_key_bytes(_scalar_key(3))[1:],
    ],
)
def test_invalid_ephemeral_points_are_rejected(point: bytes) -> None:
    _, initiator, responder = _qr_pair()
    message1 = initiator.write_message()
    with pytest.raises(HandshakeError, match="ephemeral"):
        responder.read_message(point + message1[65:])
    _, initiator, responder = _qr_pair()
    responder.read_message(initiator.write_message())
    message2, _ = responder.write_message()
    with pytest.raises(HandshakeError, match="ephemeral"):
        initiator.read_message(point + message2[65:])


def test_calls_out_of_turn_raise() -> None:
    _, initiator, responder = _qr_pair()
    with pytest.raises(HandshakeError, match="out of turn"):
        initiator.read_message(bytes(81))
    with pytest.raises(HandshakeError, match="out of turn"):
        responder.write_message()
    message1 = initiator.write_message()
    with pytest.raises(HandshakeError, match="out of turn"):
        initiator.write_message()
    responder.read_message(message1)
    with pytest.raises(HandshakeError, match="out of turn"):
        responder.read_message(message1)
    message2, _ = responder.write_message()
    initiator.read_message(message2)
    with pytest.raises(HandshakeError):
        initiator.read_message(message2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: Initiator.qr(keys.generate_private_key(), bytes(31)),
        lambda: Initiator.qr(b"\x00" * 32, PSK),
        lambda: Initiator.qr(b"\xff" * 32, PSK),
        lambda: Initiator.linked(b"\x04" + bytes(64), PSK),
        lambda: Responder.qr(b"\x05" + bytes(32), PSK),
        lambda: Responder.qr(_off_curve_point(), PSK),
        lambda: Responder.qr(b"short", PSK),
        lambda: Responder.linked("not a key", PSK),
    ],
)
def test_bad_constructor_arguments_raise_handshake_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HandshakeError):
        call()


def test_keys_may_be_given_as_bytes_or_objects() -> None:
    identity = _scalar_key(99)
    scalar = (99).to_bytes(32, "big")
    for desktop_key, phone_view in [
        (identity, keys.public_key_bytes(identity)),
        (scalar, identity.public_key()),
        (identity, identity),
    ]:
        initiator = Initiator.qr(desktop_key, PSK)
        responder = Responder.qr(phone_view, PSK)
        responder.read_message(initiator.write_message())
        message2, phone_result = responder.write_message()
        assert initiator.read_message(message2).handshake_hash == phone_result.handshake_hash


FUZZ = settings()


def _fuzz_messages() -> st.SearchStrategy[bytes]:
    valid_point = keys.public_key_bytes(_scalar_key(1234))
    return st.one_of(
        st.binary(max_size=120),
        st.binary(min_size=81, max_size=81),
        st.binary(min_size=16, max_size=16).map(lambda tag: valid_point + tag),
        st.binary(min_size=64, max_size=64).map(lambda rest: b"\x04" + rest + bytes(16)),
    )


_FUZZ_IDENTITY = _scalar_key(4321)


@FUZZ
@given(_fuzz_messages(), st.booleans())
def test_responder_read_message_only_raises_handshake_error(message: bytes, linked: bool) -> None:
    if linked:
        responder = Responder.linked(_FUZZ_IDENTITY, PSK, ephemeral=_scalar_key(77))
    else:
        responder = Responder.qr(_FUZZ_IDENTITY.public_key(), PSK, ephemeral=_scalar_key(77))
    with pytest.raises(HandshakeError):
        responder.read_message(message)


@FUZZ
@given(_fuzz_messages())
def test_initiator_read_message_only_raises_handshake_error(message: bytes) -> None:
    initiator = Initiator.qr(_FUZZ_IDENTITY, PSK, ephemeral=_scalar_key(78))
    initiator.write_message()
    with pytest.raises(HandshakeError):
        initiator.read_message(message)
