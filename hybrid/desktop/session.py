"""The desktop (initiator) side of a QR-initiated hybrid transaction, on trio.

``DesktopSession`` owns one QR code: it makes the per-QR identity key and QR secret, gives the
``FIDO:/`` URL to show, then runs the transaction (protocol notes 1.1 and 15):

1. scan for adverts under ``FFF9``/``FDE2`` through a ``Scanner``, skipping identical repeats, and
   trial-decrypt each with the EID key; the first match wins;
2. connect to ``/cable/connect/<routing id>/<tunnel id>`` on the relay the advert names (or on the
   override base URL), with the ``fido.cable`` subprotocol;
3. run Noise ``KNpsk0`` (message 2 must be 81 bytes) and read the post-handshake message (getInfo);
4. send exactly one CTAP2 request, await its response, send shutdown, linger briefly, close.

Every wait has a deadline (``Deadlines``), and every failure leaves as a ``PasskeyError`` carrying
the support article's wording (``hybrid.catalogue``). Cancellation closes the scanner and the
socket: nothing keeps running.

The CTAP2 request bytes and the WebAuthn response objects come from the pure functions in
``hybrid.desktop.ctap``; ``register`` and ``sign_in`` tie a session to a ``hybrid.rp.RelyingParty``.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.ctap2 import Info
from fido2.webauthn import (
    AuthenticationResponse,
    CollectedClientData,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions,
    RegistrationResponse,
)

from hybrid import keys
from hybrid.ble.eid import Eid, decrypt_advert
from hybrid.ble.medium import NoAdapterError, Scanner, ServiceData
from hybrid.catalogue import Failure, Operation, PasskeyError, error_for_ctap_status
from hybrid.desktop.ctap import (
    assertion_extension_results,
    authentication_response,
    get_assertion_request,
    make_credential_request,
    parse_assertion,
    parse_attestation,
    parse_info,
    rp_id_for,
    split_status,
    unsigned_assertion_outputs,
)
from hybrid.desktop.prepare import prepared_scanner
from hybrid.errors import HybridError, ProtocolError
from hybrid.qr.payload import QrPayload
from hybrid.session_errors import advert_timeout_error, catalogue_errors, check_relay_url
from hybrid.tunnel.client import Tunnel, TunnelClosedError, open_tunnel
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.messages import (
    MessageType,
    PostHandshake,
    encode_message,
    parse_message,
    parse_post_handshake,
)
from hybrid.tunnel.noise import Initiator
from hybrid.tunnel.urls import connect_url

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

NOISE_MESSAGE_LEN = 81
QR_SECRET_LEN = 16
REQUEST_TYPES = {Operation.REGISTER: "mc", Operation.SIGN_IN: "ga"}
CLIENT_DATA_TYPES = {Operation.REGISTER: "webauthn.create", Operation.SIGN_IN: "webauthn.get"}

Progress = Callable[[str, float], None]
# A CTAP request, or a function building it from the phone's getInfo (``None`` if it sent none):
# what a request asks for (rk, uv, extensions) can depend on what the phone supports.
CtapRequest = bytes | Callable[[Info | None], bytes]


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed for each wait of the desktop (protocol notes 6.4; the article's 60 s)."""

    advert: float = 60.0  # QR shown -> the phone's advert is seen
    tunnel: float = 10.0  # TCP + WebSocket upgrade to the relay
    handshake: float = 10.0  # Noise message 2 and the post-handshake message
    user: float = 60.0  # the person on the phone approving the request
    linger: float = 1.0  # after shutdown: late update messages / the phone's close


@dataclass
class Transcript:
    """What happened during one session, for callers that display or log it."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    uuid16: int | None = None
    routing_id: bytes | None = None
    domain_id: int | None = None
    tunnel_url: str | None = None
    post_handshake: PostHandshake | None = None
    updates: int = 0
    other_adverts: int = 0  # distinct adverts seen that were for another QR code


class _Clock:
    def __init__(self, progress: Progress | None, transcript: Transcript) -> None:
        self._progress = progress
        self._transcript = transcript
        self._last = trio.current_time()

    def step(self, name: str) -> None:
        now = trio.current_time()
        elapsed, self._last = now - self._last, now
        self._transcript.steps.append((name, elapsed))
        if self._progress is not None:
            self._progress(name, elapsed)


class DesktopSession:
    """One QR code and the single CTAP transaction it leads to."""

    def __init__(
        self,
        operation: Operation,
        scanner: Scanner,
        *,
        relay_url: str | None = None,
        deadlines: Deadlines | None = None,
        progress: Progress | None = None,
        identity_key: ec.EllipticCurvePrivateKey | None = None,
        qr_secret: bytes | None = None,
        now: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.operation = Operation(operation)
        self.scanner = scanner
        # A relay URL that cannot work fails now, before any QR code exists.
        self.relay_url = check_relay_url(relay_url, self.operation)
        self.ssl_context = ssl_context  # for a wss:// relay (None: the system's trust store)
        self.deadlines = deadlines or Deadlines()
        self.progress = progress
        self._identity = identity_key or keys.generate_private_key()
        self._qr_secret = os.urandom(QR_SECRET_LEN) if qr_secret is None else bytes(qr_secret)
        self.qr = QrPayload.create(
            keys.public_key_bytes(self._identity, compressed=True),
            self._qr_secret,
            request_type=REQUEST_TYPES[self.operation],
            timestamp=int(now()),
        )
        self.url = self.qr.to_url()
        self.transcript = Transcript()
        self.phone_info: Info | None = None  # the phone's getInfo, once the handshake is done
        self._used = False

    # ---- high level: one WebAuthn ceremony ----------------------------------------------------

    async def make_credential(
        self, options: PublicKeyCredentialCreationOptions, client_data: CollectedClientData
    ) -> RegistrationResponse:
        """Register: send authenticatorMakeCredential and return the WebAuthn response."""
        rp_id = rp_id_for(options, client_data.origin)

        def request(info: Info | None) -> bytes:
            return make_credential_request(
                client_data.hash, options, self._error, rp_id=rp_id, info=info
            )

        body = await self.transact(request)
        return parse_attestation(
            body, client_data, self._error, options=options, info=self.phone_info
        )

    async def get_assertion(
        self, options: PublicKeyCredentialRequestOptions, client_data: CollectedClientData
    ) -> AuthenticationResponse:
        """Sign in: send authenticatorGetAssertion and return the WebAuthn response."""
        rp_id = rp_id_for(options, client_data.origin)

        def request(info: Info | None) -> bytes:
            return get_assertion_request(
                client_data.hash, options, self._error, rp_id=rp_id, info=info
            )

        body = await self.transact(request)
        assertion = parse_assertion(body, self._error, options)
        extensions = assertion_extension_results(
            options, unsigned_assertion_outputs(body, self._error), self._error
        )
        return authentication_response(assertion, client_data, self._error, extensions)

    # ---- the transaction ----------------------------------------------------------------------

    def _error(self, failure: Failure, detail: str = "") -> PasskeyError:
        return PasskeyError(failure, self.operation, detail)

    async def transact(self, ctap_request: CtapRequest) -> bytes:
        """Run the whole hybrid transaction for one CTAP request; the CBOR of a CTAP2_OK reply.

        ``ctap_request`` is the request (command byte + CBOR), or a function that builds it from
        the phone's getInfo once the post-handshake message has arrived.

        Raises ``PasskeyError`` for every failure (including a non-zero CTAP status).
        """
        if self._used:
            raise HybridError("a DesktopSession (one QR code) serves exactly one request")
        self._used = True
        clock = _Clock(self.progress, self.transcript)
        eid_key = keys.eid_key(self._qr_secret)
        tunnel_id = keys.tunnel_id(self._qr_secret)

        plaintext, eid = await self._find_advert(eid_key)
        clock.step("advert found")
        url = connect_url(
            eid.routing_id, tunnel_id, domain_id=eid.tunnel_server_id, base_url=self.relay_url
        )
        self.transcript.tunnel_url = url
        with catalogue_errors(self.operation, closed_early="the tunnel closed early"):
            async with open_tunnel(
                url, connect_timeout=self.deadlines.tunnel, ssl_context=self.ssl_context
            ) as tunnel:
                clock.step("tunnel connected")
                return await self._over_tunnel(tunnel, plaintext, ctap_request, clock)

    async def _find_advert(self, eid_key: bytes) -> tuple[bytes, Eid]:
        seen: set[ServiceData] = set()
        try:
            with trio.move_on_after(self.deadlines.advert) as scope:
                async with self.scanner.scan() as adverts:
                    async for observed in adverts:
                        # Phones repeat the same advert ~10 times a second: try each value once.
                        if observed in seen:
                            continue
                        seen.add(observed)
                        plaintext = decrypt_advert(eid_key, observed.data)
                        if plaintext is None:
                            self.transcript.other_adverts += 1
                            continue
                        self.transcript.uuid16 = observed.uuid16
                        eid = Eid.parse(plaintext)
                        self.transcript.routing_id = eid.routing_id
                        self.transcript.domain_id = eid.tunnel_server_id
                        return plaintext, eid
        except NoAdapterError as exc:
            raise self._error(Failure.NO_BLE_ADAPTER, str(exc)) from None
        if scope.cancelled_caught:
            raise advert_timeout_error(
                self.operation, self.deadlines.advert, self.transcript.other_adverts
            )
        raise self._error(Failure.NO_BLE_ADAPTER, "the BLE scanner stopped")

    async def _over_tunnel(
        self, tunnel: Tunnel, eid_plaintext: bytes, ctap_request: CtapRequest, clock: _Clock
    ) -> bytes:
        psk = keys.psk(self._qr_secret, eid_plaintext)
        initiator = Initiator.qr(self._identity, psk)
        await tunnel.send(initiator.write_message())
        with trio.move_on_after(self.deadlines.handshake) as scope:
            try:
                message = await tunnel.receive()
                if len(message) != NOISE_MESSAGE_LEN:
                    raise self._error(
                        Failure.PROTOCOL_ERROR,
                        f"Noise message 2 is {len(message)} bytes, expected {NOISE_MESSAGE_LEN}",
                    )
                crypter = Crypter.from_handshake(initiator.read_message(message))
                clock.step("handshake done")
                post = parse_post_handshake(crypter.decrypt_first(await tunnel.receive()))
            except TunnelClosedError as exc:
                raise self._error(
                    Failure.PROTOCOL_ERROR, f"phone closed the tunnel during the handshake: {exc}"
                ) from None
        if scope.cancelled_caught:
            raise self._error(
                Failure.TIMEOUT, f"no handshake answer within {self.deadlines.handshake:g} s"
            )
        self.transcript.post_handshake = post
        clock.step("getInfo received")
        if "ctap" not in post.features:
            raise self._error(Failure.NOT_SUPPORTED, "the phone does not offer CTAP")
        revision0 = post.legacy_revision0
        self.phone_info = parse_info(post.get_info, self._error)
        if callable(ctap_request):
            ctap_request = ctap_request(self.phone_info)

        def frame(kind: MessageType, payload: bytes = b"") -> bytes:
            # Revision 0 phones use bare CTAP messages and no shutdown (protocol notes 10.4).
            return payload if revision0 else encode_message(kind, payload)

        await tunnel.send(crypter.encrypt(frame(MessageType.CTAP, ctap_request)))
        clock.step("request sent")
        response: bytes | None = None
        with trio.move_on_after(self.deadlines.user) as scope:
            try:
                while response is None:
                    plaintext = crypter.decrypt(await tunnel.receive())
                    if revision0:
                        response = plaintext
                        break
                    kind, payload = parse_message(plaintext)
                    if kind == MessageType.CTAP:
                        response = payload
                    elif kind == MessageType.UPDATE:
                        self.transcript.updates += 1
                    else:
                        raise self._error(
                            Failure.PROTOCOL_ERROR, f"phone sent a {kind.name} message"
                        )
            except TunnelClosedError:
                # Phones hang up without a CTAP answer when the user dismisses the sheet (11.2).
                raise self._error(
                    Failure.USER_DECLINED, "the phone closed the tunnel without answering"
                ) from None
        if response is None:
            assert scope.cancelled_caught
            raise self._error(Failure.TIMEOUT, f"no answer within {self.deadlines.user:g} s")
        clock.step("response received")
        if not revision0:
            await self._shutdown(tunnel, crypter, frame(MessageType.SHUTDOWN))
        status, body = split_status(response, self._error)
        if status != 0:
            raise error_for_ctap_status(status, self.operation)
        return body

    async def _shutdown(self, tunnel: Tunnel, crypter: Crypter, shutdown: bytes) -> None:
        """Say "no more requests", then accept late update messages until the phone closes."""
        try:
            await tunnel.send(crypter.encrypt(shutdown))
            with trio.move_on_after(self.deadlines.linger):
                while True:
                    kind, _ = parse_message(crypter.decrypt(await tunnel.receive()))
                    if kind == MessageType.UPDATE:
                        self.transcript.updates += 1
        except (TunnelClosedError, ProtocolError) as exc:
            # The transaction is complete; a messy ending after it changes nothing.
            logger.debug("tunnel ended after the response: %s", exc)


# ---- whole ceremonies against a relying party -------------------------------------------------


@dataclass
class CeremonyResult:
    """A verified ceremony: the challenge, the WebAuthn response and the session's transcript."""

    operation: Operation
    challenge: bytes
    response: RegistrationResponse | AuthenticationResponse
    transcript: Transcript


def client_data_for(operation: Operation, challenge: bytes, origin: str) -> CollectedClientData:
    """The clientDataJSON a browser would build for this ceremony."""
    return CollectedClientData.create(
        type=CLIENT_DATA_TYPES[Operation(operation)], challenge=challenge, origin=origin
    )


async def register(
    rp: Any,
    user_name: str,
    session: DesktopSession,
    *,
    on_url: Callable[[str], None] | None = None,
    origin: str | None = None,
) -> CeremonyResult:
    """Registration: RP options -> phone over hybrid -> RP verification (raises on failure)."""
    creation, state = rp.begin_registration(user_name)
    options = creation.public_key
    client_data = client_data_for(Operation.REGISTER, options.challenge, origin or rp.origin)
    response = await _scanning_then_shown(
        session, on_url, lambda: session.make_credential(options, client_data)
    )
    started = time.perf_counter()
    rp.complete_registration(state, response)
    _step(session, "relying party verified the registration", time.perf_counter() - started)
    return CeremonyResult(Operation.REGISTER, options.challenge, response, session.transcript)


async def sign_in(
    rp: Any,
    user_name: str | None,
    session: DesktopSession,
    *,
    on_url: Callable[[str], None] | None = None,
    origin: str | None = None,
) -> CeremonyResult:
    """Sign-in: RP options -> phone over hybrid -> RP verification of the assertion."""
    request, state = rp.begin_authentication(user_name)
    options = request.public_key
    client_data = client_data_for(Operation.SIGN_IN, options.challenge, origin or rp.origin)
    response = await _scanning_then_shown(
        session, on_url, lambda: session.get_assertion(options, client_data)
    )
    started = time.perf_counter()
    rp.complete_authentication(state, response)
    _step(session, "relying party verified the assertion", time.perf_counter() - started)
    return CeremonyResult(Operation.SIGN_IN, options.challenge, response, session.transcript)


async def _scanning_then_shown(
    session: DesktopSession,
    on_url: Callable[[str], None] | None,
    ceremony: Callable[[], Awaitable[_T]],
) -> _T:
    """Open the scanner, then show the QR code, then run: never a QR for a flow that cannot work
    (a busy loopback port or a missing adapter fails first, as "No compatible device found")."""
    async with prepared_scanner(session.scanner, session.operation) as opened:
        session.scanner = opened
        if on_url is not None:
            on_url(session.url)
        return await ceremony()


def _step(session: DesktopSession, name: str, elapsed: float) -> None:
    session.transcript.steps.append((name, elapsed))
    if session.progress is not None:
        session.progress(name, elapsed)
