"""Typed progress events of both roles: what a sign-in screen shows while a transaction runs.

Part of the public API. ``DesktopSession``, ``HybridWebAuthnClient`` and ``PhoneSession`` take one
callback, ``on_event``, and call it synchronously (on the thread and trio task running the session)
with one of the small frozen dataclasses below each time the transaction moves on. The callback
must return quickly and must not raise: a display, a log line, a ``trio.MemorySendChannel``'s
``send_nowait``. Events only report; nothing the callback does changes the transaction.

A desktop transaction emits, in this order (some may be absent when it fails early)::

    QrShown -> [AdvertForAnotherQrSeen] -> PhoneFound -> TunnelConnected
      -> SecureChannelEstablished -> WaitingForUser -> ResponseReceived
      -> VerifiedByRelyingParty                      (register() / sign_in() only)

and ``Failed`` instead of the rest as soon as anything goes wrong. A phone transaction emits::

    QrRead -> TunnelOpened -> Advertising -> DesktopConnected -> RequestReceived
      -> AskingUser -> Answered

with ``DesktopStoppedWaiting`` when the desktop sends shutdown or closes the tunnel before the
answer was sent (the prompt is dismissed, nothing more is answered), and ``Failed`` for every other
failure. Every event has a ``message``: one human sentence a simple display can print as is.

Names and fields are stable: new fields are only ever added with a default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hybrid.catalogue import Operation, PasskeyError


@dataclass(frozen=True)
class Event:
    """Base of every progress event. Events are built by the sessions, not by callers; each
    subclass's fields are its constructor's keyword arguments."""

    @property
    def message(self) -> str:
        """One human sentence describing the event (for a plain progress display)."""
        raise NotImplementedError


@dataclass(frozen=True)
class DesktopEvent(Event):
    """Base of the events a desktop (initiator) session reports."""


@dataclass(frozen=True)
class PhoneEvent(Event):
    """Base of the events a phone (authenticator) session reports."""


EventHandler = Callable[[Event], None]
"""The type of ``on_event`` callbacks."""


# ---- desktop ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QrShown(DesktopEvent):
    """The session's ``FIDO:/`` URL is ready to be shown as a QR code; scanning has started.

    ``timeout`` is how many seconds the desktop waits for a phone's advert.
    """

    url: str
    operation: Operation
    timeout: float

    @property
    def message(self) -> str:
        return "Scan this QR code with your phone's camera"


@dataclass(frozen=True)
class AdvertForAnotherQrSeen(DesktopEvent):
    """A hybrid advert was seen that does not decrypt under this QR code's key.

    A phone is nearby, but it scanned another code (or another desktop's session). Reported once,
    for the first such advert; ``uuid16`` is the service UUID it came under.
    """

    uuid16: int

    @property
    def message(self) -> str:
        return "A phone is nearby, but it scanned another QR code"


@dataclass(frozen=True)
class PhoneFound(DesktopEvent):
    """The phone's advert for this QR code arrived: ``domain_id`` names its relay."""

    uuid16: int
    domain_id: int

    @property
    def message(self) -> str:
        return "Phone found nearby; connecting through the relay"


@dataclass(frozen=True)
class TunnelConnected(DesktopEvent):
    """The WebSocket tunnel to the relay is open (``url`` with the tunnel id shortened)."""

    url: str

    @property
    def message(self) -> str:
        return "Connected to the relay"


@dataclass(frozen=True)
class SecureChannelEstablished(DesktopEvent):
    """The Noise handshake succeeded and the phone's post-handshake message (getInfo) arrived.

    ``features`` is what the phone offers (``"ctap"``, ``"dc"``); ``revision`` the tunnel
    protocol revision it speaks (1, or 0 for legacy phones).
    """

    features: tuple[str, ...]
    revision: int

    @property
    def message(self) -> str:
        return "Secure connection to the phone established"


@dataclass(frozen=True)
class WaitingForUser(DesktopEvent):
    """The request was sent; the person on the phone now approves or declines it.

    ``timeout`` is how many seconds the desktop waits for the answer.
    """

    operation: Operation
    timeout: float

    @property
    def message(self) -> str:
        return f"Approve on your phone (waiting up to {self.timeout:g} s)"


@dataclass(frozen=True)
class ResponseReceived(DesktopEvent):
    """The phone answered; ``status`` is the CTAP status byte (0 = success)."""

    status: int

    @property
    def message(self) -> str:
        if self.status == 0:
            return "The phone answered"
        return f"The phone answered with CTAP status 0x{self.status:02X}"


@dataclass(frozen=True)
class VerifiedByRelyingParty(DesktopEvent):
    """The relying party verified the registration or the assertion (``register``/``sign_in``)."""

    operation: Operation
    rp_id: str

    @property
    def message(self) -> str:
        what = "registration" if self.operation is Operation.REGISTER else "sign-in"
        return f"{self.rp_id} verified the {what}"


# ---- phone --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QrRead(PhoneEvent):
    """The ``FIDO:/`` QR code was read and validated; ``operation`` is what the desktop wants."""

    operation: Operation

    @property
    def message(self) -> str:
        return f"QR code read ({self.operation.value})"


@dataclass(frozen=True)
class TunnelOpened(PhoneEvent):
    """The phone's tunnel on the relay is open; ``routing_id`` (3 bytes) goes in the advert."""

    routing_id: bytes

    @property
    def message(self) -> str:
        return "Tunnel open on the relay"


@dataclass(frozen=True)
class Advertising(PhoneEvent):
    """The encrypted advert is on the air; the phone waits ``timeout`` s for the desktop."""

    domain_id: int
    timeout: float

    @property
    def message(self) -> str:
        return f"Advertising to the computer (waiting up to {self.timeout:g} s)"


@dataclass(frozen=True)
class DesktopConnected(PhoneEvent):
    """The desktop's Noise message arrived and the secure channel is up."""

    @property
    def message(self) -> str:
        return "Computer connected"


@dataclass(frozen=True)
class RequestReceived(PhoneEvent):
    """The desktop's one CTAP request arrived (``command`` is the CTAP command byte)."""

    operation: Operation
    command: int

    @property
    def message(self) -> str:
        return f"Request received ({self.operation.value})"


@dataclass(frozen=True)
class AskingUser(PhoneEvent):
    """The authenticator is asking the user; ``timeout`` is how long the phone waits for them."""

    operation: Operation
    timeout: float

    @property
    def message(self) -> str:
        return f"Asking you to approve (waiting up to {self.timeout:g} s)"


@dataclass(frozen=True)
class Answered(PhoneEvent):
    """The CTAP response was sent; ``status`` is its status byte (0 = success)."""

    status: int

    @property
    def message(self) -> str:
        if self.status == 0:
            return "Answered the computer"
        return f"Answered the computer with CTAP status 0x{self.status:02X}"


@dataclass(frozen=True)
class DesktopStoppedWaiting(PhoneEvent):
    """The desktop gave up (sent shutdown, or closed the tunnel) before the answer was sent.

    The prompt is dismissed at once and nothing more is answered; ``reason`` says what arrived.
    """

    reason: str

    @property
    def message(self) -> str:
        return f"The computer stopped waiting ({self.reason})"


# ---- both ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failed(DesktopEvent, PhoneEvent):
    """The transaction failed; ``error`` carries the catalogue title, message and detail."""

    error: PasskeyError = field(compare=False)

    @property
    def message(self) -> str:
        return str(self.error)


DESKTOP_EVENTS: tuple[type[DesktopEvent], ...] = (
    QrShown,
    AdvertForAnotherQrSeen,
    PhoneFound,
    TunnelConnected,
    SecureChannelEstablished,
    WaitingForUser,
    ResponseReceived,
    VerifiedByRelyingParty,
    Failed,
)
PHONE_EVENTS: tuple[type[PhoneEvent], ...] = (
    QrRead,
    TunnelOpened,
    Advertising,
    DesktopConnected,
    RequestReceived,
    AskingUser,
    Answered,
    DesktopStoppedWaiting,
    Failed,
)

__all__ = [
    "DESKTOP_EVENTS",
    "PHONE_EVENTS",
    "AdvertForAnotherQrSeen",
    "Advertising",
    "Answered",
    "AskingUser",
    "DesktopConnected",
    "DesktopEvent",
    "DesktopStoppedWaiting",
    "Event",
    "EventHandler",
    "Failed",
    "PhoneEvent",
    "PhoneFound",
    "QrRead",
    "QrShown",
    "RequestReceived",
    "ResponseReceived",
    "SecureChannelEstablished",
    "TunnelConnected",
    "TunnelOpened",
    "VerifiedByRelyingParty",
    "WaitingForUser",
]
