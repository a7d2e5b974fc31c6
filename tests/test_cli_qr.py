"""`hybrid qr` through a real subprocess: decode, encode, show, read, and one-line errors."""

import json
import subprocess
import sys

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hybrid.qr.digits import url_encode
from hybrid.qr.render import decode_qr_image

KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
)
SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
CHROME_MAP = {0: KEY, 1: SECRET, 2: 2, 3: 1764201234, 4: False, 5: "mc"}
CHROME_URL = url_encode(cbor2.dumps(CHROME_MAP))


def hybrid(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybrid", "qr", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONIOENCODING": "utf-8", "PATH": "/usr/bin:/bin"},
    )


def test_decode_json_has_exactly_the_documented_fields():
    result = hybrid("decode", CHROME_URL, "--json")
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj == {
        "public_key": KEY.hex(),
        "qr_secret": SECRET.hex(),
        "tunnel_domains": 2,
        "timestamp": 1764201234,
        "state_assisted": False,
        "request_type": "mc",
        "key6": None,
        "unknown": {},
    }


@pytest.mark.parametrize(
    "m",
    [
        CHROME_MAP,
        {0: KEY, 1: SECRET},
        {**CHROME_MAP, 6: [0, 1], 9: b"\x01\x02", 11: [b"\xff", None, -1], 70000: "grease"},
        {**CHROME_MAP, 6: True},
    ],
)
def test_decode_json_piped_into_encode_reproduces_the_url(m):
    url = url_encode(cbor2.dumps(m))
    decoded = hybrid("decode", url, "--json")
    assert decoded.returncode == 0, decoded.stderr
    encoded = hybrid("encode", stdin=decoded.stdout)
    assert encoded.returncode == 0, encoded.stderr
    assert encoded.stdout == url + "\n"


def test_unknown_byte_values_are_hex_objects():
    url = url_encode(cbor2.dumps({**CHROME_MAP, 9: b"\xab\xcd"}))
    obj = json.loads(hybrid("decode", url, "--json").stdout)
    assert obj["unknown"] == {"9": {"hex": "abcd"}}


def test_decode_reads_the_url_from_stdin_and_prints_every_key():
    result = hybrid("decode", "-", stdin=f"  {CHROME_URL.lower()}\n")
    assert result.returncode == 0, result.stderr
    assert KEY.hex() in result.stdout and SECRET.hex() in result.stdout
    assert "makeCredential" in result.stdout and "1764201234" in result.stdout


def test_show_upper_cases_a_lower_case_prefix(tmp_path):
    png = tmp_path / "qr.png"
    result = hybrid("show", CHROME_URL.lower(), "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert decode_qr_image(png) == CHROME_URL


def test_show_draws_within_80_columns():
    result = hybrid("show", CHROME_URL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 10 < len(lines) <= 30
    assert max(len(line) for line in lines) <= 80


def test_show_writes_png_and_svg_and_read_decodes_them(tmp_path):
    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    result = hybrid("show", CHROME_URL, "--png", str(png), "--svg", str(svg))
    assert result.returncode == 0, result.stderr
    assert str(png) in result.stdout and str(svg) in result.stdout
    assert decode_qr_image(png) == CHROME_URL
    assert "<svg" in svg.read_text()
    read = hybrid("read", str(png), "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["qr_secret"] == SECRET.hex()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("decode", "https://example.com"), "", "not a FIDO:/ URL"),
        (("decode", "FIDO:/12x45"), "", "non-digit character at position 2 ('x')"),
        (("decode", url_encode(cbor2.dumps({0: KEY, 1: SECRET, "t": 1})), "--json"), "", "'t'"),
        (("decode", "FIDO:/1234"), "", "impossible length"),
        (("decode", "FIDO:/" + "9" * 17), "", "does not fit in 7 bytes"),
        (("decode", url_encode(b"\xa1\x00")), "", "not valid CBOR"),
        (("decode", url_encode(cbor2.dumps({0: KEY, 1: SECRET}) + b"\x00")), "", "trailing"),
        (("decode", url_encode(cbor2.dumps({0: KEY}))), "", "no key 1"),
        (("decode", url_encode(cbor2.dumps({0: KEY, 1: SECRET[:15]}))), "", "16 bytes"),
        (("decode", url_encode(cbor2.dumps({0: KEY, 1: SECRET, 4: 1}))), "", "boolean"),
        (("decode", url_encode(cbor2.dumps({0: b"\x02" + b"\xff" * 32, 1: SECRET}))), "", "P-256"),
        (("decode", "-"), "", "not a FIDO:/ URL"),
        (("encode",), "", "no JSON on stdin"),
        (("encode",), "{not json", "not valid JSON"),
        (("encode",), "[1, 2]", "must be an object"),
        (("encode",), '{"public_key": 1' + "0" * 5000 + "}", "not usable JSON"),
        (("encode",), '{"public_key": "00"}', "qr_secret"),
        (("encode",), json.dumps({"public_key": KEY.hex(), "qr_secret": "00"}), "16 bytes"),
        (("show", "FIDO:/1"), "", "impossible length"),
        (("read", "/nonexistent/qr.png"), "", "cannot read image"),
    ],
)
def test_bad_input_is_one_line_on_stderr_without_traceback(args, stdin, message):
    result = hybrid(*args, stdin=stdin)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("hybrid: error: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_help_documents_the_json_encoding_of_unknown_bytes():
    result = hybrid("decode", "--help")
    assert result.returncode == 0
    assert '{"hex":' in result.stdout


def test_json_path_encodes_in_ascending_key_order():
    shuffled = url_encode(cbor2.dumps({5: "ga", 1: SECRET, 0: KEY, 2: 2}))
    encoded = hybrid("encode", stdin=hybrid("decode", shuffled, "--json").stdout)
    assert encoded.stdout == url_encode(cbor2.dumps({0: KEY, 1: SECRET, 2: 2, 5: "ga"})) + "\n"
