"""The post-handshake Crypter (docs/protocol.md section 9)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from hybrid.errors import ProtocolError
from hybrid.tunnel.crypter import Crypter, CrypterError, pad, unpad
from hybrid.tunnel.noise import HandshakeResult

K1, K2 = b"\x2a" * 32, b"\x43" * 32


def _pair(legacy: bool = False) -> tuple[Crypter, Crypter]:
    """(desktop, phone): the desktop writes with K1, the phone writes with K2."""
    return Crypter(K2, K1, legacy=legacy), Crypter(K1, K2, legacy=legacy)


def test_known_ciphertexts_of_the_new_construction() -> None:
    # Vector from Mozilla Firefox's caBLE noise channel tests (security/manager/ssl/noise,
    # Rust_NoiseChannelConsistency): keys 0x2a... and 0x43..., the same fox sentence.
    sender = Crypter(read_key=K1, write_key=K2)
    message = b"The quick brown fox jumps over the lazy dog."
    assert sender.encrypt(message).hex() == (
        "a4221bbd65ac9bd6da472f1c4a93950da19edaccbf61cd8e2febb60df5b2ae33"
        "4cabad4d74321e567b0d0c470429e0cba79c29a79f6148777cd000e31daa6eb7"
        "1dfe23c59a96b2fe48c62a21208821ec"
    )
    assert sender.encrypt(message).hex().startswith("15ad06403f68fced802b3709ac2e9ab5")


def test_nonce_and_ad_layout_of_both_constructions() -> None:
    message = b"hello"
    new = Crypter(K1, K2)
    legacy = Crypter(K1, K2, legacy=True)
    for seq in range(3):
        nonce_new = bytes(8) + seq.to_bytes(4, "big")
        nonce_old = seq.to_bytes(4, "little") + bytes(8)
        assert new.encrypt(message) == AESGCM(K2).encrypt(nonce_new, pad(message), b"")
        assert legacy.encrypt(message) == AESGCM(K2).encrypt(nonce_old, pad(message), b"\x02")


def test_padding_fills_to_a_multiple_of_32_with_a_trailing_count() -> None:
    assert pad(b"") == bytes(31) + bytes([31])
    assert pad(b"a" * 31) == b"a" * 31 + b"\x00"
    assert pad(b"a" * 32) == b"a" * 32 + bytes(31) + bytes([31])
    for n in range(100):
        padded = pad(b"x" * n)
        assert len(padded) % 32 == 0 and len(padded) > n
        assert unpad(padded) == b"x" * n


def test_every_length_0_to_600_round_trips_with_32k_plus_16_ciphertexts() -> None:
    desktop, phone = _pair()
    for n in range(601):
        plaintext = bytes([n % 251]) * n
        ciphertext = desktop.encrypt(plaintext)
        assert len(ciphertext) == 32 * ((n + 32) // 32) + 16
        assert (len(ciphertext) - 16) % 32 == 0
        assert phone.decrypt(ciphertext) == plaintext
    assert desktop.write_sequence == phone.read_sequence == 601


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=600)), max_size=12))
def test_interleaved_traffic_round_trips(messages: list[tuple[bool, bytes]]) -> None:
    desktop, phone = _pair()
    for from_desktop, plaintext in messages:
        sender, receiver = (desktop, phone) if from_desktop else (phone, desktop)
        ciphertext = sender.encrypt(plaintext)
        assert len(ciphertext) % 32 == 16
        assert receiver.decrypt(ciphertext) == plaintext


def test_directions_have_separate_counters() -> None:
    desktop, phone = _pair()
    for i in range(3):
        assert phone.decrypt(desktop.encrypt(bytes([i]))) == bytes([i])
    assert desktop.decrypt(phone.encrypt(b"reply")) == b"reply"
    assert (desktop.write_sequence, desktop.read_sequence) == (3, 1)


def test_each_tampered_byte_is_detected_and_the_crypter_stays_failed() -> None:
    plaintext = b"ctap response"
    ciphertext = Crypter(K1, K2).encrypt(plaintext)
    for i in range(len(ciphertext)):
        receiver = Crypter(K2, K1)
        tampered = bytearray(ciphertext)
        tampered[i] ^= 0x80
        with pytest.raises(CrypterError):
            receiver.decrypt(bytes(tampered))
        assert receiver.failed
        with pytest.raises(CrypterError, match="failed earlier"):
            receiver.decrypt(ciphertext)
        with pytest.raises(CrypterError, match="failed earlier"):
            receiver.encrypt(b"anything")


def test_replayed_ciphertext_fails() -> None:
    desktop, phone = _pair()
    ciphertext = desktop.encrypt(b"once")
    assert phone.decrypt(ciphertext) == b"once"
    with pytest.raises(CrypterError):
        phone.decrypt(ciphertext)


def test_reordered_ciphertexts_fail() -> None:
    desktop, phone = _pair()
    first, second = desktop.encrypt(b"first"), desktop.encrypt(b"second")
    with pytest.raises(CrypterError):
        phone.decrypt(second)
    with pytest.raises(CrypterError):
        phone.decrypt(first)


def test_dropped_message_fails_the_next_one() -> None:
    desktop, phone = _pair()
    desktop.encrypt(b"lost")
    with pytest.raises(CrypterError):
        phone.decrypt(desktop.encrypt(b"next"))


def test_a_message_cannot_be_reflected_back_to_its_sender() -> None:
    desktop, _ = _pair()
    with pytest.raises(CrypterError):
        desktop.decrypt(desktop.encrypt(b"echo"))


def test_decrypt_first_detects_the_legacy_construction_and_fixes_it_both_ways() -> None:
    desktop = Crypter(K2, K1)
    legacy_phone = Crypter(K1, K2, legacy=True)
    assert desktop.decrypt_first(legacy_phone.encrypt(b"post-handshake")) == b"post-handshake"
    assert desktop.legacy
    assert legacy_phone.decrypt(desktop.encrypt(b"request")) == b"request"
    assert desktop.decrypt(legacy_phone.encrypt(b"response")) == b"response"


def test_decrypt_first_accepts_the_new_construction() -> None:
    desktop, phone = _pair()
    assert desktop.decrypt_first(phone.encrypt(b"hello")) == b"hello"
    assert not desktop.legacy
    assert phone.decrypt(desktop.encrypt(b"req")) == b"req"


def test_decrypt_first_after_the_first_message_is_plain_decrypt() -> None:
    desktop = Crypter(K2, K1)
    new_phone, legacy_phone = Crypter(K1, K2), Crypter(K1, K2, legacy=True)
    desktop.decrypt_first(new_phone.encrypt(b"one"))
    legacy_phone.encrypt(b"skip")  # keep the legacy phone's counter in step
    with pytest.raises(CrypterError):
        desktop.decrypt_first(legacy_phone.encrypt(b"two"))


def test_plain_decrypt_does_not_accept_legacy() -> None:
    desktop = Crypter(K2, K1)
    with pytest.raises(CrypterError):
        desktop.decrypt(Crypter(K1, K2, legacy=True).encrypt(b"old"))


def test_decrypt_first_fails_for_garbage_and_stays_failed() -> None:
    desktop, phone = _pair()
    with pytest.raises(CrypterError, match="both constructions"):
        desktop.decrypt_first(bytes(48))
    with pytest.raises(CrypterError):
        desktop.decrypt_first(phone.encrypt(b"late"))


@pytest.mark.parametrize("ciphertext", [b"", bytes(15), "text", None])
def test_malformed_ciphertexts_are_typed_errors(ciphertext: object) -> None:
    desktop, _ = _pair()
    with pytest.raises(CrypterError):
        desktop.decrypt(ciphertext)  # type: ignore[arg-type]


def test_bad_padding_count_is_rejected() -> None:
    # Authentic ciphertexts whose plaintext padding is inconsistent.
    for padded in (b"", b"abc\x05", b"\x20" * 32):
        sealed = AESGCM(K1).encrypt(bytes(12), padded, b"")
        receiver = Crypter(read_key=K1, write_key=K2)
        with pytest.raises(CrypterError, match="padding|empty"):
            receiver.decrypt(sealed)
        assert receiver.failed


def test_unpadding_checks_only_the_count_byte() -> None:
    sealed = AESGCM(K1).encrypt(bytes(12), b"abc\xff\x01", b"")
    assert Crypter(read_key=K1, write_key=K2).decrypt(sealed) == b"abc"


def test_sequence_numbers_stop_at_2_to_the_24_minus_1() -> None:
    desktop, phone = _pair()
    # Browsers stop at 2^24 - 1 (docs/protocol.md section 9.2), spelled out here on purpose.
    desktop._write_seq = (1 << 24) - 1
    phone._read_seq = (1 << 24) - 1
    assert phone.decrypt(desktop.encrypt(b"last")) == b"last"
    with pytest.raises(CrypterError, match="exhausted"):
        desktop.encrypt(b"one too many")
    with pytest.raises(CrypterError, match="exhausted"):
        phone.decrypt(bytes(48))


def test_constructor_and_from_handshake() -> None:
    with pytest.raises(CrypterError):
        Crypter(bytes(16), K2)
    with pytest.raises(CrypterError):
        Crypter(K1, bytes(33))
    result = HandshakeResult(read_key=K1, write_key=K2, handshake_hash=bytes(32))
    crypter = Crypter.from_handshake(result)
    assert Crypter(K2, K1).decrypt(crypter.encrypt(b"x")) == b"x"
    assert issubclass(CrypterError, ProtocolError)
