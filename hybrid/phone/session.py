"""The phone (authenticator) side of a QR-initiated hybrid transaction, on trio.

``PhoneSession`` takes a scanned ``FIDO:/`` payload and serves exactly one CTAP2 request
(docs/protocol.md section 1.1 and 15):

1. connect to ``/cable/new/<tunnel id>`` on its relay and read ``X-caBLE-Routing-ID``;
2. build the EID (fresh nonce, routing id, tunnel-domain id), encrypt it and advertise it under
   ``FFF9`` through an ``Advertiser`` until the desktop's Noise message arrives;
3. answer ``KNpsk0``, send the post-handshake message ``{1: getInfo, 3: ["ctap"]}``;
4. hand the one CTAP request to the ``SoftwareAuthenticator`` (which asks the user), send the
   reply, and close. A phone never sends shutdown.

With a relay override (``relay_url``) every tunnel path goes to that base URL and the domain id in
the advert is only informational (0 by default); without it the phone uses the relay of the domain
it operates (``domain_id``). Every wait has a deadline.

The transaction rules (which message may come when) are ``hybrid.tunnel.connection``'s
``PhoneConnection``; this module only moves bytes, deadlines and the prompt around it. A desktop
that stops waiting (it sends shutdown, or the tunnel closes) before the reply is sent dismisses the
prompt at once (the authenticator, and so its ``Approver``, is cancelled), nothing more is
answered, and the run ends with the catalogue's "Session Expired".
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2

from hybrid import events, keys
from hybrid.ble.eid import Eid, encrypt_advert
from hybrid.ble.medium import Advertiser
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.errors import HybridError
from hybrid.events import EventHandler
from hybrid.qr.payload import MAKE_CREDENTIAL, QrPayload
from hybrid.session_errors import catalogue_errors, check_relay_url
from hybrid.trio_util import single_exceptions
from hybrid.tunnel.client import (
    Tunnel,
    TunnelClosedError,
    next_connection_event,
    open_tunnel,
)
from hybrid.tunnel.connection import (
    CtapRequest,
    PhoneConnection,
    ShutdownReceived,
    TunnelClosed,
)
from hybrid.tunnel.domains import DEFAULT_FALLBACK_DOMAIN_ID, domain_id_for_desktop
from hybrid.tunnel.urls import new_url
from hybrid.wire import FIDO_SERVICE_UUID16

logger = logging.getLogger(__name__)

DEFAULT_DOMAIN_ID = 0

Progress = Callable[[str, float], None]


class Authenticator(Protocol):
    """What the phone needs from an authenticator (``SoftwareAuthenticator`` is one).

    ``get_info`` is the CBOR getInfo response sent in the post-handshake message; ``handle`` takes
    one CTAP2 request (command byte + CBOR) and returns the reply (status byte + CBOR).
    """

    def get_info(self) -> bytes: ...

    async def handle(self, request: bytes) -> bytes: ...


@dataclass(frozen=True)
class PhoneDeadlines:
    """Seconds allowed for each wait of the phone; every field has the default shown."""

    tunnel: float = 10.0  # TCP + WebSocket upgrade to the relay
    desktop: float = 60.0  # advertising -> the desktop's Noise message arrives
    request: float = 10.0  # post-handshake sent -> the CTAP request arrives
    user: float = 60.0  # the person approving (the platform's 60 s, docs/protocol.md section 6.4)
    linger: float = 1.0  # after the reply: wait for the desktop's shutdown before closing


@dataclass
class PhoneResult:
    """What the phone did: the command it served and the CTAP status it answered with.

    ``command`` is the CTAP command byte, ``status`` the status byte sent back (0 = success),
    ``steps`` the ``(name, seconds)`` pairs the session went through.
    """

    command: int
    status: int
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def operation(self) -> Operation:
        return _operation_for(self.command)


def _operation_for(command: int | str | None) -> Operation:
    if command in (Ctap2.CMD.MAKE_CREDENTIAL, MAKE_CREDENTIAL):
        return Operation.REGISTER
    return Operation.SIGN_IN


class PhoneSession:
    """One scanned QR code and the one request it is used for.

    ``qr`` is the desktop's ``FIDO:/`` URL or its parsed ``QrPayload`` (validated strictly before
    anything touches the network); ``authenticator`` answers the CTAP request (for example
    ``SoftwareAuthenticator``, which asks its ``Approver``); ``advertiser`` puts the encrypted EID
    on the BLE medium. ``relay_url`` replaces the relay of ``domain_id`` for every tunnel path;
    ``fallback_domain_id`` is advertised instead when the QR says the desktop does not know
    ``domain_id``. ``deadlines`` bounds each wait. ``on_event`` receives the typed progress
    events of ``hybrid.events`` (QR read, ..., answered, desktop stopped waiting, failed);
    ``progress`` is the older ``(step name, seconds)`` callback, still called.
    """

    def __init__(
        self,
        qr: QrPayload | str,
        authenticator: Authenticator,
        advertiser: Advertiser,
        *,
        relay_url: str | None = None,
        domain_id: int = DEFAULT_DOMAIN_ID,
        fallback_domain_id: int = DEFAULT_FALLBACK_DOMAIN_ID,
        deadlines: PhoneDeadlines | None = None,
        progress: Progress | None = None,
        on_event: EventHandler | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Validate ``qr`` at once (``QrError`` for a malformed or unsupported code, before any
        network use) and prepare to serve it with ``authenticator`` over ``advertiser``;
        ``relay_url`` is checked now too. ``run()`` then serves the one transaction.
        """
        # Strict validation first: a bad QR must not open any tunnel (docs/protocol.md section 3.5).
        self.qr = QrPayload.from_url(qr) if isinstance(qr, str) else qr
        self.authenticator = authenticator
        self.advertiser = advertiser
        self._operation = _operation_for(self.qr.effective_request_type)
        self.relay_url = check_relay_url(relay_url, self._operation)
        self.ssl_context = ssl_context  # for a wss:// relay (None: the system's trust store)
        self.domain_id = domain_id_for_desktop(
            domain_id, fallback_domain_id, self.qr.known_domain_count
        )
        self.deadlines = deadlines or PhoneDeadlines()
        self.progress = progress
        self.on_event = on_event
        self.steps: list[tuple[str, float]] = []
        self._operation = _operation_for(self.qr.effective_request_type)
        self._last = 0.0

    def _step(self, name: str) -> None:
        now = trio.current_time()
        elapsed, self._last = now - self._last, now
        self.steps.append((name, elapsed))
        if self.progress is not None:
            self.progress(name, elapsed)

    def _error(self, failure: Failure, detail: str) -> PasskeyError:
        return PasskeyError(failure, self._operation, detail)

    def _emit(self, event: events.Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    async def run(self) -> PhoneResult:
        """Serve the one request; ``PasskeyError`` on any failure before the reply was sent.

        A desktop that stops waiting (shutdown, or the tunnel closes) before the reply is sent
        dismisses the prompt at once and ends the run with "Session Expired".
        """
        self._last = trio.current_time()
        self._emit(events.QrRead(self._operation))
        try:
            tunnel_id = keys.tunnel_id(self.qr.qr_secret)
            url = new_url(tunnel_id, domain_id=self.domain_id, base_url=self.relay_url)
            with catalogue_errors(self._operation, closed_early="the desktop went away"):
                async with open_tunnel(
                    url, connect_timeout=self.deadlines.tunnel, ssl_context=self.ssl_context
                ) as tunnel:
                    self._step("tunnel opened")
                    return await self._serve(tunnel)
        except PasskeyError as exc:
            self._emit(events.Failed(exc))
            raise


    def _stopped_waiting(self, reason: str) -> PasskeyError:
        self._step(f"the desktop stopped waiting ({reason})")
        self._emit(events.DesktopStoppedWaiting(reason))
        return self._error(Failure.SESSION_EXPIRED, f"the computer stopped waiting: {reason}")

    async def _serve(self, tunnel: Tunnel) -> PhoneResult:
        eid = Eid.create(tunnel.routing_id, self.domain_id)
        self._emit(events.TunnelOpened(tunnel.routing_id))
        plaintext = eid.pack()
        advert = encrypt_advert(keys.eid_key(self.qr.qr_secret), plaintext)
        conn = PhoneConnection(
            self.qr.public_key_point,
            keys.psk(self.qr.qr_secret, plaintext),
            keys.generate_private_key(),
        )
        message1: bytes | None = None
        async with self.advertiser.advertise(FIDO_SERVICE_UUID16, advert):
            self._step("advertising")
            self._emit(events.Advertising(self.domain_id, self.deadlines.desktop))
            with trio.move_on_after(self.deadlines.desktop):
                message1 = await tunnel.receive()
        if message1 is None:
            raise self._error(
                Failure.TIMEOUT, f"no desktop connected within {self.deadlines.desktop:g} s"
            )
        conn.receive_data(message1)
        await tunnel.send(conn.send_handshake())
        self._step("handshake done")
        self._emit(events.DesktopConnected())
        await tunnel.send(conn.send_post_handshake(self.authenticator.get_info()))

        request = await self._receive_request(tunnel, conn)
        self._step("request received")
        self._operation = _operation_for(request.command)
        self._emit(events.RequestReceived(self._operation, request.command))
        response = await self._answer(tunnel, conn, request)
        await tunnel.send(conn.send_response(response))
        self._step("response sent")
        status = response[0]
        self._emit(events.Answered(status))
        await self._linger(tunnel, conn)
        return PhoneResult(request.command, status, list(self.steps))

    async def _receive_request(self, tunnel: Tunnel, conn: PhoneConnection) -> CtapRequest:
        with trio.move_on_after(self.deadlines.request):
            while True:
                event = await next_connection_event(tunnel, conn)
                if isinstance(event, CtapRequest):
                    return event
                if isinstance(event, ShutdownReceived):
                    raise self._stopped_waiting("it ended the session without a request")
                if isinstance(event, TunnelClosed):
                    raise self._stopped_waiting("it closed the tunnel before sending a request")
                # UpdateReceived from a desktop: valid, carries nothing for us. JSON requests
                # cannot arrive: this phone does not offer "dc".
        raise self._error(
            Failure.TIMEOUT, f"no request within {self.deadlines.request:g} s of the handshake"
        )

    async def _answer(self, tunnel: Tunnel, conn: PhoneConnection, request: CtapRequest) -> bytes:
        """Run the authenticator while watching the tunnel; 0x2F after the user deadline.

        The desktop's shutdown (or a closed tunnel) cancels the authenticator, which dismisses
        whatever prompt it shows (``Approver`` callbacks are cancelled), and nothing is answered.
        """
        if request.cbor_error is not None:
            # Not strict CTAP2-canonical CBOR: answer as CTAP authenticators do, without asking.
            logger.info("CTAP request rejected with 0x12: %s", request.cbor_error)
            return bytes([CtapError.ERR.INVALID_CBOR])
        outcome: dict[str, Any] = {}

        async def authenticate(cancel: trio.CancelScope) -> None:
            outcome["response"] = await self.authenticator.handle(request.data)
            cancel.cancel()

        async def watch_tunnel(cancel: trio.CancelScope) -> None:
            # Update messages may arrive at any time; only shutdown or a hang-up ends the prompt.
            try:
                while True:
                    event = await next_connection_event(tunnel, conn)
                    if isinstance(event, ShutdownReceived):
                        outcome["gone"] = "it sent shutdown while you were deciding"
                        break
                    if isinstance(event, TunnelClosed):
                        outcome["gone"] = "it closed the tunnel while you were deciding"
                        break
            except HybridError as exc:
                outcome["broken"] = exc
            cancel.cancel()

        self._emit(events.AskingUser(self._operation, self.deadlines.user))
        with trio.move_on_after(self.deadlines.user) as deadline, single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(authenticate, nursery.cancel_scope)
                nursery.start_soon(watch_tunnel, nursery.cancel_scope)
        if "response" in outcome:
            response: bytes = outcome["response"]
            return response if response else bytes([CtapError.ERR.OTHER])
        if "gone" in outcome:
            raise self._stopped_waiting(outcome["gone"])
        if "broken" in outcome:
            raise self._error(
                Failure.PROTOCOL_ERROR, f"the desktop broke the tunnel: {outcome['broken']}"
            )
        assert deadline.cancelled_caught
        # Tell the desktop why, rather than hanging up (which it would read as "cancelled").
        self._step(f"user did not answer within {self.deadlines.user:g} s")
        return bytes([CtapError.ERR.USER_ACTION_TIMEOUT])

    async def _linger(self, tunnel: Tunnel, conn: PhoneConnection) -> None:
        """Give the desktop a moment to send shutdown, so the reply is surely delivered first."""
        with trio.move_on_after(self.deadlines.linger):
            try:
                while True:
                    event = await next_connection_event(tunnel, conn)
                    if isinstance(event, ShutdownReceived | TunnelClosed):
                        return
            except (TunnelClosedError, HybridError) as exc:
                logger.debug("tunnel ended after the reply: %s", exc)
