"""The typed progress events: frozen, documented, each with a human sentence."""

from __future__ import annotations

import dataclasses

import pytest

from hybrid import events
from hybrid.catalogue import Failure, Operation, PasskeyError

SAMPLES: list[events.Event] = [
    events.QrShown("FIDO:/123", Operation.REGISTER, 60.0),
    events.AdvertForAnotherQrSeen(0xFFF9),
    events.PhoneFound(0xFFF9, 0),
    events.TunnelConnected("ws://127.0.0.1:1/cable/connect/abcdef/0123ab…"),
    events.SecureChannelEstablished(("ctap",), 1),
    events.WaitingForUser(Operation.SIGN_IN, 60.0),
    events.ResponseReceived(0),
    events.VerifiedByRelyingParty(Operation.SIGN_IN, "example.com"),
    events.QrRead(Operation.SIGN_IN),
    events.TunnelOpened(b"\x01\x02\x03"),
    events.Advertising(0, 60.0),
    events.DesktopConnected(),
    events.RequestReceived(Operation.REGISTER, 0x01),
    events.AskingUser(Operation.REGISTER, 60.0),
    events.Answered(0x27),
    events.DesktopStoppedWaiting("it sent shutdown"),
    events.Failed(PasskeyError(Failure.TIMEOUT, Operation.SIGN_IN, "no advert")),
]


def test_every_event_class_has_a_sample_and_a_docstring() -> None:
    classes = set(events.DESKTOP_EVENTS) | set(events.PHONE_EVENTS)
    assert {type(e) for e in SAMPLES} == classes
    for cls in classes:
        assert cls.__doc__ and cls.__doc__.strip()
        assert cls.__name__ in events.__all__


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_events_are_frozen_and_describe_themselves(event: events.Event) -> None:
    assert dataclasses.is_dataclass(event)
    assert isinstance(event.message, str) and event.message
    for f in dataclasses.fields(event):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, f.name, None)


def test_roles_are_told_apart_by_base_class() -> None:
    assert isinstance(events.QrShown("u", Operation.SIGN_IN, 1.0), events.DesktopEvent)
    assert not isinstance(events.QrShown("u", Operation.SIGN_IN, 1.0), events.PhoneEvent)
    assert isinstance(events.DesktopStoppedWaiting("x"), events.PhoneEvent)
    failed = events.Failed(PasskeyError(Failure.TIMEOUT, Operation.SIGN_IN))
    assert isinstance(failed, events.DesktopEvent) and isinstance(failed, events.PhoneEvent)


def test_instructions_a_person_reads() -> None:
    assert events.QrShown("u", Operation.SIGN_IN, 60).message == (
        "Scan this QR code with your phone's camera"
    )
    assert events.WaitingForUser(Operation.SIGN_IN, 60.0).message == (
        "Approve on your phone (waiting up to 60 s)"
    )
    error = PasskeyError(Failure.SESSION_EXPIRED, Operation.SIGN_IN)
    assert events.Failed(error).message.startswith("Session Expired: ")
