"""The hybrid QR payload: a CBOR map carried as ``FIDO:/<digits>`` (docs/protocol.md section 3).

``QrPayload`` is a frozen value with one field per key the protocol knows:

====  =================  =========================================================================
key   field              meaning
====  =================  =========================================================================
0     ``public_key``     desktop identity key, 33-byte compressed P-256 point (required)
1     ``qr_secret``      16 random bytes, root of EID key, tunnel ID and PSK (required)
2     ``tunnel_domains`` number of assigned tunnel domains the desktop knows (absent reads as 0)
3     ``timestamp``      seconds since the Unix epoch
4     ``state_assisted`` desktop can store linking info; its presence also selects revision 1
5     ``request_type``   "ga", "mc", "dcp", "dci" hint for early UI
6     ``key6``           legacy bool, or CTAP 2.3 list of data-transfer channel ids
====  =================  =========================================================================

Other keys are kept in ``unknown`` (parsers must ignore them, we must not drop them), and the
order of a decoded map is kept in ``key_order`` so that decoding then encoding reproduces the
browser's URL byte for byte. New payloads use CTAP2 canonical order, which for keys 0..5 is the
ascending order real browsers emit. Integers are always written in their shortest form.

JSON form (``to_json``/``from_json``, used by ``hybrid qr decode --json`` and ``encode``): byte
strings are lower-case hex; ``unknown`` maps the decimal key (as a string) to its value, where
integers, text, booleans, null, finite floats and arrays map directly, a byte string becomes
``{"hex": "<lower-case hex>"}`` and anything else JSON cannot carry (maps, tags, simple values,
non-finite floats) becomes ``{"cbor": "<lower-case hex of its CBOR encoding>"}``.

Pure code: no clocks, no randomness; the caller passes the timestamp and the secret.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from hybrid.keys import InvalidKeyError, load_public_key, public_key_bytes
from hybrid.qr.digits import url_decode, url_encode
from hybrid.qr.errors import (
    InvalidPublicKeyError,
    KeyLengthError,
    KeyTypeError,
    MissingKeyError,
    QrCborError,
    QrJsonError,
)
from hybrid.wire import P256_COMPRESSED_LEN, QR_SECRET_LEN

PUBLIC_KEY_KEY = 0
QR_SECRET_KEY = 1
TUNNEL_DOMAINS_KEY = 2
TIMESTAMP_KEY = 3
STATE_ASSISTED_KEY = 4
REQUEST_TYPE_KEY = 5
KEY6_KEY = 6
KNOWN_KEYS = (0, 1, 2, 3, 4, 5, 6)

# ids 0..n-1 of the assigned tunnel domains; deployed desktops send 2
ASSIGNED_TUNNEL_DOMAINS = 2

GET_ASSERTION = "ga"
MAKE_CREDENTIAL = "mc"
DIGITAL_CREDENTIAL_PRESENTATION = "dcp"
DIGITAL_CREDENTIAL_ISSUANCE = "dci"
REQUEST_TYPES = (GET_ASSERTION, MAKE_CREDENTIAL, DIGITAL_CREDENTIAL_PRESENTATION,
                 DIGITAL_CREDENTIAL_ISSUANCE)  # fmt: skip

CHANNEL_WEBSOCKET = 0
CHANNEL_BLE = 1

_KEY_NAMES = {
    0: "public key",
    1: "QR secret",
    2: "number of tunnel domains",
    3: "timestamp",
    4: "state-assisted flag",
    5: "request type",
    6: "key 6",
}
_EXPECTED = {
    0: "a byte string",
    1: "a byte string",
    2: "an integer",
    3: "an integer",
    4: "a boolean",
    5: "a text string",
    6: "a boolean or an array of channel ids",
}
_JSON_FIELDS = (
    "public_key",
    "qr_secret",
    "tunnel_domains",
    "timestamp",
    "state_assisted",
    "request_type",
    "key6",
    "unknown",
)
_DECIMAL_KEY = re.compile(r"-?(0|[1-9][0-9]*)\Z")


def cbor_type_name(value: object) -> str:
    """The CBOR name of a decoded value's type, for error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, (bytes, bytearray)):
        return "byte string"
    if isinstance(value, str):
        return "text string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, float):
        return "float"
    if value is None:
        return "null"
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    if isinstance(value, cbor2.CBORSimpleValue):
        return f"simple value {value.value}"
    if value is cbor2.undefined:
        return "undefined"
    return type(value).__name__


def _label(key: int) -> str:
    return f"QR key {key} ({_KEY_NAMES[key]})"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shortest_float(encoder: cbor2.CBOREncoder, value: float) -> None:
    # canonical mode picks the shortest of half/single/double that keeps the value exactly
    encoder.write(cbor2.dumps(value, canonical=True))


def _encode(value: object) -> bytes:
    """CBOR with shortest-form numbers and map order as given (cbor2's default keeps dict order)."""
    return cbor2.dumps(value, encoders={float: _shortest_float})


def _raw_tag(tag: int) -> Any:
    return lambda value, immutable: cbor2.CBORTag(tag, value)


# cbor2 would turn tagged items into datetimes, bignum ints, sets, ... and re-encode them
# differently; keeping every tag as CBORTag makes unknown values round-trip byte for byte and
# keeps bignums (tags 2/3) from passing as CBOR integers
_RAW_TAGS = {tag: _raw_tag(tag) for tag in [*range(300), 1004, 1040, 55799]}
_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1


def _decode_item(data: bytes) -> tuple[Any, int]:
    """One CBOR item from the start of ``data`` and how many bytes it took (strict mode)."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        semantic_decoders=_RAW_TAGS,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )
    return decoder.decode(), stream.tell()


def _is_cbor_int(value: object) -> bool:
    return _is_int(value) and _INT_MIN <= value <= _INT_MAX  # type: ignore[operator]


def _canonical_order(keys: list[Any]) -> list[Any]:
    """CTAP2 canonical key order: by encoded length, then bytewise (0..23 come first, ascending)."""
    encoded = [(_encode(key), index) for index, key in enumerate(keys)]
    encoded.sort(key=lambda item: (len(item[0]), item[0]))
    return [keys[index] for _, index in encoded]


def _load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return load_public_key(data)
    except InvalidKeyError:
        raise InvalidPublicKeyError(
            f"{_label(0)} is not a compressed point on the P-256 curve"
        ) from None


@dataclass(frozen=True)
class QrPayload:
    """The CBOR map of a hybrid QR code; see the module docstring for the keys."""

    public_key: bytes
    qr_secret: bytes
    tunnel_domains: int | None = None
    timestamp: int | None = None
    state_assisted: bool | None = None
    request_type: str | None = None
    key6: bool | list[int] | None = None
    unknown: dict[Any, Any] = field(default_factory=dict)
    # order of the keys in the decoded map; () means CTAP2 canonical order
    key_order: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        for key, value, length in ((0, self.public_key, P256_COMPRESSED_LEN),
                                   (1, self.qr_secret, QR_SECRET_LEN)):  # fmt: skip
            if not isinstance(value, (bytes, bytearray)):
                raise KeyTypeError(
                    f"{_label(key)} must be a byte string, got {cbor_type_name(value)}"
                )
            if len(value) != length:
                raise KeyLengthError(f"{_label(key)} must be {length} bytes, got {len(value)}")
        object.__setattr__(self, "public_key", bytes(self.public_key))
        object.__setattr__(self, "qr_secret", bytes(self.qr_secret))
        _load_public_key(self.public_key)

        optional: tuple[tuple[int, object, Callable[[object], bool]], ...] = (
            (2, self.tunnel_domains, _is_cbor_int),
            (3, self.timestamp, _is_cbor_int),
            (4, self.state_assisted, lambda v: isinstance(v, bool)),
            (5, self.request_type, lambda v: isinstance(v, str)),
        )
        for key, item, ok in optional:
            if item is not None and not ok(item):
                if ok is _is_cbor_int and _is_int(item):
                    raise KeyTypeError(f"{_label(key)} {item} does not fit in a CBOR integer")
                raise KeyTypeError(
                    f"{_label(key)} must be {_EXPECTED[key]}, got {cbor_type_name(item)}"
                )
        self._check_key6()

        unknown = dict(self.unknown)
        for key in unknown:
            # Python equates True, 1.0 and CBOR simple value 1 with the integer 1: a map key of
            # another CBOR type that compares equal to a known key is refused, not confused with it.
            clash = next((known for known in KNOWN_KEYS if known == key), None)
            if clash is not None:
                raise QrCborError(
                    f"QR map key {key!r} ({cbor_type_name(key)}) clashes with known key {clash}"
                )
        object.__setattr__(self, "unknown", unknown)
        object.__setattr__(self, "key_order", self._normalised_order())

    def _check_key6(self) -> None:
        value = self.key6
        if value is None or isinstance(value, bool):
            return
        if not isinstance(value, (list, tuple)):
            raise KeyTypeError(f"{_label(6)} must be {_EXPECTED[6]}, got {cbor_type_name(value)}")
        for item in value:
            if _is_int(item) and not _is_cbor_int(item):
                raise KeyTypeError(f"{_label(6)} channel id {item} does not fit in a CBOR integer")
            if not _is_cbor_int(item):
                raise KeyTypeError(
                    f"{_label(6)} channel ids must be integers, got {cbor_type_name(item)}"
                )
        object.__setattr__(self, "key6", list(value))

    def _present_keys(self) -> list[Any]:
        optional = (
            (2, self.tunnel_domains),
            (3, self.timestamp),
            (4, self.state_assisted),
            (5, self.request_type),
            (6, self.key6),
        )
        keys: list[Any] = [0, 1] + [key for key, value in optional if value is not None]
        return keys + list(self.unknown)

    def _normalised_order(self) -> tuple[Any, ...]:
        present = self._present_keys()
        canonical = _canonical_order(present)
        # (type, key) pairs keep 1, 1.0 and True apart, which compare equal in Python
        wanted = {(type(key), key) for key in present}
        order: list[Any] = []
        seen: set[tuple[type, Any]] = set()
        for key in [*self.key_order, *canonical]:
            tagged = (type(key), key)
            if tagged in wanted and tagged not in seen:
                seen.add(tagged)
                order.append(key)
        same = all(_same_key(a, b) for a, b in zip(order, canonical, strict=True))
        return () if same else tuple(order)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        public_key: bytes | ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
        qr_secret: bytes,
        *,
        request_type: str = GET_ASSERTION,
        timestamp: int | None = None,
        state_assisted: bool = False,
        tunnel_domains: int = ASSIGNED_TUNNEL_DOMAINS,
    ) -> QrPayload:
        """A desktop's payload the way current browsers build it: keys 0..5, key 2 = 2, no key 6.

        ``public_key`` may be a key object (a private key stands for its public half) or its
        33- or 65-byte encoding. Pass the current time as ``timestamp`` (deployed desktops always
        send key 3); ``None`` leaves key 3 out.
        """
        if isinstance(public_key, ec.EllipticCurvePrivateKey):
            key = public_key.public_key()
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            key = public_key
        elif isinstance(public_key, (bytes, bytearray)) and len(public_key) == 65:
            try:
                key = load_public_key(public_key)
            except InvalidKeyError:
                raise InvalidPublicKeyError(
                    "public key is not a point on the P-256 curve"
                ) from None
        else:
            return cls(public_key, qr_secret, tunnel_domains, timestamp, state_assisted,
                       request_type)  # fmt: skip
        compressed = public_key_bytes(key, compressed=True)
        return cls(compressed, qr_secret, tunnel_domains, timestamp, state_assisted, request_type)

    # ---- views --------------------------------------------------------------------------------

    @property
    def identity_key(self) -> ec.EllipticCurvePublicKey:
        """The desktop identity public key as a ``cryptography`` key object."""
        return _load_public_key(self.public_key)

    @property
    def public_key_point(self) -> bytes:
        """The desktop identity key as the 65-byte uncompressed point used on the wire."""
        return public_key_bytes(self.identity_key)

    @property
    def known_domain_count(self) -> int:
        """Key 2 as a phone reads it: absent means the desktop knows no assigned domain."""
        return self.tunnel_domains or 0

    @property
    def effective_request_type(self) -> str:
        """Key 5 as a phone reads it: unknown or absent means getAssertion."""
        return self.request_type if self.request_type in REQUEST_TYPES else GET_ASSERTION

    @property
    def channels(self) -> tuple[int, ...]:
        """CTAP 2.3 data-transfer channels; anything but an array at key 6 means WebSocket only."""
        return tuple(self.key6) if isinstance(self.key6, list) else (CHANNEL_WEBSOCKET,)

    @property
    def message_revision(self) -> int:
        """Tunnel message protocol revision an older phone picks: 1 iff key 4 is present."""
        return 0 if self.state_assisted is None else 1

    # ---- CBOR ---------------------------------------------------------------------------------

    def to_map(self) -> dict[Any, Any]:
        """The CBOR map as an ordered dict (keys in the order they will be encoded)."""
        values: dict[Any, Any] = {
            0: self.public_key,
            1: self.qr_secret,
            2: self.tunnel_domains,
            3: self.timestamp,
            4: self.state_assisted,
            5: self.request_type,
            6: self.key6,
        }
        order = self.key_order or _canonical_order(self._present_keys())
        out: dict[Any, Any] = {}
        for key in order:
            out[key] = values[key] if _is_int(key) and key in values else self.unknown[key]
        return out

    def to_cbor(self) -> bytes:
        """The CBOR bytes of the map (shortest-form integers, order per ``key_order``)."""
        return _encode(self.to_map())

    @classmethod
    def from_cbor(cls, data: bytes) -> QrPayload:
        """Parse and validate the CBOR map; raises a ``QrError`` subclass saying what is wrong."""
        if not data:
            raise QrCborError("QR payload is empty")
        try:
            decoded, consumed = _decode_item(data)
        except Exception as exc:  # cbor2 raises assorted types on garbage
            raise QrCborError(f"QR payload is not valid CBOR: {_one_line(exc)}") from None
        if not isinstance(decoded, dict):
            raise QrCborError(f"QR payload is a CBOR {cbor_type_name(decoded)}, not a map")
        if consumed != len(data):
            raise QrCborError(
                f"QR payload has {len(data) - consumed} trailing bytes after the CBOR map"
            )
        return cls.from_map(decoded)

    @classmethod
    def from_map(cls, decoded: dict[Any, Any]) -> QrPayload:
        """Build a payload from an already decoded CBOR map (order of ``decoded`` is kept)."""
        known: dict[int, Any] = {}
        unknown: dict[Any, Any] = {}
        for key, value in decoded.items():
            if _is_int(key) and key in KNOWN_KEYS:
                known[key] = value
            else:
                unknown[key] = value
        for key in (PUBLIC_KEY_KEY, QR_SECRET_KEY):
            if key not in known:
                raise MissingKeyError(f"QR map has no key {key} ({_KEY_NAMES[key]})")
        for key, value in known.items():
            # a field set to None means "absent", so an explicit CBOR null must be refused here
            if value is None:
                raise KeyTypeError(f"{_label(key)} must be {_EXPECTED[key]}, got null")
        return cls(
            public_key=known[0],
            qr_secret=known[1],
            tunnel_domains=known.get(2),
            timestamp=known.get(3),
            state_assisted=known.get(4),
            request_type=known.get(5),
            key6=known.get(6),
            unknown=unknown,
            key_order=tuple(decoded),
        )

    # ---- FIDO:/ URL ---------------------------------------------------------------------------

    def to_url(self) -> str:
        """The ``FIDO:/<digits>`` text to put in the QR code."""
        return url_encode(self.to_cbor())

    @classmethod
    def from_url(cls, url: str) -> QrPayload:
        """Parse a scanned ``FIDO:/`` URL; every malformed input raises a ``QrError`` subclass."""
        return cls.from_cbor(url_decode(url))

    # ---- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON object printed by ``hybrid qr decode --json`` (see the module docstring)."""
        unknown: dict[str, Any] = {}
        for key, value in self.unknown.items():
            if not _is_int(key):
                raise QrJsonError(
                    f"QR map key {key!r} is a {cbor_type_name(key)}; JSON output supports only "
                    "integer keys"
                )
            unknown[str(key)] = _to_json_value(value)
        return {
            "public_key": self.public_key.hex(),
            "qr_secret": self.qr_secret.hex(),
            "tunnel_domains": self.tunnel_domains,
            "timestamp": self.timestamp,
            "state_assisted": self.state_assisted,
            "request_type": self.request_type,
            "key6": self.key6,
            "unknown": unknown,
        }

    @classmethod
    def from_json(cls, obj: object) -> QrPayload:
        """Inverse of ``to_json``; the result encodes in canonical (ascending) key order."""
        if not isinstance(obj, dict):
            raise QrJsonError(f"QR JSON must be an object, got {_json_type(obj)}")
        for name in obj:
            if name not in _JSON_FIELDS:
                raise QrJsonError(f"QR JSON has an unexpected field {name!r}")
        for name in ("public_key", "qr_secret"):
            if obj.get(name) is None:
                raise QrJsonError(f"QR JSON has no {name!r} field")
        unknown_json = obj.get("unknown")
        if unknown_json is None:
            unknown_json = {}
        if not isinstance(unknown_json, dict):
            raise QrJsonError(
                f"QR JSON field 'unknown' must be an object, got {_json_type(unknown_json)}"
            )
        unknown: dict[Any, Any] = {}
        for name, value in unknown_json.items():
            if not _DECIMAL_KEY.match(name):
                raise QrJsonError(f"QR JSON unknown key {name!r} is not a decimal integer")
            key = int(name)
            if key in KNOWN_KEYS:
                raise QrJsonError(f"QR JSON unknown key {key} is a known key; use its own field")
            unknown[key] = _from_json_value(value, f"unknown[{name!r}]")
        return cls(
            public_key=_hex_field(obj, "public_key"),
            qr_secret=_hex_field(obj, "qr_secret"),
            tunnel_domains=obj.get("tunnel_domains"),
            timestamp=obj.get("timestamp"),
            state_assisted=obj.get("state_assisted"),
            request_type=obj.get("request_type"),
            key6=obj.get("key6"),
            unknown=unknown,
        )


def _same_key(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return cbor_type_name(value)


def _hex_field(obj: dict[str, Any], name: str) -> bytes:
    value = obj[name]
    if not isinstance(value, str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", value):
        raise QrJsonError(f"QR JSON field {name!r} must be a hex string")
    return bytes.fromhex(value)


def _to_json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item) for item in value]
    return {"cbor": _encode(value).hex()}


def _from_json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str, float)):
        return value
    if isinstance(value, list):
        return [_from_json_value(item, where) for item in value]
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("hex"), str):
        try:
            return bytes.fromhex(value["hex"])
        except ValueError:
            raise QrJsonError(f"QR JSON {where} has an invalid hex string") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("cbor"), str):
        try:
            item, consumed = _decode_item(bytes.fromhex(value["cbor"]))
            if consumed != len(value["cbor"]) // 2:
                raise ValueError("trailing bytes")
            return item
        except Exception as exc:  # cbor2 raises assorted types on garbage
            raise QrJsonError(f"QR JSON {where} is not valid CBOR: {_one_line(exc)}") from None
    raise QrJsonError(
        f'QR JSON {where} must be a number, string, boolean, null, array, {{"hex": ...}} '
        'or {"cbor": ...}'
    )
