"""
A custom progress display built from the typed events of ``hybrid.events``: what a sign-in screen
shows while the phone is found, connected and approves.

Each event is a small frozen dataclass; the display matches on its type, reads its fields (the
URL to draw, the deadlines to count down, the error to explain) and numbers the steps. It runs the
trio-native API directly: ``register`` then ``sign_in`` with a ``DesktopSession`` each.

    python examples/progress_display.py --with-local-phone

or with ``hybrid-relay --port 8080`` and ``hybrid phone --relay ws://127.0.0.1:8080 --approve
--data-dir /tmp/phone 'FIDO:/...'`` in other terminals. With no phone answering, ``--timeout 2``
shows how a failure is displayed (exit status 1).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from functools import partial

import trio
from _local_phone import LocalPhone, parse_args

from hybrid.catalogue import Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession, default_scanner, register, sign_in
from hybrid.events import (
    AdvertForAnotherQrSeen,
    Event,
    Failed,
    PhoneFound,
    QrShown,
    ResponseReceived,
    SecureChannelEstablished,
    TunnelConnected,
    VerifiedByRelyingParty,
    WaitingForUser,
)
from hybrid.qr.render import render_terminal
from hybrid.rp import RelyingParty

# The steps a sign-in screen walks through, in order, for a "step n of 6" indicator
STEPS = [
    QrShown,
    PhoneFound,
    TunnelConnected,
    SecureChannelEstablished,
    WaitingForUser,
    VerifiedByRelyingParty,
]


class SignInScreen:
    """Turns events into the lines a sign-in screen would show."""

    def __init__(self, local: LocalPhone | None) -> None:
        self.local = local
        self.started = time.monotonic()
        self.failure_shown = False

    def __call__(self, event: Event) -> None:
        elapsed = time.monotonic() - self.started
        match event:
            case QrShown(url=url, timeout=timeout):
                self.started = time.monotonic()
                self.show(1, f"Scan this code with your phone (expires in {timeout:g} s)")
                print(url, flush=True)  # alone on its line: another tool can "scan" it
                print(render_terminal(url), flush=True)
                if self.local is not None:
                    self.local.scan(url)
            case AdvertForAnotherQrSeen():
                self.show(None, "A phone is nearby, but it scanned a different code: rescan")
            case WaitingForUser(timeout=timeout):
                self.show(5, f"Check your phone: approve within {timeout:g} s")
            case ResponseReceived(status=status) if status != 0:
                self.show(None, f"Your phone said no (CTAP 0x{status:02X})")
            case VerifiedByRelyingParty(rp_id=rp_id):
                self.show(6, f"Done: {rp_id} accepted your passkey ({elapsed:.2f} s)")
            case Failed(error=error):
                self.show_failure(error)
            case _ if type(event) in STEPS:
                self.show(STEPS.index(type(event)) + 1, event.message)

    def show_failure(self, error: PasskeyError) -> None:
        # The catalogue's title and message are written for people; detail says what happened.
        self.show(None, f"{error.title}: {error.message}")
        print(f"    (why: {error.detail})", flush=True)
        self.failure_shown = True

    def show(self, step: int | None, text: str) -> None:
        where = f"[{step}/{len(STEPS)}]" if step is not None else "[ ! ]"
        print(f"{where} {text}", flush=True)


def main() -> int:
    args = parse_args(
        "Register and sign in over hybrid with a custom progress display.",
        ("--timeout", {"type": float, "default": 60.0, "help": "seconds per wait (default 60)"}),
    )
    with ExitStack() as stack:
        relay_url, ble_port, local = args.relay, args.ble_port, None
        if args.with_local_phone:
            local = stack.enter_context(LocalPhone(args.ble_port))
            relay_url, ble_port = local.relay_url, local.ble_port
        screen = SignInScreen(local)
        rp = RelyingParty("example.com", "https://example.com")
        deadlines = Deadlines(advert=args.timeout, user=args.timeout)

        def session(operation: Operation) -> DesktopSession:
            return DesktopSession(
                operation,
                default_scanner(ble_port),
                relay_url=relay_url,
                deadlines=deadlines,
                on_event=screen,
            )

        try:
            print("== Register a passkey for alice ==", flush=True)
            trio.run(partial(register, rp, "alice", session(Operation.REGISTER)))
            print("== Sign in as alice ==", flush=True)
            trio.run(partial(sign_in, rp, "alice", session(Operation.SIGN_IN)))
        except PasskeyError as error:
            # Usually already shown by the Failed event; a medium that cannot even be opened
            # fails before the session starts, with no event.
            if not screen.failure_shown:
                screen.show_failure(error)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
