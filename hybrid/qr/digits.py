"""The ``FIDO:/`` digit encoding of the QR payload (docs/protocol.md section 3.3).

CBOR bytes are cut into 7-byte chunks; each chunk, read as a little-endian integer, is written in
decimal zero-padded to a width that depends only on the chunk length. The widths are the digit
counts of the largest value each length can hold, so the digit count alone tells the decoder how
many bytes the last, shorter chunk had. Pure functions, no I/O.
"""

from hybrid.qr.errors import DigitLengthError, DigitRangeError, NonDigitError, NotFidoUrlError

FIDO_URL_PREFIX = "FIDO:/"
CHUNK_LEN = 7
# chunk length in bytes -> digits it takes; width(n) = len(str(2 ** (8 * n) - 1))
CHUNK_DIGITS = {1: 3, 2: 5, 3: 8, 4: 10, 5: 13, 6: 15, 7: 17}
FULL_CHUNK_DIGITS = CHUNK_DIGITS[CHUNK_LEN]
_BYTES_FOR_DIGITS = {0: 0} | {width: n for n, width in CHUNK_DIGITS.items()}
_ASCII_DIGITS = frozenset("0123456789")


def encoded_length(byte_count: int) -> int:
    """Number of digits ``digits_encode`` produces for ``byte_count`` bytes."""
    full, rest = divmod(byte_count, CHUNK_LEN)
    return full * FULL_CHUNK_DIGITS + (CHUNK_DIGITS[rest] if rest else 0)


def digits_encode(data: bytes) -> str:
    """Encode bytes as the decimal digits that follow ``FIDO:/``."""
    groups = []
    for start in range(0, len(data), CHUNK_LEN):
        chunk = data[start : start + CHUNK_LEN]
        groups.append(str(int.from_bytes(chunk, "little")).zfill(CHUNK_DIGITS[len(chunk)]))
    return "".join(groups)


def digits_decode(digits: str) -> bytes:
    """Decode the digits that follow ``FIDO:/`` back into bytes.

    Raises ``NonDigitError``, ``DigitLengthError`` or ``DigitRangeError``; positions in messages
    count from 0 within ``digits``.
    """
    for position, char in enumerate(digits):
        # str.isdigit() would also accept non-ASCII digits such as Arabic-Indic ones
        if char not in _ASCII_DIGITS:
            raise NonDigitError(
                f"QR digits contain a non-digit character at position {position} ({char!r})"
            )
    full, rest = divmod(len(digits), FULL_CHUNK_DIGITS)
    if rest not in _BYTES_FOR_DIGITS:
        allowed = ", ".join(str(n) for n in sorted(_BYTES_FOR_DIGITS))
        raise DigitLengthError(
            f"QR digits have an impossible length {len(digits)}: after {full} groups of "
            f"{FULL_CHUNK_DIGITS}, {rest} digits remain (must be one of {allowed})"
        )
    out = bytearray()
    position = 0
    while position < len(digits):
        width = min(FULL_CHUNK_DIGITS, len(digits) - position)
        byte_count = _BYTES_FOR_DIGITS[width]
        value = int(digits[position : position + width])
        if value >> (8 * byte_count):
            raise DigitRangeError(
                f"QR digit group at positions {position}-{position + width - 1} has value "
                f"{value}, which does not fit in {byte_count} bytes"
            )
        out += value.to_bytes(byte_count, "little")
        position += width
    return bytes(out)


def strip_prefix(url: str) -> str:
    """Return the digits of a ``FIDO:/`` URL; the prefix is compared ASCII-case-insensitively."""
    if not isinstance(url, str):
        raise NotFidoUrlError("not a FIDO:/ URL")
    head = url[: len(FIDO_URL_PREFIX)]
    # only ASCII letters may differ in case; str.upper() would also map e.g. 'ı' to 'I'
    if not head.isascii() or head.upper() != FIDO_URL_PREFIX:
        raise NotFidoUrlError("not a FIDO:/ URL")
    digits = url[len(FIDO_URL_PREFIX) :]
    if not digits:
        raise NotFidoUrlError("FIDO:/ URL has nothing after the prefix")
    return digits


def url_encode(data: bytes) -> str:
    """Bytes -> ``FIDO:/<digits>`` with the upper-case prefix cameras expect."""
    return FIDO_URL_PREFIX + digits_encode(data)


def url_decode(url: str) -> bytes:
    """``FIDO:/<digits>`` -> bytes; raises a ``QrError`` subclass saying what is wrong."""
    return digits_decode(strip_prefix(url))
