"""The one strict CTAP2-canonical CBOR decoder for everything a peer sends.

Both roles decode peer bytes only through ``decode`` (or ``decode_prefix``): the post-handshake
map, update messages, CTAP requests on the phone and CTAP responses on the desktop. Encoding stays
with python-fido2's ``fido2.cbor.encode``, which already writes CTAP2-canonical CBOR; decoding can
not use ``fido2.cbor.decode`` because it is lenient by design: it reads a truncated string
(``a1 01 58 20 'abc'`` becomes ``{1: b'abc'}``), takes ``null`` for ``False``, accepts any key
order, duplicate keys and over-long integer encodings.

What "strict" means here (CTAP 2.2 §8 "CTAP2 canonical CBOR encoding form", and what Android's
authenticator enforces on requests):

* definite lengths only (no indefinite-length strings, arrays or maps, no "break");
* every integer, length and count in its shortest form;
* map keys unique and in CTAP2 canonical order: lower major type first, then shorter encoding,
  then byte-wise lexical order; keys are integers, text or byte strings only;
* text strings are valid UTF-8;
* no tags, no floating-point numbers, and of the simple values only ``false``, ``true`` and
  ``null``;
* nothing truncated, nothing after the item (``decode``), and at most ``max_depth`` levels of
  nested arrays and maps (16, as Chromium's CBOR reader allows).

Every violation raises ``CborError`` (a ``ProtocolError``) whose message names what was wrong and
the byte offset where it was found. The decoder never allocates more than the input can hold: a
claimed length or count larger than the bytes that remain is reported as truncation before any
item is read.
"""

from __future__ import annotations

from typing import Any

from hybrid.errors import ProtocolError

DEFAULT_MAX_DEPTH = 16

_UINT, _NEGINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)
_MAJOR_NAMES = (
    "unsigned integer",
    "negative integer",
    "byte string",
    "text string",
    "array",
    "map",
    "tag",
    "simple value",
)
_SIMPLE_VALUES: dict[int, bool | None] = {20: False, 21: True, 22: None}


class CborError(ProtocolError):
    """Peer bytes are not one well-formed, CTAP2-canonical CBOR item.

    ``offset`` is the position in the input where the problem was found.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"malformed CBOR at byte {offset}: {reason}")
        self.reason = reason
        self.offset = offset


class _Reader:
    __slots__ = ("data", "pos", "max_depth")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def fail(self, reason: str, at: int | None = None) -> CborError:
        return CborError(reason, self.pos if at is None else at)

    def take(self, count: int, what: str, start: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            remaining = len(self.data) - self.pos
            raise self.fail(f"truncated {what}: needs {count} bytes, {remaining} remain", start)
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int, int]:
        """The next item's major type and argument (shortest form checked), and its offset."""
        start = self.pos
        if start >= len(self.data):
            raise self.fail("truncated input: expected another item")
        initial = self.data[start]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
        if major == _SIMPLE:
            return major, info, start
        if info < 24:
            return major, info, start
        if info > 27:
            if info == 31:
                raise self.fail(f"indefinite-length {_MAJOR_NAMES[major]} is not allowed", start)
            raise self.fail(f"reserved additional information {info} in {initial:#04x}", start)
        size = 1 << (info - 24)
        value = int.from_bytes(self.take(size, "integer argument", start), "big")
        # The shortest form: 1 byte for < 24, then the smallest of 1, 2, 4, 8 extra bytes.
        smallest = 24 if size == 1 else 1 << (8 * (size // 2))
        if value < smallest:
            raise self.fail(
                f"{_MAJOR_NAMES[major]} argument {value} is not in its shortest encoding", start
            )
        return major, value, start

    def item(self, depth: int) -> Any:
        major, arg, start = self.head()
        if major == _UINT:
            return arg
        if major == _NEGINT:
            return -1 - arg
        if major == _BYTES:
            return self.take(arg, f"byte string (declared length {arg})", start)
        if major == _TEXT:
            raw = self.take(arg, f"text string (declared length {arg})", start)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("text string is not valid UTF-8", start) from None
        if major in (_ARRAY, _MAP):
            if depth >= self.max_depth:
                raise self.fail(f"nested deeper than {self.max_depth} arrays/maps", start)
            # Each element takes at least one byte: refuse impossible counts before looping.
            needed = arg if major == _ARRAY else 2 * arg
            if needed > len(self.data) - self.pos:
                what = "array" if major == _ARRAY else "map"
                raise self.fail(
                    f"truncated {what}: declares {arg} entries, only "
                    f"{len(self.data) - self.pos} bytes remain",
                    start,
                )
            if major == _ARRAY:
                return [self.item(depth + 1) for _ in range(arg)]
            return self.map(arg, depth + 1)
        if major == _TAG:
            raise self.fail(f"tag {arg} is not allowed in CTAP2 CBOR", start)
        # Major type 7: the argument is the additional information itself.
        if arg in _SIMPLE_VALUES:
            return _SIMPLE_VALUES[arg]
        if arg in (25, 26, 27):
            raise self.fail("floating-point numbers are not allowed in CTAP2 CBOR", start)
        if arg == 31:
            raise self.fail("unexpected 'break' (indefinite lengths are not allowed)", start)
        raise self.fail(f"simple value {arg} is not allowed (only false, true, null)", start)

    def map(self, count: int, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        previous: tuple[int, int, bytes] | None = None
        for _ in range(count):
            key_start = self.pos
            key_major = self.data[key_start] >> 5 if key_start < len(self.data) else -1
            if key_major not in (_UINT, _NEGINT, _BYTES, _TEXT):
                key = self.item(depth)  # reports truncation or malformation first
                raise self.fail(
                    f"map key {key!r} is a {_MAJOR_NAMES[key_major]}; only integers and "
                    "strings may be keys",
                    key_start,
                )
            key = self.item(depth)
            encoded = self.data[key_start : self.pos]
            order = (key_major, len(encoded), encoded)
            if previous is not None:
                if order == previous:
                    raise self.fail(f"duplicate map key {key!r}", key_start)
                if order < previous:
                    raise self.fail(f"map key {key!r} is out of CTAP2 canonical order", key_start)
            previous = order
            result[key] = self.item(depth)
        return result


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CborError(f"expected bytes, got {type(data).__name__}", 0)
    return bytes(data)


def decode_prefix(
    data: bytes | bytearray | memoryview, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> tuple[Any, int]:
    """Decode the first CBOR item of ``data``; returns it and how many bytes it took.

    For callers that expect something after the item (revision-0 padding). ``CborError`` if the
    item itself is malformed or not canonical.
    """
    reader = _Reader(_as_bytes(data), max_depth)
    value = reader.item(0)
    return value, reader.pos


def decode(data: bytes | bytearray | memoryview, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Decode exactly one strict CTAP2-canonical CBOR item; ``CborError`` otherwise.

    Returns ``int``, ``bytes``, ``str``, ``list``, ``dict``, ``bool`` or ``None`` (nested).
    """
    raw = _as_bytes(data)
    value, used = decode_prefix(raw, max_depth=max_depth)
    if used != len(raw):
        raise CborError(f"{len(raw) - used} trailing bytes after the CBOR item", used)
    return value


def decode_map(
    data: bytes | bytearray | memoryview, what: str, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[Any, Any]:
    """``decode`` and insist the item is a map; ``what`` names it in the error message."""
    value = decode(data, max_depth=max_depth)
    if not isinstance(value, dict):
        raise CborError(f"{what} must be a CBOR map, got {_type_name(value)}", 0)
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        int: "an integer",
        bytes: "a byte string",
        str: "a text string",
        list: "an array",
        dict: "a map",
    }.get(type(value), type(value).__name__)


__all__ = ["DEFAULT_MAX_DEPTH", "CborError", "decode", "decode_map", "decode_prefix"]
