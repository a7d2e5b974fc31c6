"""`hybrid qr`: decode, encode, draw and read ``FIDO:/`` QR codes (docs/protocol.md section 3).

``hybrid qr decode URL [--json]``
    Validates the URL the way a phone does and prints every key. ``--json`` prints exactly one
    object: ``{"public_key": hex, "qr_secret": hex, "tunnel_domains": int|null,
    "timestamp": int|null, "state_assisted": bool|null, "request_type": str|null,
    "key6": bool|list|null, "unknown": {key: value}}`` (hex is lower-case; null means the key is
    absent). In ``unknown`` the object keys are the decimal CBOR map keys; integer, text, boolean,
    null, float and array values appear as themselves, a byte string as ``{"hex": "<hex>"}`` and
    any other CBOR value (map, tag, ...) as ``{"cbor": "<hex of its encoding>"}``.
``hybrid qr encode``
    Reads that JSON object on stdin and prints the ``FIDO:/`` URL (keys in ascending order, as
    browsers emit them), so ``decode --json | encode`` reproduces a browser's URL exactly.
``hybrid qr show URL [--png FILE] [--svg FILE] [--invert]``
    Draws the code in the terminal, or writes the image file(s) and says where.
``hybrid qr read IMAGE [--json]``
    Finds the QR code in an image file and decodes it like ``decode``.

A URL argument of ``-`` is read from stdin (surrounding whitespace stripped). Every bad input is a
``QrError``, printed by the dispatcher as one line with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from hybrid.qr.digits import FIDO_URL_PREFIX
from hybrid.qr.errors import QrJsonError
from hybrid.qr.payload import REQUEST_TYPES, QrPayload, cbor_type_name
from hybrid.qr.render import decode_qr_image, render_terminal, save_png, save_svg

_JSON_HELP = (
    "JSON fields: public_key (hex), qr_secret (hex), tunnel_domains, timestamp, state_assisted, "
    'request_type, key6 (null when absent) and unknown: {"<decimal key>": value}, where a byte '
    'string value is {"hex": "<lower-case hex>"} and any other non-JSON CBOR value is '
    '{"cbor": "<hex of its CBOR encoding>"}.'
)
_REQUEST_NAMES = {
    "ga": "getAssertion",
    "mc": "makeCredential",
    "dcp": "digital-credential presentation",
    "dci": "digital-credential issuance",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "qr",
        help="decode, encode, draw or read FIDO:/ QR codes",
        description="Decode, encode, draw or read FIDO:/ QR codes. " + _JSON_HELP,
    )
    commands = parser.add_subparsers(dest="qr_command", metavar="ACTION")
    commands.required = True

    decode = commands.add_parser(
        "decode",
        help="validate a FIDO:/ URL and print its keys",
        description="Validate a FIDO:/ URL like a phone does and print its keys. " + _JSON_HELP,
    )
    decode.add_argument("url", metavar="URL", help='the FIDO:/ URL, or "-" to read it from stdin')
    decode.add_argument(
        "--json", action="store_true", help="print one JSON object (default: one key per line)"
    )
    decode.set_defaults(func=_decode)

    encode = commands.add_parser(
        "encode",
        help="read the JSON of 'decode --json' on stdin and print the FIDO:/ URL",
        description="Read the JSON object printed by 'hybrid qr decode --json' on stdin and print "
        "the FIDO:/ URL (keys in ascending order). " + _JSON_HELP,
    )
    encode.set_defaults(func=_encode)

    show = commands.add_parser(
        "show",
        help="draw a FIDO:/ URL as a QR code in the terminal or into PNG/SVG files",
        description="Draw a FIDO:/ URL as a QR code: in the terminal (half blocks, light modules "
        "drawn as blocks for dark terminals), or into the files given.",
    )
    show.add_argument("url", metavar="URL", help='the FIDO:/ URL, or "-" to read it from stdin')
    show.add_argument(
        "--png", metavar="FILE", help="write a PNG image instead of drawing (default: none)"
    )
    show.add_argument(
        "--svg", metavar="FILE", help="write an SVG image instead of drawing (default: none)"
    )
    show.add_argument(
        "--invert",
        action="store_true",
        help="draw dark modules as blocks, for light terminals (default: light modules as "
        "blocks, for dark terminals)",
    )
    show.set_defaults(func=_show)

    read = commands.add_parser(
        "read",
        help="find the QR code in an image file and decode it",
        description="Find the QR code in an image file (PNG, JPEG, ...) and decode it like "
        "'hybrid qr decode'. " + _JSON_HELP,
    )
    read.add_argument("image", metavar="IMAGE", help="image file")
    read.add_argument(
        "--json", action="store_true", help="print one JSON object (default: one key per line)"
    )
    read.set_defaults(func=_read)


def _url_argument(text: str) -> str:
    return sys.stdin.read().strip() if text == "-" else text


def _decode(args: argparse.Namespace) -> int:
    _print_payload(_url_argument(args.url), as_json=args.json)
    return 0


def _read(args: argparse.Namespace) -> int:
    url = decode_qr_image(args.image)
    _print_payload(url, as_json=args.json)
    return 0


def _print_payload(url: str, *, as_json: bool) -> None:
    payload = QrPayload.from_url(url)
    if as_json:
        print(json.dumps(payload.to_json()))
    else:
        _write(describe(payload, url))


def _encode(args: argparse.Namespace) -> int:
    text = sys.stdin.read()
    if not text.strip():
        raise QrJsonError("no JSON on stdin (expected the output of 'hybrid qr decode --json')")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QrJsonError(
            f"stdin is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond Python's digit limit
        raise QrJsonError(f"stdin is not usable JSON: {' '.join(str(exc).split())}") from None
    print(QrPayload.from_json(obj).to_url())
    return 0


def _show(args: argparse.Namespace) -> int:
    url = _url_argument(args.url)
    QrPayload.from_url(url)  # refuse to draw what no phone would accept
    # an upper-case prefix keeps the whole text in the dense alphanumeric/numeric QR modes
    url = FIDO_URL_PREFIX + url[len(FIDO_URL_PREFIX) :]
    if not args.png and not args.svg:
        _write(render_terminal(url, invert=args.invert))
        return 0
    if args.png:
        print(f"wrote PNG QR code to {save_png(url, args.png)}")
    if args.svg:
        print(f"wrote SVG QR code to {save_svg(url, args.svg)}")
    return 0


def _write(text: str) -> None:
    try:
        print(text)
    except UnicodeEncodeError:
        # e.g. PYTHONIOENCODING=ascii: the half blocks still go out as UTF-8
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8") + b"\n")
        sys.stdout.flush()


def describe(payload: QrPayload, url: str) -> str:
    """The human-readable listing printed by ``hybrid qr decode``."""
    cbor_len = len(payload.to_cbor())
    lines = [f"FIDO:/ QR payload: {len(url)} characters, {cbor_len} bytes of CBOR"]

    def row(key: str, name: str, value: str) -> None:
        lines.append(f"  {key:>3}  {name:<16} {value}")

    row("0", "public key", payload.public_key.hex())
    row("1", "QR secret", payload.qr_secret.hex())
    row("2", "tunnel domains", _or_absent(payload.tunnel_domains, _domains))
    row("3", "timestamp", _or_absent(payload.timestamp, _time))
    row("4", "state-assisted", _or_absent(payload.state_assisted, _state_assisted))
    row("5", "request type", _or_absent(payload.request_type, _request_type))
    row("6", "key 6", _or_absent(payload.key6, _key6))
    for key, value in payload.unknown.items():
        row(repr(key) if not isinstance(key, int) else str(key), "unknown key", _value(value))
    order = "ascending (canonical)" if not payload.key_order else _order(payload.key_order)
    lines.append(f"  key order: {order}")
    try:
        from hybrid import keys

        lines.append(f"  tunnel id (derived): {keys.tunnel_id(payload.qr_secret).hex()}")
    except ImportError:
        pass
    return "\n".join(lines)


def _or_absent(value: object, show: object) -> str:
    return "absent" if value is None else show(value)  # type: ignore[operator]


def _domains(value: int) -> str:
    return f"{value} (assigned domain ids 0..{value - 1})" if value > 0 else f"{value}"


def _time(value: int) -> str:
    try:
        when = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{value} (not a representable time)"
    return f"{value} ({when:%Y-%m-%d %H:%M:%S} UTC)"


def _state_assisted(value: bool) -> str:
    flag = "true (desktop can use linking info)" if value else "false (no linking)"
    return flag + "; present, so message protocol revision 1"


def _request_type(value: str) -> str:
    if value in REQUEST_TYPES:
        return f"{value!r} ({_REQUEST_NAMES[value]})"
    return f"{value!r} (unknown; read as 'ga')"


def _key6(value: bool | list[int]) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (legacy boolean)"
    return f"{value} (CTAP 2.3 data-transfer channels)"


def _value(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"h'{bytes(value).hex()}' (byte string)"
    return f"{value!r} ({cbor_type_name(value)})"


def _order(order: tuple[object, ...]) -> str:
    return ", ".join(str(key) for key in order)
