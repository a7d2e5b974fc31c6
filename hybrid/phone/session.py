"""The phone (authenticator) side of a QR-initiated hybrid transaction, on trio.

``PhoneSession`` takes a scanned ``FIDO:/`` payload and serves exactly one CTAP2 request
(protocol notes 1.1 and 15):

1. connect to ``/cable/new/<tunnel id>`` on its relay and read ``X-caBLE-Routing-ID``;
2. build the EID (fresh nonce, routing id, tunnel-domain id), encrypt it and advertise it under
   ``FFF9`` through an ``Advertiser`` until the desktop's Noise message arrives;
3. answer ``KNpsk0``, send the post-handshake message ``{1: getInfo, 3: ["ctap"]}``;
4. hand the one CTAP request to the ``SoftwareAuthenticator`` (which asks the user), send the
   reply, and close. A phone never sends shutdown.

With a relay override (``relay_url``) every tunnel path goes to that base URL and the domain id in
the advert is only informational (0 by default); without it the phone uses the relay of the domain
it operates (``domain_id``). Every wait has a deadline; a desktop that hangs up while the user is
still deciding cancels the prompt.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hybrid import keys
from hybrid.ble.eid import FIDO_SERVICE_UUID16, Eid, encrypt_advert
from hybrid.ble.medium import Advertiser
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.errors import HybridError
from hybrid.qr.payload import QrPayload
from hybrid.session_errors import catalogue_errors, check_relay_url
from hybrid.trio_util import single_exceptions
from hybrid.tunnel.client import (
    Tunnel,
    TunnelClosedError,
    open_tunnel,
)
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.domains import DEFAULT_FALLBACK_DOMAIN_ID, domain_id_for_desktop
from hybrid.tunnel.messages import (
    MessageType,
    encode_message,
    encode_post_handshake,
    parse_message,
)
from hybrid.tunnel.noise import Responder
from hybrid.tunnel.urls import new_url

logger = logging.getLogger(__name__)

MAKE_CREDENTIAL = 0x01
GET_ASSERTION = 0x02
DEFAULT_DOMAIN_ID = 0
CTAP2_ERR_USER_ACTION_TIMEOUT = 0x2F

Progress = Callable[[str, float], None]


class Authenticator:
    """What the phone needs from an authenticator (``SoftwareAuthenticator`` has both)."""

    def get_info(self) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    async def handle(self, request: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class PhoneDeadlines:
    """Seconds allowed for each wait of the phone."""

    tunnel: float = 10.0  # TCP + WebSocket upgrade to the relay
    desktop: float = 60.0  # advertising -> the desktop's Noise message arrives
    request: float = 10.0  # post-handshake sent -> the CTAP request arrives
    user: float = 60.0  # the person approving (the platform's 60 s, protocol notes 6.4)
    linger: float = 1.0  # after the reply: wait for the desktop's shutdown before closing


@dataclass
class PhoneResult:
    """What the phone did: the command it served and the CTAP status it answered with."""

    command: int
    status: int
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def operation(self) -> Operation:
        return _operation_for(self.command)


def _operation_for(command: int | str | None) -> Operation:
    if command in (MAKE_CREDENTIAL, "mc"):
        return Operation.REGISTER
    return Operation.SIGN_IN


class PhoneSession:
    """One scanned QR code and the one request it is used for."""

    def __init__(
        self,
        qr: QrPayload | str,
        authenticator: Any,
        advertiser: Advertiser,
        *,
        relay_url: str | None = None,
        domain_id: int = DEFAULT_DOMAIN_ID,
        fallback_domain_id: int = DEFAULT_FALLBACK_DOMAIN_ID,
        deadlines: PhoneDeadlines | None = None,
        progress: Progress | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Strict validation first: a bad QR must not open any tunnel (protocol notes 3.5).
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

    async def run(self) -> PhoneResult:
        """Serve the one request; ``PasskeyError`` on any failure before the reply was sent."""
        self._last = trio.current_time()
        tunnel_id = keys.tunnel_id(self.qr.qr_secret)
        url = new_url(tunnel_id, domain_id=self.domain_id, base_url=self.relay_url)
        with catalogue_errors(self._operation, closed_early="the desktop went away"):
            async with open_tunnel(
                url, connect_timeout=self.deadlines.tunnel, ssl_context=self.ssl_context
            ) as tunnel:
                self._step("tunnel opened")
                return await self._serve(tunnel)

    async def _serve(self, tunnel: Tunnel) -> PhoneResult:
        eid = Eid.create(tunnel.routing_id, self.domain_id)
        plaintext = eid.pack()
        advert = encrypt_advert(keys.eid_key(self.qr.qr_secret), plaintext)
        message1: bytes | None = None
        async with self.advertiser.advertise(FIDO_SERVICE_UUID16, advert):
            self._step("advertising")
            with trio.move_on_after(self.deadlines.desktop):
                message1 = await tunnel.receive()
        if message1 is None:
            raise self._error(
                Failure.TIMEOUT, f"no desktop connected within {self.deadlines.desktop:g} s"
            )
        responder = Responder.qr(self.qr.public_key_point, keys.psk(self.qr.qr_secret, plaintext))
        responder.read_message(message1)
        message2, result = responder.write_message()
        await tunnel.send(message2)
        crypter = Crypter.from_handshake(result)
        self._step("handshake done")
        await tunnel.send(crypter.encrypt(encode_post_handshake(self.authenticator.get_info())))

        request = await self._receive_request(tunnel, crypter)
        self._step("request received")
        command = request[0] if request else 0
        self._operation = _operation_for(command)
        response = await self._answer(tunnel, crypter, request)
        await tunnel.send(crypter.encrypt(encode_message(MessageType.CTAP, response)))
        self._step("response sent")
        status = response[0] if response else 0xFF
        await self._linger(tunnel, crypter)
        return PhoneResult(command, status, list(self.steps))

    async def _receive_request(self, tunnel: Tunnel, crypter: Crypter) -> bytes:
        with trio.move_on_after(self.deadlines.request):
            while True:
                kind, payload = parse_message(crypter.decrypt(await tunnel.receive()))
                if kind == MessageType.CTAP:
                    return payload
                if kind == MessageType.SHUTDOWN:
                    raise self._error(
                        Failure.USER_DECLINED, "the desktop ended the session without a request"
                    )
                if kind == MessageType.JSON:
                    raise self._error(
                        Failure.NOT_SUPPORTED, "digital-credential requests are not supported"
                    )
                # UPDATE from a desktop: valid, carries nothing for us.
        raise self._error(
            Failure.TIMEOUT, f"no request within {self.deadlines.request:g} s of the handshake"
        )

    async def _answer(self, tunnel: Tunnel, crypter: Crypter, request: bytes) -> bytes:
        """Run the authenticator; give up if the desktop hangs up, send 0x2F after the deadline."""
        outcome: dict[str, Any] = {}

        async def authenticate(cancel: trio.CancelScope) -> None:
            outcome["response"] = await self.authenticator.handle(request)
            cancel.cancel()

        async def watch_tunnel(cancel: trio.CancelScope) -> None:
            # Update messages may arrive at any time; only a hang-up abandons the prompt.
            try:
                while True:
                    parse_message(crypter.decrypt(await tunnel.receive()))
            except TunnelClosedError:
                outcome["gone"] = "the desktop closed the tunnel while the user was deciding"
            except HybridError as exc:
                outcome["gone"] = f"the desktop broke the tunnel: {exc}"
            cancel.cancel()

        with trio.move_on_after(self.deadlines.user) as deadline, single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(authenticate, nursery.cancel_scope)
                nursery.start_soon(watch_tunnel, nursery.cancel_scope)
        if "response" in outcome:
            return outcome["response"]
        if "gone" in outcome:
            raise self._error(Failure.USER_DECLINED, outcome["gone"])
        assert deadline.cancelled_caught
        # Tell the desktop why, rather than hanging up (which it would read as "cancelled").
        self._step(f"user did not answer within {self.deadlines.user:g} s")
        return bytes([CTAP2_ERR_USER_ACTION_TIMEOUT])

    async def _linger(self, tunnel: Tunnel, crypter: Crypter) -> None:
        """Give the desktop a moment to send shutdown, so the reply is surely delivered first."""
        with trio.move_on_after(self.deadlines.linger):
            try:
                while True:
                    kind, _ = parse_message(crypter.decrypt(await tunnel.receive()))
                    if kind == MessageType.SHUTDOWN:
                        return
            except (TunnelClosedError, HybridError) as exc:
                logger.debug("tunnel ended after the reply: %s", exc)
