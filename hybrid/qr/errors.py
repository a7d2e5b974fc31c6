"""Typed errors for everything that can be wrong with a ``FIDO:/`` QR code.

Each malformed-input class of the docs/protocol.md (section 3.5) has its own ``QrError`` subclass so
callers and tests can tell them apart; every message is one line that says what is wrong.
"""

from hybrid.errors import ProtocolError


class QrError(ProtocolError):
    """A QR code, its text or its payload is not a valid hybrid (caBLE v2) QR."""


class NotFidoUrlError(QrError):
    """The text does not start with ``FIDO:/`` or nothing follows the prefix."""


class QrDigitsError(QrError):
    """The decimal digits after ``FIDO:/`` cannot be turned back into bytes."""


class NonDigitError(QrDigitsError):
    """A character other than ASCII 0-9 appears in the digits."""


class DigitLengthError(QrDigitsError):
    """The number of digits leaves a final group whose width no byte count has."""


class DigitRangeError(QrDigitsError):
    """A digit group's value does not fit in the bytes its width stands for."""


class QrCborError(QrError):
    """The bytes are not exactly one well-formed, definite-length CBOR map."""


class QrFieldError(QrError):
    """The CBOR map is well-formed but one of its keys is missing or wrong."""


class MissingKeyError(QrFieldError):
    """A required key (0 public key, 1 QR secret) is absent."""


class KeyTypeError(QrFieldError):
    """A key holds a value of the wrong CBOR type."""


class KeyLengthError(QrFieldError):
    """A byte-string key (0 or 1) has the wrong length."""


class InvalidPublicKeyError(QrFieldError):
    """Key 0 is 33 bytes but not a compressed point on P-256."""


class QrJsonError(QrError):
    """The JSON form of a payload (``hybrid qr encode`` input) is malformed."""


class QrImageError(QrError):
    """An image file cannot be read or contains no QR code."""


class QrRenderError(QrError):
    """The text cannot be drawn as a QR code (too long) or the file cannot be written."""
