"""`hybrid phone`: the phone side alone, serving exactly one hybrid transaction.

Takes the desktop's ``FIDO:/`` URL as an argument or a QR image (``--qr-image``, decoded with a
real QR reader), opens a tunnel on the relay, advertises over the BLE medium, answers one CTAP2
request with the software authenticator, and exits. Exit status 0 means the CTAP response was sent
(its status is reported on stderr); anything else prints the catalogue error and returns its exit
code. Passkeys persist in ``--data-dir``. Without ``--approve`` the user is asked on the terminal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from hybrid.cli.desktop import DEFAULT_TIMEOUT, add_ble_port, default_data_dir, progress_printer
from hybrid.tunnel.domains import DEFAULT_FALLBACK_DOMAIN_ID

_STATUS_NAMES = {
    0x00: "OK",
    0x19: "CREDENTIAL_EXCLUDED",
    0x26: "UNSUPPORTED_ALGORITHM",
    0x27: "OPERATION_DENIED",
    0x2E: "NO_CREDENTIALS",
    0x2F: "USER_ACTION_TIMEOUT",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "phone",
        help="run the phone side: read a FIDO:/ QR code and answer one request",
        description="Act as the phone: read the desktop's FIDO:/ URL (or QR image), connect to "
        "the relay, advertise over BLE and answer one CTAP2 request with a software passkey.",
    )
    parser.add_argument("url", nargs="?", metavar="FIDO_URL", help="the FIDO:/ URL")
    parser.add_argument("--qr-image", type=Path, metavar="FILE", help="read the QR from an image")
    parser.add_argument(
        "--relay",
        metavar="URL",
        help="relay base URL (ws://host:port) used for every tunnel path",
    )
    parser.add_argument(
        "--domain-id",
        type=int,
        default=0,
        metavar="N",
        help="tunnel-server domain id put in the advert (default 0)",
    )
    parser.add_argument(
        "--fallback-domain-id",
        type=int,
        default=DEFAULT_FALLBACK_DOMAIN_ID,
        metavar="N",
        help="hashed domain id (>= 256) advertised instead when the QR says the desktop does not "
        f"know --domain-id (QR key 2 absent or too small; default {DEFAULT_FALLBACK_DOMAIN_ID})",
    )
    parser.add_argument("--approve", action="store_true", help="approve the request without asking")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where passkeys are kept")
    add_ble_port(parser)
    parser.add_argument(
        "--ble",
        choices=("loopback", "bluez"),
        default="loopback",
        help="BLE backend: the loopback medium (default) or a real adapter through BlueZ",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds to wait for the desktop and for the user (default 60)",
    )
    parser.set_defaults(func=run)


def _advertiser(args: argparse.Namespace):
    if args.ble == "bluez":
        from hybrid.ble.bluez_advertiser import BluezAdvertiser

        return BluezAdvertiser()
    from hybrid.ble.loopback import LoopbackAdvertiser

    return LoopbackAdvertiser(args.ble_port)


def run(args: argparse.Namespace) -> int:
    from hybrid.phone import (
        CredentialStore,
        SoftwareAuthenticator,
        auto_approver,
        terminal_approver,
    )
    from hybrid.phone.session import PhoneDeadlines, PhoneSession
    from hybrid.qr.payload import QrPayload

    if (args.url is None) == (args.qr_image is None):
        print("hybrid phone: give either FIDO_URL or --qr-image FILE", file=sys.stderr)
        return 2
    if args.qr_image is not None:
        from hybrid.qr.render import decode_qr_image

        url = decode_qr_image(args.qr_image)
    else:
        url = args.url
    qr = QrPayload.from_url(url.strip())  # strict validation before any network use
    data_dir = args.data_dir or default_data_dir("phone")
    data_dir.mkdir(parents=True, exist_ok=True)
    approver = auto_approver() if args.approve else terminal_approver()
    store = CredentialStore(data_dir)
    try:
        authenticator = SoftwareAuthenticator(store, approver)
        session = PhoneSession(
            qr,
            authenticator,
            _advertiser(args),
            relay_url=args.relay,
            domain_id=args.domain_id,
            fallback_domain_id=args.fallback_domain_id,
            deadlines=PhoneDeadlines(desktop=args.timeout, user=args.timeout),
            progress=progress_printer("phone"),
        )
        result = trio.run(session.run)
    finally:
        store.close()
    name = _STATUS_NAMES.get(result.status, f"0x{result.status:02X}")
    what = "registration" if result.command == 0x01 else "sign-in"
    print(f"phone: answered the {what} request with status {name}", file=sys.stderr, flush=True)
    return 0
