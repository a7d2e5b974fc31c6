"""`hybrid phone`: the phone side alone, serving exactly one hybrid transaction.

Takes the desktop's ``FIDO:/`` URL as an argument or a QR image (``--qr-image``, decoded with a
real QR reader), opens a tunnel on the relay, advertises over the BLE medium, answers one CTAP2
request with the software authenticator, and exits. Exit status 0 means the CTAP response was sent
(its status is reported on stderr); anything else prints the catalogue error and returns its exit
code. Passkeys persist in ``--data-dir``. Without ``--approve`` the user is asked on the terminal.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import trio

from hybrid.ble.medium import Advertiser
from hybrid.cli.args import (
    UsageError,
    add_ca_file,
    ca_file_from,
    domain_id_arg,
    hashed_domain_id_arg,
    relay_url_arg,
)
from hybrid.cli.desktop import (
    DATA_DIR_ENV,
    add_ble_port,
    add_timeout,
    default_data_dir,
    instruction_printer,
    progress_printer,
    ssl_context_for,
)
from hybrid.trio_util import single_exceptions
from hybrid.tunnel.domains import DEFAULT_FALLBACK_DOMAIN_ID, domain_id_for_host


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "phone",
        help="run the phone side: read a FIDO:/ QR code and answer one request",
        description="Act as the phone: read the desktop's FIDO:/ URL (or QR image), connect to "
        "the relay, advertise over BLE and answer one CTAP2 request with a software passkey. "
        "Without --approve the request is shown on the terminal and answered there (or by a "
        "script writing to standard input); with standard input closed or /dev/null it is "
        "declined, since nobody can approve.",
    )
    parser.add_argument("url", nargs="?", metavar="FIDO_URL", help="the FIDO:/ URL")
    parser.add_argument(
        "--qr-image", type=Path, metavar="FILE", help="read the QR from an image (default: none)"
    )
    parser.add_argument(
        "--relay",
        type=relay_url_arg,
        metavar="URL",
        help="relay base URL (ws://host:port or wss://host:port, no path) used for every tunnel "
        "path (default: the relay of --domain-id)",
    )
    parser.add_argument(
        "--domain-id",
        type=domain_id_arg,
        default=None,
        metavar="N",
        help="tunnel-server domain id put in the advert: 0, 1 or 256..65535 (default: the id of "
        "--relay's host when it has one, else 0)",
    )
    parser.add_argument(
        "--fallback-domain-id",
        type=hashed_domain_id_arg,
        default=DEFAULT_FALLBACK_DOMAIN_ID,
        metavar="N",
        help="hashed domain id (256..65535) advertised instead when the QR says the desktop does "
        "not know --domain-id (QR key 2 absent or too small; "
        f"default: {DEFAULT_FALLBACK_DOMAIN_ID})",
    )
    parser.add_argument(
        "--approve",
        action="store_true",
        help="approve the request without asking (default: ask on the terminal)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"where passkeys are kept (default: ${DATA_DIR_ENV}/phone, else "
        "~/.local/share/hybrid/phone)",
    )
    add_ble_port(parser)
    parser.add_argument(
        "--ble",
        choices=("loopback", "bluez"),
        default="loopback",
        help="BLE backend: the loopback medium or a real adapter through BlueZ (default: loopback)",
    )
    add_timeout(parser, "the desktop")
    add_ca_file(parser)
    parser.set_defaults(func=run)


def _advertiser(args: argparse.Namespace) -> Advertiser:
    if args.ble == "bluez":
        from hybrid.ble.bluez_advertiser import BluezAdvertiser

        return BluezAdvertiser()
    from hybrid.ble.loopback import LoopbackAdvertiser

    return LoopbackAdvertiser(args.ble_port)


def say(text: str) -> None:
    print(f"phone: {text}", file=sys.stderr, flush=True)


def nobody_can_answer() -> bool:
    """True when no person and no script can answer a prompt on stdin.

    A terminal has a person behind it, a pipe or a file a driving script; a closed stdin or a
    character device that is no terminal (``/dev/null``, as under cron, systemd or
    ``subprocess.DEVNULL``) has nobody.
    """
    try:
        fd = sys.stdin.fileno()
        if os.isatty(fd):
            return False
        return stat.S_ISCHR(os.fstat(fd).st_mode)
    except (AttributeError, ValueError, OSError):
        return True


def advertised_domain(relay: str | None, requested: int | None) -> tuple[int | None, str | None]:
    """``(domain id pinned by the relay or None, a note for the user or None)``.

    The advert must name the relay the phone actually uses: an assigned or hashed host name in
    ``--relay`` is that id; any other relay has no id, so only desktops given the same
    ``--relay`` will find the phone.
    """
    if relay is None:
        return None, None
    host = urlsplit(relay).hostname or ""
    pinned = domain_id_for_host(host)
    if pinned is None:
        return None, (
            f"relay {relay} has no tunnel-server domain id: only desktops given the same --relay "
            "will find this phone (name a self-hosted relay with a hashed domain, see "
            "'hybrid domain --help')"
        )
    if requested is not None and requested != pinned:
        raise UsageError(
            f"--domain-id {requested} contradicts --relay {relay}, whose host is domain "
            f"{pinned}: the advert must name the relay the phone uses"
        )
    return pinned, None


def run(args: argparse.Namespace) -> int:
    from fido2.ctap2 import Ctap2

    from hybrid.catalogue import Failure, PasskeyError
    from hybrid.phone import (
        CredentialStore,
        SoftwareAuthenticator,
        auto_approver,
        terminal_approver,
        unattended_approver,
    )
    from hybrid.phone.session import PhoneDeadlines, PhoneSession
    from hybrid.qr.payload import QrPayload
    from hybrid.session_errors import stale_qr_warning
    from hybrid.tunnel.client import relay_timeout_from_env

    if (args.url is None) == (args.qr_image is None):
        raise UsageError("give either FIDO_URL or --qr-image FILE")
    pinned, note = advertised_domain(args.relay, args.domain_id)
    ssl_context = ssl_context_for(ca_file_from(args))
    if args.qr_image is not None:
        from hybrid.qr.render import decode_qr_image

        url = decode_qr_image(args.qr_image)
    else:
        url = args.url
    qr = QrPayload.from_url(url.strip())  # strict validation before any network use
    stale = stale_qr_warning(time.time() - qr.timestamp) if qr.timestamp is not None else None
    if stale:
        say(f"warning: {stale}")
    if note:
        say(note)
    data_dir = args.data_dir or default_data_dir("phone")
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.approve:
        approver = auto_approver()
    elif nobody_can_answer():
        say("standard input is not a terminal: nobody can approve, so the request will be declined")
        approver = unattended_approver()
    else:
        approver = terminal_approver()
    store = CredentialStore(data_dir)
    try:
        authenticator = SoftwareAuthenticator(store, approver)
        session = PhoneSession(
            qr,
            authenticator,
            _advertiser(args),
            relay_url=args.relay,
            domain_id=pinned if pinned is not None else (args.domain_id or 0),
            fallback_domain_id=args.fallback_domain_id,
            deadlines=PhoneDeadlines(
                desktop=args.timeout, user=args.timeout, tunnel=relay_timeout_from_env()
            ),
            progress=progress_printer("phone"),
            on_event=instruction_printer("phone"),
            ssl_context=ssl_context,
        )
        if pinned is not None:
            # This relay is the one the phone uses, whatever the QR's key 2 says the desktop knows.
            session.domain_id = pinned
        try:
            with single_exceptions():
                result = trio.run(session.run)
        except PasskeyError as exc:
            if stale and exc.failure is Failure.TIMEOUT:
                # No desktop came for an old QR code: its session is over, not merely slow.
                raise PasskeyError(
                    Failure.SESSION_EXPIRED, exc.operation, f"{stale}; {exc.detail}"
                ) from None
            raise
    finally:
        store.close()
    what = "registration" if result.command == Ctap2.CMD.MAKE_CREDENTIAL else "sign-in"
    name = _status_name(result.status)
    say(f"answered the {what} request with status {name}")
    return 0


def _status_name(status: int) -> str:
    """python-fido2's name for a CTAP status byte ("OK" for success), or its hex value."""
    from fido2.ctap import CtapError

    if status == CtapError.ERR.SUCCESS:
        return "OK"
    try:
        return CtapError.ERR(status).name
    except ValueError:
        return f"0x{status:02X}"
