"""FIDO:/ digit codec: round trip, lengths and every malformed-digits class (section 3.3, 16)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybrid.qr.digits import (
    CHUNK_DIGITS,
    digits_decode,
    digits_encode,
    encoded_length,
    url_decode,
    url_encode,
)
from hybrid.qr.errors import (
    DigitLengthError,
    DigitRangeError,
    NonDigitError,
    NotFidoUrlError,
    QrError,
)

ALLOWED_REMAINDERS = {0, 3, 5, 8, 10, 13, 15}


def width(n: int) -> int:
    return {0: 0, 1: 3, 2: 5, 3: 8, 4: 10, 5: 13, 6: 15}[n]


def test_widths_are_digit_counts_of_the_largest_chunk_value():
    for n, digits in CHUNK_DIGITS.items():
        assert digits == len(str(2 ** (8 * n) - 1))


@pytest.mark.parametrize("n", range(201))
def test_every_length_round_trips_with_the_documented_digit_count(n):
    data = bytes((i * 37 + n) % 256 for i in range(n))
    encoded = digits_encode(data)
    assert len(encoded) == 17 * (n // 7) + width(n % 7) == encoded_length(n)
    assert encoded.isdigit() or n == 0
    assert digits_decode(encoded) == data


@given(st.binary(max_size=200))
def test_random_bytes_round_trip(data):
    encoded = digits_encode(data)
    assert len(encoded) == 17 * (len(data) // 7) + width(len(data) % 7)
    assert digits_decode(encoded) == data


def test_chunks_are_little_endian():
    assert digits_encode(b"\x01\x00") == "00001"
    assert digits_encode(b"\x00\x01") == "00256"
    assert digits_encode(b"\xff" * 7) == str(2**56 - 1)
    assert digits_encode(b"\xff" * 8) == str(2**56 - 1) + "255"


def test_url_prefix_is_upper_case_and_case_insensitive_on_decode():
    assert url_encode(b"\x07") == "FIDO:/007"
    assert url_decode("fido:/007") == b"\x07"
    assert url_decode("FiDo:/007") == b"\x07"


@pytest.mark.parametrize("text", ["", "FIDO", "FIDO:", "http://x", "FIDO:123", " FIDO:/123"])
def test_text_without_the_prefix_is_not_a_fido_url(text):
    with pytest.raises(NotFidoUrlError, match="not a FIDO:/ URL"):
        url_decode(text)


def test_non_ascii_look_alike_prefix_is_rejected():
    with pytest.raises(NotFidoUrlError):
        url_decode("FİDO:/123")


def test_non_text_is_not_a_fido_url():
    with pytest.raises(NotFidoUrlError):
        url_decode(b"FIDO:/123")  # type: ignore[arg-type]


def test_prefix_with_nothing_after_it_is_rejected():
    with pytest.raises(NotFidoUrlError, match="nothing after"):
        url_decode("FIDO:/")


@pytest.mark.parametrize(
    ("digits", "position"), [("12a45", 2), ("123 ", 3), ("-12", 0), ("1_000", 1), ("٣٤٥", 0)]
)
def test_non_digit_character_is_reported_with_its_position(digits, position):
    with pytest.raises(NonDigitError, match=f"non-digit character at position {position} "):
        digits_decode(digits)


@pytest.mark.parametrize("remainder", sorted(set(range(17)) - ALLOWED_REMAINDERS))
@pytest.mark.parametrize("full_groups", [0, 1, 3])
def test_every_impossible_remainder_length_is_rejected(remainder, full_groups):
    digits = "0" * (17 * full_groups + remainder)
    with pytest.raises(DigitLengthError, match="impossible length"):
        digits_decode(digits)


@pytest.mark.parametrize("remainder", sorted(ALLOWED_REMAINDERS))
def test_every_allowed_remainder_length_is_accepted(remainder):
    assert len(digits_decode("0" * (17 + remainder))) == 7 + width_inverse(remainder)


def width_inverse(digits: int) -> int:
    return {0: 0, 3: 1, 5: 2, 8: 3, 10: 4, 13: 5, 15: 6}[digits]


def test_full_group_of_two_to_the_56_is_out_of_range():
    with pytest.raises(DigitRangeError, match="does not fit in 7 bytes"):
        digits_decode(str(2**56))
    with pytest.raises(DigitRangeError):
        digits_decode("0" * 17 + "9" * 17)
    assert digits_decode(str(2**56 - 1)) == b"\xff" * 7


@given(st.integers(min_value=2**56, max_value=10**17 - 1), st.integers(0, 3))
def test_any_full_group_at_or_above_two_to_the_56_is_rejected(value, before):
    digits = "0" * (17 * before) + str(value) + "000"
    with pytest.raises(DigitRangeError):
        digits_decode(digits)


@pytest.mark.parametrize(("n", "digits"), [(1, 3), (2, 5), (3, 8), (4, 10), (5, 13), (6, 15)])
def test_short_final_group_out_of_range_is_rejected(n, digits):
    too_big = 2 ** (8 * n)
    if len(str(too_big)) > digits:
        pytest.skip("the width cannot hold a too-large value")
    with pytest.raises(DigitRangeError, match=f"does not fit in {n} bytes"):
        digits_decode(str(too_big).zfill(digits))
    assert digits_decode(str(too_big - 1).zfill(digits)) == b"\xff" * n


def test_digit_errors_are_qr_errors():
    for cls in (NonDigitError, DigitLengthError, DigitRangeError, NotFidoUrlError):
        assert issubclass(cls, QrError)
