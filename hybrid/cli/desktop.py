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
import dataclasses
import json
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hybrid.ble.medium import Scanner
from hybrid.catalogue import Operation
from hybrid.cli.args import (
    UsageError,
    add_ca_file,
    ca_file_from,
    port_arg,
    relay_url_arg,
    seconds_arg,
)
from hybrid.trio_util import single_exceptions

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
        # One write with its newline: Ctrl-C between text and newline would join the next line.
        print(f"{role}: {step} ({seconds:.3f} s)\n", end="", file=sys.stderr, flush=True)

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
        # One write with its newline: Ctrl-C between text and newline would join the next line.
        print(text + "\n", end="", file=sys.stderr, flush=True)

    return report


def add_ble_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ble-port",
        type=port_arg,
        default=None,
        metavar="N",
        help="UDP port of the loopback BLE medium (default: $HYBRID_BLE_PORT or 47474)",
    )


def add_timeout(parser: argparse.ArgumentParser, waits_for: str) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds_arg,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for {waits_for} and for the user (default: {DEFAULT_TIMEOUT:g})",
    )


def ssl_context_for(ca_file: Path | None) -> ssl.SSLContext | None:
    """The system's trust store plus ``ca_file`` (a private relay CA), or ``None`` for defaults."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca-file {ca_file}: not a PEM CA certificate file ({exc})") from None
    return context


def response_json(response: Any) -> dict[str, Any]:
    """The standard WebAuthn JSON form of a python-fido2 response (plain JSON types only)."""
    return json.loads(json.dumps(dict(response)))


_ACTIONS = {
    "register": (
        "register a passkey for --user on the phone",
        "Show a FIDO:/ QR code, wait for a phone over BLE and the relay, ask it to create a "
        "passkey for --user at --rp-id (authenticatorMakeCredential) and store the credential "
        "once the relying party has verified the attestation. Exit status 0 only if it did.",
    ),
    "login": (
        "sign in with a passkey on the phone",
        "Show a FIDO:/ QR code, wait for a phone over BLE and the relay, ask it for an assertion "
        "(authenticatorGetAssertion) and verify it with the relying party: with --user only that "
        "account's passkeys are allowed, without it the phone chooses (discoverable sign-in). "
        "Exit status 0 only if the relying party verified the assertion.",
    ),
}


def _add_common(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument(
        "--relay",
        type=relay_url_arg,
        metavar="URL",
        help="relay base URL (ws://host:port or wss://host:port, no path) used for every tunnel, "
        "whatever domain the phone's advert names (default: the relay the advert names)",
    )
    parser.add_argument("--rp-id", required=True, metavar="ID", help="relying party ID (required)")
    parser.add_argument(
        "--origin",
        metavar="ORIGIN",
        help="web origin; must be https://<rp-id> or a subdomain of it (default: https://<rp-id>)",
    )
    if action == "register":
        parser.add_argument(
            "--user", required=True, metavar="NAME", help="account name to register (required)"
        )
    else:
        parser.add_argument(
            "--user",
            metavar="NAME",
            help="account to sign in (default: none, a discoverable sign-in: the phone chooses)",
        )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"relying-party state (default: ${DATA_DIR_ENV}/desktop, else "
        "~/.local/share/hybrid/desktop)",
    )
    add_ble_port(parser)
    parser.add_argument(
        "--ble",
        choices=("loopback", "bleak"),
        default="loopback",
        help="BLE backend: the loopback medium or a real adapter through bleak (default: loopback)",
    )
    add_timeout(parser, "the phone")
    add_ca_file(parser)
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the verified response as JSON (default: none; shape in the README)",
    )
    parser.add_argument(
        "--no-qr", action="store_true", help="print the URL but no QR code (default: draw it)"
    )
    if action == "register":
        parser.add_argument(
            "--cred-props",
            action="store_true",
            help="ask for the credProps extension: the result says whether the passkey is "
            "discoverable (default: not asked)",
        )
        parser.add_argument(
            "--prf",
            action="store_true",
            help="ask for the prf extension: the result says whether the passkey supports it "
            "(default: not asked)",
        )
    else:
        parser.add_argument(
            "--prf",
            metavar="SALT",
            help="evaluate the prf extension with this text (UTF-8) as its first input; the "
            "32-byte output is in clientExtensionResults and printed in hex (default: none)",
        )
    parser.set_defaults(func=run, action=action)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "desktop",
        help="run the desktop side: show a FIDO:/ QR code and register or sign in",
        description="Show a FIDO:/ QR code, wait for a phone over BLE and the relay, send one "
        "CTAP2 request and verify the answer with the relying party. "
        "See 'hybrid desktop register --help' and 'hybrid desktop login --help'.",
    )
    actions = parser.add_subparsers(dest="desktop_action", metavar="ACTION")
    actions.required = True
    for action, (summary, description) in _ACTIONS.items():
        _add_common(actions.add_parser(action, help=summary, description=description), action)


def _scanner(args: argparse.Namespace) -> Scanner:
    from hybrid.desktop.scanners import default_scanner

    return default_scanner(args.ble_port, medium="bleak" if args.ble == "bleak" else "loopback")


def check_origin(rp_id: str, origin: str) -> None:
    """Browsers refuse an RP ID the origin is not within; so do we (a usage error)."""
    from fido2.rpid import verify_rp_id

    if not verify_rp_id(rp_id, origin):
        raise UsageError(
            f"--origin {origin} is not within --rp-id {rp_id}: the origin must be https:// "
            f"(or http://localhost) and its host {rp_id} or a subdomain of it"
        )


def requested_extensions(args: argparse.Namespace) -> dict[str, Any]:
    """The WebAuthn extensions the relying party asks for, from the command line."""
    extensions: dict[str, Any] = {}
    if args.action == "register":
        if args.cred_props:
            extensions["credProps"] = True
        if args.prf:
            extensions["prf"] = {}
    elif args.prf is not None:
        extensions["prf"] = {"eval": {"first": args.prf.encode("utf-8")}}
    return extensions


class _AskingExtensions:
    """The relying party, with ``extensions`` added to the options it issues."""

    def __init__(self, rp: Any, extensions: dict[str, Any]) -> None:
        self._rp = rp
        self._extensions = extensions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rp, name)

    def _extend(self, options: Any) -> Any:
        public_key = dataclasses.replace(
            options.public_key,
            extensions={**(options.public_key.extensions or {}), **self._extensions},
        )
        return dataclasses.replace(options, public_key=public_key)

    def begin_registration(self, user_name: str) -> tuple[Any, dict]:
        options, state = self._rp.begin_registration(user_name)
        return self._extend(options), state

    def begin_authentication(self, user_name: str | None) -> tuple[Any, dict]:
        options, state = self._rp.begin_authentication(user_name)
        return self._extend(options), state


def run(args: argparse.Namespace) -> int:
    from fido2.utils import websafe_encode

    from hybrid.desktop import Deadlines, DesktopSession, register, sign_in
    from hybrid.desktop.prepare import prepared_scanner
    from hybrid.rp import RelyingParty

    operation = Operation.REGISTER if args.action == "register" else Operation.SIGN_IN
    origin = args.origin or f"https://{args.rp_id}"
    check_origin(args.rp_id, origin)
    ssl_context = ssl_context_for(ca_file_from(args))
    data_dir = args.data_dir or default_data_dir("desktop")
    data_dir.mkdir(parents=True, exist_ok=True)
    rp: Any = RelyingParty(args.rp_id, origin, data_dir)
    extensions = requested_extensions(args)
    if extensions:
        rp = _AskingExtensions(rp, extensions)
    from hybrid.tunnel.client import relay_timeout_from_env

    deadlines = Deadlines(advert=args.timeout, user=args.timeout, tunnel=relay_timeout_from_env())

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
        # The scanner is open (loopback port bound, adapter started) before the QR is shown.
        async with prepared_scanner(_scanner(args), operation) as scanner:
            session = DesktopSession(
                operation,
                scanner,
                relay_url=args.relay,
                deadlines=deadlines,
                progress=progress_printer("desktop"),
                on_event=instruction_printer("desktop"),
                ssl_context=ssl_context,
            )
            if operation is Operation.REGISTER:
                return await register(rp, args.user, session, on_url=show)
            return await sign_in(rp, args.user, session, on_url=show)

    with single_exceptions():
        result = trio.run(main)
    if args.json is not None:
        document = {
            "rp_id": args.rp_id,
            "origin": origin,
            "operation": str(operation),
            "challenge": websafe_encode(result.challenge),
            "response": response_json(result.response),
            "steps": [
                {"step": name, "seconds": seconds} for name, seconds in result.transcript.steps
            ],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    what = "registration" if operation is Operation.REGISTER else "assertion"
    print(f"verified: the relying party {args.rp_id} accepted the {what}", flush=True)
    results = result.response.client_extension_results
    if results:
        print(f"extensions: {json.dumps(dict(results), sort_keys=True)}", flush=True)
    prf = results.prf if results else None
    if prf is not None and prf.results is not None:
        print(f"prf: {bytes(prf.results.first).hex()}", flush=True)
    return 0
