"""Deciding what an HTTP request to the relay is, before any upgrade (sans-IO).

Given the method, target and headers of one request, ``decide`` returns either a ``Refusal``
(status code, metric reason, one-line message) or what to serve: a plain endpoint (``/healthz``,
``/metrics``) or a WebSocket upgrade for one of the tunnel paths of docs/protocol.md section 7.1.
No sockets, no clocks: everything here is a pure function of its arguments, so it is fuzzed
directly. Pairing decisions that depend on live state (404 unknown tunnel, 409 duplicate, 503 full)
are made by the server afterwards.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Final

from hybrid.wire import (
    CONNECT_PATH_PREFIX,
    CONTACT_PATH_PREFIX,
    NEW_PATH_PREFIX,
    ROUTING_ID_LEN,
    SUBPROTOCOL,
    TUNNEL_ID_LEN,
)
from relay.values import Value

Headers = list[tuple[bytes, bytes]]

HEALTH_PATH: Final = b"/healthz"
METRICS_PATH: Final = b"/metrics"
_CABLE: Final = b"/cable"

_TUNNEL_ID_RE: Final = re.compile(rb"[0-9A-Fa-f]{%d}" % (2 * TUNNEL_ID_LEN))
_ROUTING_ID_RE: Final = re.compile(rb"[0-9A-Fa-f]{%d}" % (2 * ROUTING_ID_LEN))
_CONTACT_ID_RE: Final = re.compile(rb"[A-Za-z0-9_-]+")
_SUBPROTOCOL: Final = SUBPROTOCOL.encode("ascii")

assert NEW_PATH_PREFIX == "/cable/new/" and CONNECT_PATH_PREFIX == "/cable/connect/"
assert CONTACT_PATH_PREFIX == "/cable/contact/"


@dataclass(frozen=True)
class Refusal:
    """Answer the request with ``status`` and close; ``reason`` labels the refusal metric."""

    status: int
    reason: str
    message: str
    headers: tuple[tuple[str, str], ...] = field(default=())


class NewTunnel(Value):
    """``/cable/new/<tunnel id>``: an authenticator opens a pending tunnel."""

    _FIELDS = ("tunnel_id",)

    def __init__(self, tunnel_id: bytes) -> None:
        self.tunnel_id = tunnel_id


class ConnectTunnel(Value):
    """``/cable/connect/<routing id>/<tunnel id>``: an initiator joins a pending tunnel."""

    _FIELDS = ("routing_id", "tunnel_id")

    def __init__(self, routing_id: bytes, tunnel_id: bytes) -> None:
        self.routing_id = routing_id
        self.tunnel_id = tunnel_id


@dataclass(frozen=True)
class ContactTunnel:
    """``/cable/contact/<contact id>``: the linked flow, which this relay does not offer."""

    contact_id: bytes


@dataclass(frozen=True)
class PlainGet:
    """A plain HTTP GET of ``/healthz`` or ``/metrics``."""

    path: bytes


Route = NewTunnel | ConnectTunnel | ContactTunnel


class Upgrade(Value):
    """A well-formed WebSocket upgrade to ``route`` offering the ``fido.cable`` subprotocol."""

    _FIELDS = ("route", "key")

    def __init__(self, route: Route, key: bytes) -> None:
        self.route = route
        self.key = key


Decision = Refusal | PlainGet | Upgrade

MALFORMED: Final = "malformed"


def _malformed(message: str) -> Refusal:
    return Refusal(400, MALFORMED, message)


def parse_target(target: bytes) -> Route | PlainGet | Refusal:
    """Classify a request target; tunnel paths must match section 7.1 exactly."""
    path = target.split(b"?", 1)[0]
    if path in (HEALTH_PATH, METRICS_PATH):
        return PlainGet(path)
    if not target.startswith(b"/"):
        return _malformed("request target must be an absolute path")
    if path != _CABLE and not path.startswith(_CABLE + b"/"):
        return Refusal(404, "unknown_path", "no such endpoint")
    if b"?" in target:
        return _malformed("tunnel paths take no query string")
    parts = path.split(b"/")
    # parts[0] is empty (leading slash), parts[1] is b"cable".
    kind = parts[2] if len(parts) > 2 else b""
    if kind == b"new":
        if len(parts) == 4 and _TUNNEL_ID_RE.fullmatch(parts[3]):
            return NewTunnel(bytes.fromhex(parts[3].decode("ascii")))
        return _malformed("expected /cable/new/<32 hex digit tunnel id>")
    if kind == b"connect":
        if (
            len(parts) == 5
            and _ROUTING_ID_RE.fullmatch(parts[3])
            and _TUNNEL_ID_RE.fullmatch(parts[4])
        ):
            return ConnectTunnel(
                bytes.fromhex(parts[3].decode("ascii")), bytes.fromhex(parts[4].decode("ascii"))
            )
        return _malformed(
            "expected /cable/connect/<6 hex digit routing id>/<32 hex digit tunnel id>"
        )
    if kind == b"contact":
        if len(parts) == 4 and _CONTACT_ID_RE.fullmatch(parts[3]):
            padded = parts[3] + b"=" * (-len(parts[3]) % 4)
            try:
                return ContactTunnel(base64.urlsafe_b64decode(padded))
            except (binascii.Error, ValueError):
                pass
        return _malformed("expected /cable/contact/<base64url contact id>")
    return _malformed("unknown tunnel path")


def _tokens(values: list[bytes]) -> list[bytes]:
    if len(values) == 1 and b"," not in values[0]:
        return [values[0].strip()]
    return [t.strip() for value in values for t in value.split(b",")]


def _has_token(values: list[bytes] | None, token: bytes) -> bool:
    """Whether the comma-separated lists in ``values`` hold ``token`` (case-insensitive)."""
    if not values:
        return False
    if len(values) == 1 and b"," not in values[0]:
        return values[0].strip().lower() == token
    return any(t.strip().lower() == token for value in values for t in value.split(b","))


def _by_name(headers: Headers) -> dict[bytes, list[bytes]]:
    """Header values by lower-case name, in order: one pass instead of one per header asked."""
    found: dict[bytes, list[bytes]] = {}
    for key, value in headers:
        key = key.lower()
        values = found.get(key)
        if values is None:
            found[key] = [value]
        else:
            values.append(value)
    return found


_FAST_TARGET: Final = re.compile(
    rb"/cable/(?:new/([0-9A-Fa-f]{%d})|connect/([0-9A-Fa-f]{%d})/([0-9A-Fa-f]{%d}))"
    % (2 * TUNNEL_ID_LEN, 2 * ROUTING_ID_LEN, 2 * TUNNEL_ID_LEN)
)
#: The base64 of 16 bytes with its unused bits zero, the form every client sends; other keys the
#: general path accepts (or refuses) go there.
_unhexlify: Final = binascii.unhexlify
_FAST_KEY: Final = re.compile(rb"[A-Za-z0-9+/]{21}[AQgw]==")
_BODY_HEADERS: Final = frozenset((b"content-length", b"transfer-encoding"))
_FAST_NAMES: Final = frozenset(
    (
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
    )
)


def fast_upgrade(
    method: bytes,
    target: bytes,
    headers: Headers,
    allowed_origins: tuple[str, ...] = (),
    version: bytes = b"1.1",
    lower_names: bool = False,
) -> Upgrade | None:
    """The upgrade of an ordinary, well-formed tunnel request, or None: then ``decide_general``.

    Accepts only what ``decide_general`` accepts, with the same ``Upgrade``: a GET over HTTP/1.1
    of ``/cable/new/<id>`` or ``/cable/connect/<rid>/<id>``, each of Upgrade (websocket),
    Connection (upgrade), Sec-WebSocket-Key (16 bytes in 24 base64 characters, unused bits
    zero), -Version (13) and -Protocol (fido.cable) exactly once with exactly that value, no
    body headers, and no Origin allow-list. Anything else, valid or not, is left to the general
    path (checked against it in tests/test_relay_fast_decide.py). ``lower_names``: the header
    names are lower-case already (a ``relay.http.Request``'s are, from either parser).
    """
    if method != b"GET" or version != b"1.1" or allowed_origins:
        return None
    match = _FAST_TARGET.fullmatch(target)
    if match is None:
        return None
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if not lower_names:
            name = name.lower()
        if name in _FAST_NAMES:
            if name in found:
                return None
            found[name] = value
        elif name in _BODY_HEADERS:
            return None
    key = found.get(b"sec-websocket-key")
    if (
        key is None
        or found.get(b"sec-websocket-version") != b"13"
        or found.get(b"sec-websocket-protocol") != _SUBPROTOCOL
        or found.get(b"upgrade", b"").lower() != b"websocket"
        or found.get(b"connection", b"").lower() != b"upgrade"
    ):
        return None
    if _FAST_KEY.fullmatch(key) is None:
        return None
    new_id = match[1]
    route: Route
    if new_id is not None:
        route = NewTunnel(_unhexlify(new_id))
    else:
        route = ConnectTunnel(_unhexlify(match[2]), _unhexlify(match[3]))
    return Upgrade(route, key)


def decide(
    method: bytes,
    target: bytes,
    headers: Headers,
    allowed_origins: tuple[str, ...] = (),
    version: bytes = b"1.1",
    lower_names: bool = False,
) -> Decision:
    """What to do with one HTTP request, judged from the request alone (``decide_general``;
    the ordinary tunnel upgrade through ``fast_upgrade``, which gives the same answer)."""
    fast = fast_upgrade(method, target, headers, allowed_origins, version, lower_names)
    if fast is not None:
        return fast
    return decide_general(method, target, headers, allowed_origins, version)


def decide_general(
    method: bytes,
    target: bytes,
    headers: Headers,
    allowed_origins: tuple[str, ...] = (),
    version: bytes = b"1.1",
) -> Decision:
    """What to do with one HTTP request, judged from the request alone.

    An upgrade must be exactly HTTP/1.1 (RFC 6455 section 4.1; a 1.0 client cannot keep the
    connection, and no other 1.x or 2.0 speaks this handshake), carry exactly one
    ``Sec-WebSocket-Key`` and one ``Sec-WebSocket-Version``, and no body framing at all
    (``Content-Length``, ``Transfer-Encoding``).
    """
    parsed = parse_target(target)
    if isinstance(parsed, Refusal):
        return parsed
    if isinstance(parsed, PlainGet):
        if method not in (b"GET", b"HEAD"):
            return Refusal(405, "method_not_allowed", "use GET", (("Allow", "GET, HEAD"),))
        return parsed
    if method != b"GET":
        return Refusal(405, "method_not_allowed", "tunnel paths take GET only", (("Allow", "GET"),))
    named = _by_name(headers)
    if not _has_token(named.get(b"upgrade"), b"websocket") or not _has_token(
        named.get(b"connection"), b"upgrade"
    ):
        return Refusal(400, "not_websocket", "tunnel paths need a WebSocket upgrade")
    if version != b"1.1":
        return Refusal(
            505, "http_version", f"a WebSocket upgrade needs HTTP/1.1, not HTTP/{version.decode()}"
        )
    for name in (b"sec-websocket-key", b"sec-websocket-version"):
        if len(named.get(name, ())) > 1:
            return _malformed(f"{name.decode()} given more than once")
    if b"content-length" in named or b"transfer-encoding" in named:
        return _malformed(
            "a WebSocket upgrade must not carry a body (Content-Length or Transfer-Encoding)"
        )
    ws_version = named.get(b"sec-websocket-version")
    if ws_version is None or ws_version[0].strip() != b"13":
        return Refusal(
            426,
            "bad_websocket_version",
            "WebSocket version 13 required",
            (("Sec-WebSocket-Version", "13"),),
        )
    keys = named.get(b"sec-websocket-key")
    key = keys[0].strip() if keys else None
    try:
        if key is None or len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return Refusal(400, "not_websocket", "missing or malformed Sec-WebSocket-Key")
    if _SUBPROTOCOL not in _tokens(named.get(b"sec-websocket-protocol", [])):
        return Refusal(400, "missing_subprotocol", f"the {SUBPROTOCOL} subprotocol is required")
    if allowed_origins:
        origins = named.get(b"origin")
        origin = origins[0].strip() if origins else None
        if origin is not None and origin.decode("latin-1") not in allowed_origins:
            return Refusal(403, "origin_forbidden", "origin not allowed")
    return Upgrade(parsed, key)
