"""Tunnel plaintexts after the handshake: the post-handshake map and per-message framing.

docs/protocol.md section 10. The phone's first Crypter message is a bare CBOR map (key 1 getInfo
bytes, key 2 legacy linking map, key 3 feature strings). Every later message (protocol revision 1)
is one type byte followed by its payload: shutdown, CTAP, update or JSON. Revision 0 phones pad the
post-handshake map with zeros and a trailing 16-bit (or, older still, 8-bit) count and send later
messages without a type byte; ``parse_post_handshake`` detects that by the trailing bytes.

Everything sent here is CTAP2-canonical CBOR (``fido2.cbor``); everything received is decoded by
the strict decoder ``hybrid.cbor``, which refuses trailing bytes (revision detection depends on it),
non-canonical encodings and truncated strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from fido2 import cbor

from hybrid import cbor as strict_cbor
from hybrid.cbor import CborError
from hybrid.errors import ProtocolError

GET_INFO_KEY = 1
LINKING_KEY = 2
FEATURES_KEY = 3
UPDATE_PADDING_KEY = 0
UPDATE_LINKING_KEY = 1
DEFAULT_FEATURES = ("ctap",)
# The Chrome-based phone pads every update message (type byte + CBOR) to about 498 bytes, so that
# the Crypter's own padding makes 512 and the ciphertext 528 bytes, the length Chromium's desktop
# checks (kPaddingTarget + 16). Any message length from 481 to 511 gives that ciphertext.
UPDATE_MESSAGE_LEN = 498
UPDATE_CIPHERTEXT_LEN = 528


class MessageType(IntEnum):
    SHUTDOWN = 0
    CTAP = 1
    UPDATE = 2
    JSON = 3


class FramingError(ProtocolError):
    """A post-handshake plaintext is not a valid message (bad CBOR, unknown type, bad fields)."""


@dataclass(frozen=True)
class PostHandshake:
    """The phone's first message: getInfo (CBOR bytes), optional linking map and features."""

    get_info: bytes | None
    linking: dict[Any, Any] | None
    features: tuple[str, ...]
    legacy_revision0: bool


def decode_cbor_prefix(data: bytes, what: str = "tunnel message") -> tuple[Any, int]:
    """Decode the first strict CBOR item of ``data``; returns it and how many bytes it took."""
    try:
        return strict_cbor.decode_prefix(data)
    except CborError as exc:
        raise FramingError(f"{what}: {exc}") from None


def decode_cbor_exact(data: bytes, what: str = "tunnel message") -> Any:
    """Decode exactly one strict CBOR item (``hybrid.cbor``); trailing bytes are an error."""
    try:
        return strict_cbor.decode(data)
    except CborError as exc:
        raise FramingError(f"{what}: {exc}") from None


def _int_keys(value: Any, what: str) -> dict[int, Any]:
    if not isinstance(value, dict):
        raise FramingError(f"{what} must be a CBOR map, got {type(value).__name__}")
    # type() rather than isinstance(): a CBOR ``true`` key must not alias key 1.
    return {k: v for k, v in value.items() if type(k) is int}


def encode_post_handshake(
    get_info: bytes | None, features: Sequence[str] = DEFAULT_FEATURES
) -> bytes:
    """The phone's first plaintext: canonical ``{1: getInfo, 3: [features...]}``."""
    features = tuple(features)
    if not all(isinstance(f, str) for f in features):
        raise FramingError("features must be text strings")
    if ("ctap" in features) != (get_info is not None):
        raise FramingError("getInfo must be present exactly when the features include 'ctap'")
    message: dict[int, Any] = {FEATURES_KEY: list(features)}
    if get_info is not None:
        message[GET_INFO_KEY] = bytes(get_info)
    return cbor.encode(message)


def _strip_revision0_padding(plaintext: bytes) -> Any:
    # 16-bit little-endian count first (current revision-0 phones), then the older 8-bit count.
    for count_len in (2, 1):
        if len(plaintext) < count_len:
            continue
        zeros = int.from_bytes(plaintext[-count_len:], "little")
        end = len(plaintext) - count_len - zeros
        if end <= 0:
            continue
        try:
            return decode_cbor_exact(plaintext[:end], "post-handshake message")
        except FramingError:
            continue
    raise FramingError("post-handshake message is neither one CBOR map nor a padded revision-0 map")


def parse_post_handshake(plaintext: bytes) -> PostHandshake:
    """Parse the first decrypted message, detecting protocol revision 0 by trailing padding."""
    plaintext = bytes(plaintext)
    if not plaintext:
        raise FramingError("post-handshake message is empty")
    legacy = False
    try:
        value = decode_cbor_exact(plaintext, "post-handshake message")
    except FramingError as exact_error:
        try:
            value = _strip_revision0_padding(plaintext)
        except FramingError:
            raise FramingError(f"{exact_error} (nor is it a padded revision-0 map)") from None
        legacy = True
    fields = _int_keys(value, "post-handshake message")

    features: tuple[str, ...] = DEFAULT_FEATURES
    if FEATURES_KEY in fields:
        raw = fields[FEATURES_KEY]
        if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
            raise FramingError("post-handshake key 3 (features) must be an array of text strings")
        features = tuple(raw)

    get_info = fields.get(GET_INFO_KEY)
    if "ctap" in features:
        if not isinstance(get_info, bytes):
            raise FramingError("post-handshake key 1 (getInfo) must be a byte string")
    elif get_info is not None:
        raise FramingError("post-handshake key 1 (getInfo) present without the 'ctap' feature")

    linking = fields.get(LINKING_KEY)
    if linking is not None and not isinstance(linking, dict):
        raise FramingError("post-handshake key 2 (linking information) must be a map")

    return PostHandshake(
        get_info=get_info, linking=linking, features=features, legacy_revision0=legacy
    )


def encode_message(kind: MessageType, payload: bytes = b"") -> bytes:
    """Revision-1 framing: one type byte, then the payload."""
    try:
        kind = MessageType(kind)
    except ValueError:
        raise FramingError(f"unknown message type {kind!r}") from None
    return bytes([kind]) + bytes(payload)


def parse_message(plaintext: bytes) -> tuple[MessageType, bytes]:
    """Split a revision-1 plaintext into its type and payload; type >= 4 is a protocol error."""
    plaintext = bytes(plaintext)
    if not plaintext:
        raise FramingError("tunnel message is empty (no type byte)")
    try:
        kind = MessageType(plaintext[0])
    except ValueError:
        raise FramingError(f"unknown tunnel message type {plaintext[0]:#04x}") from None
    return kind, plaintext[1:]


def encode_update(
    linking: Mapping[int, Any] | None = None, *, plaintext_len: int | None = UPDATE_MESSAGE_LEN
) -> bytes:
    """A whole update message (type byte included), zero-padded at key 0 like deployed phones.

    ``plaintext_len`` is the length before the Crypter's padding: the default makes the encrypted
    message ``UPDATE_CIPHERTEXT_LEN`` (528) bytes. With ``plaintext_len=None`` no padding key is
    added.
    """
    body: dict[int, Any] = {}
    if linking is not None:
        body[UPDATE_LINKING_KEY] = dict(linking)
    if plaintext_len is None:
        return encode_message(MessageType.UPDATE, cbor.encode(body))
    # The bstr header grows with its length, so search for the pad size that lands exactly.
    bare = 1 + len(cbor.encode({**body, UPDATE_PADDING_KEY: b""}))
    for pad in range(max(0, plaintext_len - bare - 8), max(0, plaintext_len - bare) + 1):
        message = encode_message(
            MessageType.UPDATE, cbor.encode({**body, UPDATE_PADDING_KEY: bytes(pad)})
        )
        if len(message) == plaintext_len:
            return message
    raise FramingError(f"update message does not fit in {plaintext_len} bytes")


def parse_update(payload: bytes) -> dict[Any, Any] | None:
    """The linking-information map of an update payload, or None; unknown keys are ignored."""
    fields = _int_keys(decode_cbor_exact(bytes(payload), "update message"), "update message")
    linking = fields.get(UPDATE_LINKING_KEY)
    if linking is not None and not isinstance(linking, dict):
        raise FramingError("update key 1 (linking information) must be a map")
    return linking
