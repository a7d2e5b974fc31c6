"""
An asyncio application that registers a passkey on a phone over hybrid, then signs in with it.

The hybrid sessions run on trio. ``hybrid.desktop.run_trio`` runs one in a worker thread and lets
asyncio code await it, so the application's own loop keeps running meanwhile (here a heartbeat
task stands in for a web server or a GUI). Progress events arrive on the worker thread and are
handed to the loop with ``call_soon_threadsafe``. Cancelling the awaiting task would cancel the
session (the phone is told the computer stopped waiting).

    python examples/asyncio_app.py --with-local-phone

or with ``hybrid-relay --port 8080`` and ``hybrid phone --relay ws://127.0.0.1:8080 --approve
--data-dir /tmp/phone 'FIDO:/...'`` in other terminals.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from functools import partial

from _local_phone import LocalPhone, parse_args

from hybrid.catalogue import Operation, PasskeyError
from hybrid.desktop import DesktopSession, default_scanner, register, run_trio, sign_in
from hybrid.events import Event
from hybrid.qr.render import render_terminal
from hybrid.rp import RelyingParty


async def main() -> int:
    args = parse_args("Register and sign in from an asyncio application, over hybrid.")
    loop = asyncio.get_running_loop()
    with ExitStack() as stack:
        relay_url, ble_port, local = args.relay, args.ble_port, None
        if args.with_local_phone:
            local = stack.enter_context(LocalPhone(args.ble_port))
            relay_url, ble_port = local.relay_url, local.ble_port

        # Events come from the trio worker thread: queue them for the asyncio side.
        events: asyncio.Queue[Event] = asyncio.Queue()

        def on_event(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        async def show_events() -> None:
            while True:
                event = await events.get()
                print(f"  [{type(event).__name__}] {event.message}", flush=True)

        def show_qr(url: str) -> None:
            print(url, flush=True)
            print(render_terminal(url), flush=True)
            if local is not None:
                local.scan(url)

        # The application's own work, which must not stall while the phone is used
        beats = 0

        async def heartbeat() -> None:
            nonlocal beats
            while True:
                await asyncio.sleep(0.05)
                beats += 1

        rp = RelyingParty("example.com", "https://example.com")  # accounts kept in memory
        background = [asyncio.create_task(show_events()), asyncio.create_task(heartbeat())]

        def session(operation: Operation) -> DesktopSession:
            return DesktopSession(
                operation, default_scanner(ble_port), relay_url=relay_url, on_event=on_event
            )

        # Await the trio ceremonies as if they were asyncio coroutines
        # (keyword arguments go through functools.partial, as with trio.run)
        registering = partial(register, on_url=show_qr)
        registered = await run_trio(registering, rp, "alice", session(Operation.REGISTER))
        print("registered:", registered.response.id, flush=True)
        signing_in = partial(sign_in, on_url=show_qr)
        signed_in = await run_trio(signing_in, rp, "alice", session(Operation.SIGN_IN))
        print("signed in:", signed_in.response.id, flush=True)

        await asyncio.sleep(0)  # let the last queued events print
        while not events.empty():
            await asyncio.sleep(0.01)
        for task in background:
            task.cancel()
        print(f"the asyncio loop kept running: {beats} heartbeats meanwhile")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(asyncio.run(main()))
    except PasskeyError as error:  # the catalogue's text, written for people
        raise SystemExit(f"Failed: {error}") from None
