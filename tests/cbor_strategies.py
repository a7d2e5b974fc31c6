"""Structure-aware CBOR for hypothesis: encoded items of every major type, built byte by byte.

``cbor_items()`` draws the *encoding* of one CBOR data item (RFC 8949): unsigned and negative
integers with every argument width (shortest and non-shortest), byte and text strings (definite and
indefinite, text sometimes invalid UTF-8), arrays and maps (definite and indefinite), tags (common
semantic tags and arbitrary numbers) around any item, simple values (0..19, false, true, null,
undefined, the one-byte form 32..255 and its invalid < 32 range), half/single/double floats
(including NaN, infinities, -0.0), and a few malformed heads (reserved additional info, a stray
break, truncation). Nesting is recursive and bounded. Working on bytes rather than Python values
reaches what a Python encoder never writes, such as simple values equal to map-key numbers.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

MAX_ARG = 2**64 - 1
COMMON_TAGS = [0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 32, 33, 34, 258, 259, 1004, 55799]


def head(major: int, argument: int, width: int | None = None) -> bytes:
    """The initial byte(s) of an item; ``width`` (1, 2, 4, 8) forces a non-shortest form."""
    if width is None:
        if argument < 24:
            return bytes([major << 5 | argument])
        width = 1 if argument < 2**8 else 2 if argument < 2**16 else 4 if argument < 2**32 else 8
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + argument.to_bytes(width, "big")


@st.composite
def _argument(draw: st.DrawFn, max_value: int = MAX_ARG) -> tuple[int, int | None]:
    value = draw(
        st.one_of(
            st.integers(0, 23),
            st.sampled_from([24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_ARG]),
            st.integers(0, max_value),
        ).filter(lambda v: v <= max_value)
    )
    widths = [w for w in (1, 2, 4, 8) if value < 2 ** (8 * w)]
    width = draw(st.one_of(st.none(), st.sampled_from(widths)))
    return value, width


@st.composite
def integers(draw: st.DrawFn) -> bytes:
    major = draw(st.sampled_from([0, 1]))
    value, width = draw(_argument())
    return head(major, value, width)


@st.composite
def strings(draw: st.DrawFn) -> bytes:
    major = draw(st.sampled_from([2, 3]))
    if major == 3 and draw(st.booleans()):
        body = draw(st.text(max_size=40)).encode("utf-8")
    else:
        body = draw(st.binary(max_size=40))  # for text: often not UTF-8
    if draw(st.integers(0, 9)) == 0:  # indefinite length, in chunks (sometimes of the wrong type)
        cut = draw(st.integers(0, len(body)))
        chunk_major = draw(st.sampled_from([major, major, 2 if major == 3 else 3]))
        chunks = [body[:cut], body[cut:]]
        return (
            bytes([major << 5 | 31])
            + b"".join(head(chunk_major, len(c)) + c for c in chunks)
            + b"\xff"
        )
    return head(major, len(body)) + body


@st.composite
def simple_values(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return bytes([0xE0 | draw(st.integers(0, 23))])  # 0..19, false, true, null, undefined
    if kind == 1:
        return b"\xf8" + bytes([draw(st.integers(0, 255))])  # < 32 is not well-formed
    if kind == 2:
        return b"\xf9" + draw(st.binary(min_size=2, max_size=2))
    if kind == 3:
        return b"\xfa" + struct.pack(">f", draw(st.floats(width=32, allow_nan=True)))
    if kind == 4:
        return b"\xfb" + struct.pack(">d", draw(st.floats(allow_nan=True)))
    return bytes([draw(st.sampled_from([0xFC, 0xFD, 0xFE, 0xFF, 0x1C, 0x5C, 0x9C]))])  # malformed


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def arrays(draw: st.DrawFn) -> bytes:
        items = draw(st.lists(children, max_size=4))
        if draw(st.integers(0, 5)) == 0:
            return b"\x9f" + b"".join(items) + b"\xff"
        return head(4, len(items)) + b"".join(items)

    @st.composite
    def maps(draw: st.DrawFn) -> bytes:
        pairs = draw(st.lists(st.tuples(children, children), max_size=4))
        body = b"".join(k + v for k, v in pairs)
        if draw(st.integers(0, 5)) == 0:
            return b"\xbf" + body + b"\xff"
        return head(5, len(pairs)) + body

    @st.composite
    def tags(draw: st.DrawFn) -> bytes:
        number = draw(st.one_of(st.sampled_from(COMMON_TAGS), st.integers(0, MAX_ARG)))
        return head(6, number) + draw(children)

    return st.one_of(arrays(), maps(), tags())


def cbor_items() -> st.SearchStrategy[bytes]:
    """The encoding of one CBOR item (possibly malformed), nested a few levels deep."""
    leaves = st.one_of(integers(), strings(), simple_values())
    return st.recursive(leaves, _containers, max_leaves=12)


def truncated(items: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """An item cut short somewhere (a QR reader may deliver a partial code)."""
    return items.flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n]))
