"""The portal's only door to the desktop side of hybrid: one QR code, one phone ceremony.

Everything the web pages need from ``hybrid.desktop`` goes through this module, so that changes
to the desktop's API (typed progress events, new error causes) touch nothing else in the portal:

* ``PhoneSettings`` — relay URL, BLE backend (loopback medium port or bleak) and deadlines;
* ``PhoneCeremony(settings, operation)`` — makes the ``FIDO:/`` URL the page shows as a QR code;
  ``await check()`` finds, before any QR is shown, what would make the flow fail at once (relay
  down: "Passkey Unavailable"; BLE medium unusable: "No compatible device found");
  ``await make_credential(...)`` / ``await get_assertion(...)`` run the transaction and return
  python-fido2's responses, or raise ``hybrid.catalogue.PasskeyError``;
* ``PhoneStatus`` — what the page says while it runs, in the article's words. With the typed
  progress events of ``hybrid.events`` (issue 9) ``status_for_event`` turns them into statuses;
  a desktop without them reports named steps, which ``status_for_step`` maps the same way.
"""

from __future__ import annotations

import errno
import importlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from urllib.parse import urlparse

import trio
from fido2.webauthn import (
    AuthenticationResponse,
    CollectedClientData,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions,
    RegistrationResponse,
)

from hybrid.ble.medium import Scanner
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession, client_data_for

_events: ModuleType | None
try:  # the typed progress events (issue 9); older desktops only report step names
    _events = importlib.import_module("hybrid.events")
except ImportError:  # pragma: no cover - depends on the desktop's version
    _events = None

RELAY_CHECK_TIMEOUT = 3.0


class PhoneStatus(StrEnum):
    """The live status line under the QR code."""

    SCAN = "Scan this code with your phone"
    OTHER_QR = "A phone is nearby, but it scanned another code"
    FOUND = "Phone found"
    APPROVE = "Approve on your phone"
    CHECKING = "Checking your passkey"
    DONE = "Done"
    FAILED = "Failed"


# The desktop's step names (``DesktopSession`` progress) that move the status forward.
_STEP_STATUS = {
    "advert found": PhoneStatus.FOUND,
    "request sent": PhoneStatus.APPROVE,
    "response received": PhoneStatus.CHECKING,
}


def status_for_step(step: str) -> PhoneStatus | None:
    """The status a desktop progress step leads to, or ``None`` if it changes nothing visible."""
    return _STEP_STATUS.get(step)


def status_for_event(event: object) -> PhoneStatus | None:
    """The status a typed desktop event (``hybrid.events``) leads to, or ``None``."""
    if _events is None:
        return None
    table = {
        "QrShown": PhoneStatus.SCAN,
        "AdvertForAnotherQrSeen": PhoneStatus.OTHER_QR,
        "PhoneFound": PhoneStatus.FOUND,
        "WaitingForUser": PhoneStatus.APPROVE,
        "ResponseReceived": PhoneStatus.CHECKING,
    }
    return table.get(type(event).__name__)


@dataclass(frozen=True)
class PhoneSettings:
    """How the portal reaches phones: the relay, the BLE backend and the deadlines."""

    relay_url: str | None = None
    ble: str = "loopback"  # or "bleak" for a real adapter
    ble_port: int | None = None  # loopback medium port (None: $HYBRID_BLE_PORT or 47474)
    timeout: float = 60.0  # for the phone to appear and for the person to approve

    def scanner(self) -> Scanner:
        if self.ble == "bleak":
            from hybrid.ble.bleak_scanner import BleakAdvertScanner

            return BleakAdvertScanner()
        from hybrid.ble.loopback import LoopbackScanner

        return LoopbackScanner(self.ble_port)

    def deadlines(self) -> Deadlines:
        return Deadlines(advert=self.timeout, user=self.timeout)


StatusCallback = Callable[[PhoneStatus], None]


class PhoneCeremony:
    """One QR code on the page and the single phone transaction it leads to."""

    def __init__(self, settings: PhoneSettings, operation: Operation, origin: str) -> None:
        self.settings = settings
        self.operation = Operation(operation)
        self.origin = origin
        self._on_status: StatusCallback | None = None
        reporting: dict[str, object] = (
            {"on_event": self._event} if _events is not None else {"progress": self._progress}
        )
        self._session = DesktopSession(
            self.operation,
            settings.scanner(),
            relay_url=settings.relay_url,
            deadlines=settings.deadlines(),
            **reporting,  # type: ignore[arg-type]
        )
        self.url = self._session.url

    def _progress(self, step: str, seconds: float) -> None:
        self._report(status_for_step(step))

    def _event(self, event: object) -> None:
        self._report(status_for_event(event))

    def _report(self, status: PhoneStatus | None) -> None:
        if status is not None and self._on_status is not None:
            self._on_status(status)

    async def check(self) -> None:
        """Refuse, before a QR is shown, a flow that cannot work (``PasskeyError``)."""
        if self.settings.relay_url:
            await _check_relay(self.settings.relay_url, self.operation)
        if self.settings.ble == "loopback":
            _check_loopback_port(self.settings, self.operation)

    def client_data(self, challenge: bytes) -> CollectedClientData:
        return client_data_for(self.operation, challenge, self.origin)

    async def make_credential(
        self, options: PublicKeyCredentialCreationOptions, on_status: StatusCallback
    ) -> RegistrationResponse:
        self._on_status = on_status
        on_status(PhoneStatus.SCAN)
        return await self._session.make_credential(options, self.client_data(options.challenge))

    async def get_assertion(
        self, options: PublicKeyCredentialRequestOptions, on_status: StatusCallback
    ) -> AuthenticationResponse:
        self._on_status = on_status
        on_status(PhoneStatus.SCAN)
        return await self._session.get_assertion(options, self.client_data(options.challenge))


async def _check_relay(relay_url: str, operation: Operation) -> None:
    parsed = urlparse(relay_url)
    secure = parsed.scheme in ("wss", "https")
    if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.hostname:
        raise PasskeyError(Failure.RELAY_UNREACHABLE, operation, f"bad relay URL {relay_url!r}")
    port = parsed.port or (443 if secure else 80)
    try:
        with trio.fail_after(RELAY_CHECK_TIMEOUT):
            stream = await trio.open_tcp_stream(parsed.hostname, port)
            await stream.aclose()
    except (OSError, trio.TooSlowError) as exc:
        raise PasskeyError(
            Failure.RELAY_UNREACHABLE,
            operation,
            f"cannot reach the relay at {parsed.hostname}:{port}: {exc or 'timed out'}",
        ) from None


def _check_loopback_port(settings: PhoneSettings, operation: Operation) -> None:
    from hybrid.ble.loopback import HOST, resolve_port
    from hybrid.ble.medium import NoAdapterError

    try:
        port = resolve_port(settings.ble_port)
    except NoAdapterError as exc:
        raise PasskeyError(Failure.NO_BLE_ADAPTER, operation, str(exc)) from None
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((HOST, port))
    except OSError as exc:
        reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise PasskeyError(
            Failure.NO_BLE_ADAPTER, operation, f"loopback BLE medium {HOST}:{port}: {reason}"
        ) from None
    finally:
        probe.close()
