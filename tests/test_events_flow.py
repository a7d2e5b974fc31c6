"""Typed progress events from real transactions: a relay on 127.0.0.1, the loopback BLE medium.

Each role's ``on_event`` callback must see the documented sequence (``hybrid.events``), the
"another QR code" advert must be told apart from no advert at all, and a desktop that gives up
must make the phone dismiss its prompt (the approver is cancelled) and report that the computer
stopped waiting.
"""

from __future__ import annotations

from pathlib import Path

import trio

from hybrid import events
from hybrid.ble.loopback import LoopbackMedium
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession, register
from hybrid.phone import (
    Approval,
    CredentialStore,
    PhoneDeadlines,
    PhoneSession,
    SoftwareAuthenticator,
    auto_approver,
)
from hybrid.rp import RelyingParty

FAST = Deadlines(advert=5, tunnel=3, handshake=3, user=5, linger=0.5)
PHONE_FAST = PhoneDeadlines(desktop=5, request=3, user=5, linger=0.5)


async def run_both(desktop_run, phone_run) -> dict[str, object]:
    outcome: dict[str, object] = {}

    async def run(name: str, fn) -> None:
        try:
            outcome[name] = await fn()
        except PasskeyError as exc:
            outcome[name] = exc

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "phone", phone_run)
            nursery.start_soon(run, "desktop", desktop_run)
    return outcome


async def test_both_roles_report_the_documented_sequence(
    relay, ble_port: int, desktop_dir: Path, phone_dir: Path
) -> None:
    medium = LoopbackMedium(ble_port)
    rp = RelyingParty("example.com", "https://example.com", desktop_dir)
    desktop_events: list[events.Event] = []
    phone_events: list[events.Event] = []
    session = DesktopSession(
        Operation.REGISTER,
        medium.scanner(),
        relay_url=relay.base_url,
        deadlines=FAST,
        on_event=desktop_events.append,
    )
    with CredentialStore(phone_dir) as store:
        phone = PhoneSession(
            session.url,
            SoftwareAuthenticator(store, auto_approver()),
            medium.advertiser(),
            relay_url=relay.base_url,
            deadlines=PHONE_FAST,
            on_event=phone_events.append,
        )
        outcome = await run_both(lambda: register(rp, "alice", session), phone.run)
    assert not isinstance(outcome["desktop"], Exception), outcome

    assert [type(e) for e in desktop_events] == [
        events.QrShown,
        events.PhoneFound,
        events.TunnelConnected,
        events.SecureChannelEstablished,
        events.WaitingForUser,
        events.ResponseReceived,
        events.VerifiedByRelyingParty,
    ]
    shown, found, connected, secure, waiting, response, verified = desktop_events
    assert shown == events.QrShown(session.url, Operation.REGISTER, 5.0)
    assert found.uuid16 == 0xFFF9 and found.domain_id == 0
    assert connected.url.startswith(relay.base_url + "/cable/connect/")
    assert session.url not in connected.url and "…" in connected.url  # tunnel id shortened
    assert secure == events.SecureChannelEstablished(("ctap",), 1)
    assert waiting == events.WaitingForUser(Operation.REGISTER, 5.0)
    assert response == events.ResponseReceived(0)
    assert verified == events.VerifiedByRelyingParty(Operation.REGISTER, "example.com")

    assert [type(e) for e in phone_events] == [
        events.QrRead,
        events.TunnelOpened,
        events.Advertising,
        events.DesktopConnected,
        events.RequestReceived,
        events.AskingUser,
        events.Answered,
    ]
    assert phone_events[0] == events.QrRead(Operation.REGISTER)
    assert len(phone_events[1].routing_id) == 3
    assert phone_events[4] == events.RequestReceived(Operation.REGISTER, 0x01)
    assert phone_events[-1] == events.Answered(0)


async def test_an_advert_for_another_qr_code_is_reported_then_the_timeout(
    relay, ble_port: int, phone_dir: Path
) -> None:
    medium = LoopbackMedium(ble_port)
    scanned = DesktopSession(Operation.SIGN_IN, medium.scanner())  # the QR the phone scanned
    desktop_events: list[events.Event] = []
    waiting = DesktopSession(
        Operation.SIGN_IN,
        medium.scanner(),
        relay_url=relay.base_url,
        deadlines=Deadlines(advert=1.5),
        on_event=desktop_events.append,
    )
    with CredentialStore(phone_dir) as store:
        phone = PhoneSession(
            scanned.url,
            SoftwareAuthenticator(store, auto_approver()),
            medium.advertiser(),
            relay_url=relay.base_url,
            deadlines=PhoneDeadlines(desktop=2),
        )
        outcome = await run_both(lambda: waiting.transact(b"\x04"), phone.run)
    assert isinstance(outcome["desktop"], PasskeyError)
    assert outcome["desktop"].failure is Failure.TIMEOUT
    kinds = [type(e) for e in desktop_events]
    assert kinds == [events.QrShown, events.AdvertForAnotherQrSeen, events.Failed]
    assert desktop_events[1] == events.AdvertForAnotherQrSeen(0xFFF9)
    assert desktop_events[-1].error is outcome["desktop"]
    assert waiting.transcript.other_adverts == 1  # one phone, one advert value, repeated


async def test_desktop_giving_up_dismisses_the_phones_prompt(
    relay, ble_port: int, desktop_dir: Path, phone_dir: Path
) -> None:
    medium = LoopbackMedium(ble_port)
    rp = RelyingParty("example.com", "https://example.com", desktop_dir)
    asked = trio.Event()
    dismissed: list[float] = []

    async def person_who_never_answers(_request) -> Approval:
        asked.set()
        try:
            await trio.sleep_forever()
        finally:
            dismissed.append(trio.current_time())  # the prompt went away (cancelled)
        raise AssertionError("unreachable")

    desktop_events: list[events.Event] = []
    phone_events: list[events.Event] = []
    session = DesktopSession(
        Operation.REGISTER,
        medium.scanner(),
        relay_url=relay.base_url,
        deadlines=Deadlines(advert=5, tunnel=3, handshake=3, user=1, linger=0.5),
        on_event=desktop_events.append,
    )
    with CredentialStore(phone_dir) as store:
        phone = PhoneSession(
            session.url,
            SoftwareAuthenticator(store, person_who_never_answers),
            medium.advertiser(),
            relay_url=relay.base_url,
            deadlines=PhoneDeadlines(desktop=5, request=3, user=30),
            on_event=phone_events.append,
        )
        ended: dict[str, float] = {}

        async def desktop_run():
            try:
                return await register(rp, "alice", session)
            finally:
                ended["desktop"] = trio.current_time()

        async def phone_run():
            try:
                return await phone.run()
            finally:
                ended["phone"] = trio.current_time()

        outcome = await run_both(desktop_run, phone_run)
    assert asked.is_set()
    desktop, phone_error = outcome["desktop"], outcome["phone"]
    assert isinstance(desktop, PasskeyError) and desktop.failure is Failure.TIMEOUT
    assert isinstance(phone_error, PasskeyError)
    assert phone_error.failure is Failure.SESSION_EXPIRED and phone_error.title == "Session Expired"
    assert [type(e) for e in desktop_events][-2:] == [events.WaitingForUser, events.Failed]
    assert [type(e) for e in phone_events][-3:] == [
        events.AskingUser,
        events.DesktopStoppedWaiting,
        events.Failed,
    ]
    assert phone_events[-2] == events.DesktopStoppedWaiting(
        "it sent shutdown while you were deciding"
    )
    assert len(dismissed) == 1
    # The phone is done at most a second after the desktop, not after its own 30 s.
    assert ended["phone"] - ended["desktop"] < 1.0
