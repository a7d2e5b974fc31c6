"""`hybrid desktop register|login`: the desktop side alone, for two terminals or other tools.

Standard output, in this order: the ``FIDO:/`` URL alone on the first line (flushed at once, so a
script can hand it to a phone), the QR code, and finally one ``verified ...`` line. Progress goes
to standard error, one line per step with its duration. The exit status is 0 only when the relying
party verified the result; otherwise the catalogue error is printed and its exit code returned
(``hybrid.catalogue``). The relying party's accounts and credentials persist in ``--data-dir``, so
``login`` after ``register`` works across runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hybrid.catalogue import Operation

if TYPE_CHECKING:
    from hybrid.events import Event

DEFAULT_TIMEOUT = 60.0
DATA_DIR_ENV = "HYBRID_DATA_DIR"


def default_data_dir(role: str) -> Path:
    """``$HYBRID_DATA_DIR/<role>``, else ``~/.local/share/hybrid/<role>``."""
    root = os.environ.get(DATA_DIR_ENV)
    base = Path(root) if root else Path.home() / ".local" / "share" / "hybrid"
    return base / role


def progress_printer(role: str):
    """A progress callback writing ``<role>: <step> (<seconds> s)`` lines to stderr."""

    def report(step: str, seconds: float) -> None:
        print(f"{role}: {step} ({seconds:.3f} s)", file=sys.stderr, flush=True)

    return report


def instruction_printer(role: str) -> Callable[[Event], None]:
    """An ``on_event`` callback printing the instructions a person acts on, to stderr.

    The step-by-step timings stay with ``progress_printer``; this prints only what the user
    should do or know ("Scan this QR code with your phone's camera", "Approve on your phone",
    "The computer stopped waiting"). Failures are printed once, by the command itself.
    """
    from hybrid import events

    shown = (
        events.QrShown,
        events.AdvertForAnotherQrSeen,
        events.WaitingForUser,
        events.DesktopStoppedWaiting,
    )

    def report(event: Event) -> None:
        if not isinstance(event, shown):
            return
        text = f"{role}: {event.message}"
        if isinstance(event, events.QrShown):
            text = f"{text} (waiting up to {event.timeout:g} s)"
        if isinstance(event, events.DesktopStoppedWaiting):
            # The terminal prompt may still be on its line: end it, then say why it went away.
            text = f"\n{text}: request dismissed"
        print(text, file=sys.stderr, flush=True)

    return report


def add_ble_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ble-port",
        type=int,
        default=None,
        metavar="N",
        help="UDP port of the loopback BLE medium (default: $HYBRID_BLE_PORT or 47474)",
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def response_json(response: Any) -> dict[str, Any]:
    """The standard WebAuthn JSON form of a python-fido2 response (plain JSON types only)."""
    return json.loads(json.dumps(dict(response)))


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "desktop",
        help="run the desktop side: show a FIDO:/ QR code and register or sign in",
        description="Show a FIDO:/ QR code, wait for a phone over BLE and the relay, send one "
        "CTAP2 request and verify the answer with the relying party.",
    )
    parser.add_argument("action", choices=("register", "login"))
    parser.add_argument(
        "--relay",
        metavar="URL",
        help="relay base URL (ws://host:port) used for every tunnel, whatever the advert says",
    )
    parser.add_argument("--rp-id", required=True, metavar="ID", help="relying party ID")
    parser.add_argument("--origin", metavar="ORIGIN", help="web origin (default: https://<rp-id>)")
    parser.add_argument(
        "--user", metavar="NAME", help="account name (login without it is discoverable)"
    )
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="relying-party state")
    add_ble_port(parser)
    parser.add_argument(
        "--ble",
        choices=("loopback", "bleak"),
        default="loopback",
        help="BLE backend: the loopback medium (default) or a real adapter through bleak",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds to wait for the phone and for the user (default 60)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the verified response as JSON"
    )
    parser.add_argument("--no-qr", action="store_true", help="print the URL but no QR code")
    parser.set_defaults(func=run)


def _scanner(args: argparse.Namespace):
    if args.ble == "bleak":
        from hybrid.ble.bleak_scanner import BleakAdvertScanner

        return BleakAdvertScanner()
    from hybrid.ble.loopback import LoopbackScanner

    return LoopbackScanner(args.ble_port)


def run(args: argparse.Namespace) -> int:
    from hybrid.desktop import Deadlines, DesktopSession, register, sign_in
    from hybrid.rp import RelyingParty

    if args.action == "register" and not args.user:
        print("hybrid desktop register: --user is required", file=sys.stderr)
        return 2
    operation = Operation.REGISTER if args.action == "register" else Operation.SIGN_IN
    origin = args.origin or f"https://{args.rp_id}"
    data_dir = args.data_dir or default_data_dir("desktop")
    data_dir.mkdir(parents=True, exist_ok=True)
    rp = RelyingParty(args.rp_id, origin, data_dir)
    deadlines = Deadlines(advert=args.timeout, user=args.timeout)
    session = DesktopSession(
        operation,
        _scanner(args),
        relay_url=args.relay,
        deadlines=deadlines,
        progress=progress_printer("desktop"),
        on_event=instruction_printer("desktop"),
    )

    def show(url: str) -> None:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
        if not args.no_qr:
            from hybrid.qr.render import render_terminal

            try:
                sys.stdout.write(render_terminal(url) + "\n")
            except UnicodeEncodeError:
                # A non-UTF-8 terminal cannot draw the block characters; the URL line is enough.
                sys.stdout.write("(QR code not shown: this terminal cannot draw it)\n")
            sys.stdout.flush()

    async def main():
        if operation is Operation.REGISTER:
            return await register(rp, args.user, session, on_url=show)
        return await sign_in(rp, args.user, session, on_url=show)

    result = trio.run(main)
    if args.json is not None:
        document = {
            "rp_id": args.rp_id,
            "origin": origin,
            "operation": str(operation),
            "challenge": b64url(result.challenge),
            "response": response_json(result.response),
            "steps": [
                {"step": name, "seconds": seconds} for name, seconds in result.transcript.steps
            ],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    what = "registration" if operation is Operation.REGISTER else "assertion"
    print(f"verified: the relying party {args.rp_id} accepted the {what}", flush=True)
    return 0
