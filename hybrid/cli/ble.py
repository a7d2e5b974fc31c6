"""`hybrid ble`: inspect BLE adverts offline (trial-decrypt with a QR secret, or build one).

``hybrid ble decrypt --qr-secret HEX ADVERT_HEX [--json]`` does what a desktop does with each
received service-data value (docs/protocol.md section 6.2) and prints where the phone waits: domain,
routing id, tunnel id and the ``/cable/connect`` URL. An advert for another secret is not an error
of the tool but a "no match", reported with exit code 1.
"""

from __future__ import annotations

import argparse
import json

from hybrid import keys
from hybrid.ble.eid import (
    ADVERT_LEN,
    Eid,
    EidError,
    decrypt_advert,
    encrypt_advert,
)
from hybrid.errors import ProtocolError, UsageError
from hybrid.tunnel.domains import is_known_domain_id, tunnel_domain
from hybrid.tunnel.urls import connect_url
from hybrid.wire import QR_SECRET_LEN


class BleUsageError(UsageError):
    """A command-line argument is not valid hex or has the wrong length."""


class AdvertNotOursError(ProtocolError):
    """The advert does not decrypt under this QR secret (exit code 1, like grep's no match)."""


def parse_hex(text: str, what: str) -> bytes:
    """Hex in either case, surrounding whitespace ignored; one-line error otherwise."""
    cleaned = text.strip()
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise BleUsageError(f"{what} is not valid hex: {text.strip()!r}") from None


def _qr_secret(text: str) -> bytes:
    secret = parse_hex(text, "--qr-secret")
    if len(secret) != QR_SECRET_LEN:
        raise BleUsageError(f"--qr-secret must be {QR_SECRET_LEN} bytes, got {len(secret)}")
    return secret


def describe_advert(qr_secret: bytes, advert: bytes) -> dict[str, object]:
    """Decrypt ``advert`` with the QR secret's EID key and describe where the phone waits."""
    plaintext = decrypt_advert(keys.eid_key(qr_secret), advert)
    if plaintext is None:
        if len(advert) < ADVERT_LEN:
            raise AdvertNotOursError(
                f"advert is not for this QR secret (need at least {ADVERT_LEN} bytes, "
                f"got {len(advert)})"
            )
        raise AdvertNotOursError("advert is not for this QR secret")
    eid = Eid.parse(plaintext)
    tid = keys.tunnel_id(qr_secret)
    return {
        "tunnel_server_id": eid.tunnel_server_id,
        "domain": tunnel_domain(eid.tunnel_server_id),
        "routing_id": eid.routing_id.hex().upper(),
        "nonce": eid.nonce.hex(),
        "tunnel_id": tid.hex().upper(),
        "connect_url": connect_url(eid.routing_id, tid, domain_id=eid.tunnel_server_id),
    }


def _decrypt(args: argparse.Namespace) -> int:
    secret = _qr_secret(args.qr_secret)
    advert = parse_hex(args.advert, "ADVERT_HEX")
    info = describe_advert(secret, advert)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"tunnel server id: {info['tunnel_server_id']}")
        print(f"domain:           {info['domain']}")
        print(f"routing id:       {info['routing_id']}")
        print(f"nonce:            {info['nonce']}")
        print(f"tunnel id:        {info['tunnel_id']}")
        print(f"connect url:      {info['connect_url']}")
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    secret = _qr_secret(args.qr_secret)
    routing_id = parse_hex(args.routing_id, "--routing-id")
    nonce = None if args.nonce is None else parse_hex(args.nonce, "--nonce")
    if not is_known_domain_id(args.domain_id):
        raise BleUsageError(f"--domain-id {args.domain_id} is not 0, 1 or 256..65535")
    try:
        eid = Eid.create(routing_id, args.domain_id, nonce)
    except EidError as exc:
        raise BleUsageError(str(exc)) from None
    print(encrypt_advert(keys.eid_key(secret), eid.pack()).hex())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ble",
        help="decrypt or build caBLE v2 BLE adverts offline",
        description="Work with the 20-byte BLE service data a phone advertises in a hybrid "
        "(caBLE v2) session.",
    )
    ble_sub = parser.add_subparsers(dest="ble_command", metavar="ACTION")
    ble_sub.required = True

    decrypt = ble_sub.add_parser(
        "decrypt",
        help="trial-decrypt an advert with a QR secret and show where the phone waits",
        description="Trial-decrypt BLE service data (at least 20 bytes, hex) with the EID key "
        "derived from a 16-byte QR secret. On a match, print the tunnel-server id and domain, "
        "routing id, connection nonce, tunnel id and the /cable/connect URL. Exit code 1 when "
        "the advert is not for this secret, 2 for malformed arguments.",
    )
    decrypt.add_argument("--qr-secret", required=True, metavar="HEX", help="16-byte QR secret")
    decrypt.add_argument("advert", metavar="ADVERT_HEX", help="service data as hex")
    decrypt.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: tunnel_server_id, domain, routing_id, nonce, tunnel_id, "
        "connect_url (default: one field per line)",
    )
    decrypt.set_defaults(func=_decrypt)

    encrypt = ble_sub.add_parser(
        "encrypt",
        help="build the advert a phone would broadcast for a QR secret",
        description="Pack an EID (reserved byte 0, nonce, routing id, domain id) and encrypt it "
        "into the 20-byte service data for a QR secret; prints it as hex.",
    )
    encrypt.add_argument("--qr-secret", required=True, metavar="HEX", help="16-byte QR secret")
    encrypt.add_argument(
        "--routing-id", required=True, metavar="HEX", help="3-byte routing id from the relay"
    )
    encrypt.add_argument(
        "--domain-id",
        type=int,
        default=0,
        metavar="N",
        help="tunnel-server domain id (default: 0)",
    )
    encrypt.add_argument("--nonce", metavar="HEX", help="10-byte nonce (default: random)")
    encrypt.set_defaults(func=_encrypt)
