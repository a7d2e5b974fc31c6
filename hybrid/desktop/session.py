"""The desktop (initiator) side of a QR-initiated hybrid transaction, on trio.

``DesktopSession`` owns one QR code: it makes the per-QR identity key and QR secret, gives the
``FIDO:/`` URL to show, then runs the transaction (docs/protocol.md section 1.1 and 15):

1. scan for adverts under ``FFF9``/``FDE2`` through a ``Scanner``, skipping identical repeats, and
   trial-decrypt each with the EID key; the first match wins;
2. connect to ``/cable/connect/<routing id>/<tunnel id>`` on the relay the advert names (or on the
   override base URL), with the ``fido.cable`` subprotocol;
3. run Noise ``KNpsk0`` (message 2 must be 81 bytes) and read the post-handshake message (getInfo);
4. send exactly one CTAP2 request, await its response, send shutdown, linger briefly, close.

Which message may come when (steps 3 and 4, both protocol revisions) is decided by the sans-IO
``hybrid.tunnel.connection.DesktopConnection``; this module moves bytes and deadlines around it and
reports typed progress events (``hybrid.events``) to ``on_event``.

Every wait has a deadline (``Deadlines``), and every failure leaves as a ``PasskeyError`` carrying
the support article's wording (``hybrid.catalogue``). Giving up after the handshake (a deadline,
the caller's cancellation, Ctrl-C, an error) first sends the phone a shutdown message so it can
dismiss its prompt; cancellation then closes the scanner and the socket: nothing keeps running.

The CTAP2 request bytes and the WebAuthn response objects come from the pure functions in
``hybrid.desktop.ctap``; ``register`` and ``sign_in`` tie a session to a ``hybrid.rp.RelyingParty``.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.ctap2 import Info
from fido2.webauthn import (
    AuthenticationResponse,
    CollectedClientData,
    CredentialCreationOptions,
    CredentialRequestOptions,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions,
    RegistrationResponse,
)

from hybrid import events, keys
from hybrid.ble.eid import Eid, decrypt_advert
from hybrid.ble.medium import NoAdapterError, Scanner
from hybrid.ble.seen import SeenAdverts
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
    unsigned_assertion_outputs,
)
from hybrid.desktop.prepare import prepared_scanner
from hybrid.errors import HybridError, ProtocolError
from hybrid.events import EventHandler
from hybrid.qr.payload import GET_ASSERTION, MAKE_CREDENTIAL, QrPayload
from hybrid.session_errors import advert_timeout_error, catalogue_errors, check_relay_url
from hybrid.tunnel.client import Tunnel, TunnelClosedError, next_connection_event, open_tunnel
from hybrid.tunnel.client import _redact as redact_url
from hybrid.tunnel.connection import (
    CtapResponse,
    DesktopConnection,
    HandshakeComplete,
    PostHandshakeReceived,
    TunnelClosed,
    UpdateReceived,
)
from hybrid.tunnel.linking import LinkingInfo
from hybrid.tunnel.messages import PostHandshake
from hybrid.tunnel.urls import connect_url
from hybrid.wire import QR_SECRET_LEN

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# The QR's request-type hint (key 5) for each ceremony.
_QR_REQUEST_TYPE = {Operation.REGISTER: MAKE_CREDENTIAL, Operation.SIGN_IN: GET_ASSERTION}
# How long a desktop that gives up may spend telling the phone (one WebSocket send).
GIVE_UP_TIMEOUT = 1.0
CLIENT_DATA_TYPES = {Operation.REGISTER: "webauthn.create", Operation.SIGN_IN: "webauthn.get"}

Progress = Callable[[str, float], None]
# A CTAP request, or a function building it from the phone's getInfo (``None`` if it sent none):
# what a request asks for (rk, uv, extensions) can depend on what the phone supports.
CtapRequest = bytes | Callable[[Info | None], bytes]


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed for each wait of the desktop (docs/protocol.md 6.4; the article's 60 s)."""

    advert: float = 60.0  # QR shown -> the phone's advert is seen
    tunnel: float = 10.0  # TCP + WebSocket upgrade to the relay
    handshake: float = 10.0  # Noise message 2 and the post-handshake message
    user: float = 60.0  # the person on the phone approving the request
    linger: float = 1.0  # after shutdown: late update messages / the phone's close


@dataclass
class Transcript:
    """What happened during one session, for callers that display or log it.

    Filled in by the session as it goes (``DesktopSession.transcript``): ``steps`` are
    ``(name, seconds)`` pairs, then what the advert and the handshake revealed.
    """

    steps: list[tuple[str, float]] = field(default_factory=list)
    uuid16: int | None = None
    routing_id: bytes | None = None
    domain_id: int | None = None
    tunnel_url: str | None = None
    post_handshake: PostHandshake | None = None
    updates: int = 0
    other_adverts: int = 0  # distinct adverts seen that were for another QR code
    linking: list[LinkingInfo] = field(default_factory=list)


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
    """One QR code and the single CTAP transaction it leads to.

    ``operation`` is the ceremony the QR code announces (register or sign in); ``scanner`` the BLE
    medium to find the phone's advert on (``hybrid.ble``). ``relay_url`` (``ws://host:port``)
    replaces the relay the advert names for every tunnel path. ``deadlines`` bounds each wait.
    ``on_event`` receives the typed progress events of ``hybrid.events`` (QR shown, phone found,
    ..., failed); ``progress`` is the older ``(step name, seconds)`` callback, still called.
    ``identity_key``, ``qr_secret`` and ``now`` exist for reproducible tests: by default a fresh
    key and secret and the wall clock's time for the QR timestamp.

    The ``FIDO:/`` URL to show is ``url`` as soon as the object exists; ``make_credential`` /
    ``get_assertion`` (or ``transact`` with raw CTAP bytes) then run the one transaction.
    """

    def __init__(
        self,
        operation: Operation,
        scanner: Scanner,
        *,
        relay_url: str | None = None,
        deadlines: Deadlines | None = None,
        progress: Progress | None = None,
        on_event: EventHandler | None = None,
        identity_key: ec.EllipticCurvePrivateKey | None = None,
        qr_secret: bytes | None = None,
        now: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Make the QR code (``url``) for one ``operation`` to be found on ``scanner``
        (``default_scanner()``: the loopback medium). ``relay_url`` overrides the advert's relay
        and is checked now (``RelayUrlError``, a ``ValueError``, before any QR exists);
        ``ssl_context`` trusts a private ``wss://`` relay; ``deadlines`` bounds each wait;
        ``on_event`` gets ``hybrid.events``; ``progress`` the older ``(step, seconds)`` calls.
        Nothing is opened until ``make_credential`` / ``get_assertion`` / ``transact``.
        """
        self.operation = Operation(operation)
        self.scanner = scanner
        # A relay URL that cannot work fails now, before any QR code exists.
        self.relay_url = check_relay_url(relay_url, self.operation)
        self.ssl_context = ssl_context  # for a wss:// relay (None: the system's trust store)
        self.deadlines = deadlines or Deadlines()
        self.progress = progress
        self.on_event = on_event
        self._identity = identity_key or keys.generate_private_key()
        self._qr_secret = os.urandom(QR_SECRET_LEN) if qr_secret is None else bytes(qr_secret)
        self.qr = QrPayload.create(
            keys.public_key_bytes(self._identity, compressed=True),
            self._qr_secret,
            request_type=_QR_REQUEST_TYPE[self.operation],
            timestamp=int(now()),
        )
        self.url = self.qr.to_url()
        self.transcript = Transcript()
        self.phone_info: Info | None = None  # the phone's getInfo, once the handshake is done
        self._used = False
        self._reported: PasskeyError | None = None

    # ---- high level: one WebAuthn ceremony ----------------------------------------------------

    async def make_credential(
        self, options: PublicKeyCredentialCreationOptions, client_data: CollectedClientData
    ) -> RegistrationResponse:
        """Register: send authenticatorMakeCredential and return the WebAuthn response."""
        with self._reporting_failure():
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
        with self._reporting_failure():
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

    def _emit(self, event: events.Event) -> None:
        if isinstance(event, events.Failed):
            if event.error is self._reported:
                return  # already reported by an inner layer
            self._reported = event.error
        if self.on_event is not None:
            self.on_event(event)

    @contextmanager
    def _reporting_failure(self) -> Iterator[None]:
        try:
            yield
        except PasskeyError as exc:
            self._emit(events.Failed(exc))
            raise

    async def transact(self, ctap_request: CtapRequest) -> bytes:
        """Run the whole hybrid transaction for one CTAP request; the CBOR of a CTAP2_OK reply.

        ``ctap_request`` is the request (command byte + CBOR), or a function that builds it from
        the phone's getInfo once the post-handshake message has arrived.

        Raises ``PasskeyError`` for every failure (including a non-zero CTAP status), after
        reporting it as an ``events.Failed`` event.
        """
        if self._used:
            raise HybridError("a DesktopSession (one QR code) serves exactly one request")
        self._used = True
        with self._reporting_failure():
            return await self._transact(ctap_request)

    async def _transact(self, ctap_request: CtapRequest) -> bytes:
        clock = _Clock(self.progress, self.transcript)
        eid_key = keys.eid_key(self._qr_secret)
        tunnel_id = keys.tunnel_id(self._qr_secret)

        self._emit(events.QrShown(self.url, self.operation, self.deadlines.advert))
        plaintext, eid = await self._find_advert(eid_key)
        clock.step("advert found")
        assert self.transcript.uuid16 is not None
        self._emit(events.PhoneFound(self.transcript.uuid16, eid.tunnel_server_id))
        url = connect_url(
            eid.routing_id, tunnel_id, domain_id=eid.tunnel_server_id, base_url=self.relay_url
        )
        self.transcript.tunnel_url = url
        with catalogue_errors(self.operation, closed_early="the tunnel closed early"):
            async with open_tunnel(
                url, connect_timeout=self.deadlines.tunnel, ssl_context=self.ssl_context
            ) as tunnel:
                clock.step("tunnel connected")
                self._emit(events.TunnelConnected(redact_url(url)))
                return await self._over_tunnel(tunnel, plaintext, ctap_request, clock)

    async def _find_advert(self, eid_key: bytes) -> tuple[bytes, Eid]:
        seen = SeenAdverts()  # bounded: a flood of distinct datagrams cannot grow it (issue 12)
        try:
            with trio.move_on_after(self.deadlines.advert) as scope:
                async with self.scanner.scan() as adverts:
                    async for observed in adverts:
                        # Phones repeat the same advert ~10 times a second: try each value once.
                        if not seen.first_time(observed):
                            continue
                        plaintext = decrypt_advert(eid_key, observed.data)
                        if plaintext is None:
                            if self.transcript.other_adverts == 0:
                                self._emit(events.AdvertForAnotherQrSeen(observed.uuid16))
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
        """Move bytes between the tunnel and a ``DesktopConnection``; deadlines live here.

        Whatever ends this early after the handshake (a deadline, the caller's cancellation,
        Ctrl-C, an error) first tells the phone with a shutdown message, so it can dismiss its
        prompt at once instead of waiting for its own timeout.
        """
        conn = DesktopConnection(
            self._identity, keys.psk(self._qr_secret, eid_plaintext), keys.generate_private_key()
        )
        try:
            return await self._converse(tunnel, conn, ctap_request, clock)
        except BaseException:
            if conn.may_send_shutdown:
                await _give_up(tunnel, conn)
                clock.step("gave up: shutdown sent to the phone")
            raise


    async def _converse(
        self, tunnel: Tunnel, conn: DesktopConnection, ctap_request: CtapRequest, clock: _Clock
    ) -> bytes:
        await tunnel.send(conn.send_handshake())
        post: PostHandshakeReceived | None = None
        with trio.move_on_after(self.deadlines.handshake):
            event = await next_connection_event(tunnel, conn)
            if isinstance(event, HandshakeComplete):
                clock.step("handshake done")
                event = await next_connection_event(tunnel, conn)
            if isinstance(event, TunnelClosed):
                raise self._error(
                    Failure.PROTOCOL_ERROR, "phone closed the tunnel during the handshake"
                )
            assert isinstance(event, PostHandshakeReceived)
            post = event
        if post is None:
            raise self._error(
                Failure.TIMEOUT, f"no handshake answer within {self.deadlines.handshake:g} s"
            )
        self.transcript.post_handshake = post.post_handshake
        clock.step("getInfo received")
        self._emit(events.SecureChannelEstablished(conn.features, conn.revision))
        if post.linking is not None:
            self.transcript.linking.append(post.linking)
        if "ctap" not in conn.features:
            raise self._error(Failure.NOT_SUPPORTED, "the phone does not offer CTAP")
        self.phone_info = parse_info(post.post_handshake.get_info, self._error)
        if callable(ctap_request):
            ctap_request = ctap_request(self.phone_info)

        await tunnel.send(conn.send_request(ctap_request))
        clock.step("request sent")
        self._emit(events.WaitingForUser(self.operation, self.deadlines.user))
        response: CtapResponse | None = None
        with trio.move_on_after(self.deadlines.user) as scope:
            while response is None:
                event = await next_connection_event(tunnel, conn)
                if isinstance(event, UpdateReceived):
                    self._update(event)
                elif isinstance(event, TunnelClosed):
                    # Phones hang up without a CTAP answer when the user dismisses the sheet (11.2).
                    raise self._error(
                        Failure.USER_DECLINED, "the phone closed the tunnel without answering"
                    )
                else:
                    assert isinstance(event, CtapResponse)
                    response = event
        if response is None:
            assert scope.cancelled_caught
            raise self._error(Failure.TIMEOUT, f"no answer within {self.deadlines.user:g} s")
        clock.step("response received")
        self._emit(events.ResponseReceived(response.status))
        await self._shutdown(tunnel, conn)
        if response.status != 0:
            raise error_for_ctap_status(response.status, self.operation)
        return response.body

    def _update(self, event: UpdateReceived) -> None:
        self.transcript.updates += 1
        if event.linking is not None:
            self.transcript.linking.append(event.linking)

    async def _shutdown(self, tunnel: Tunnel, conn: DesktopConnection) -> None:
        """Say "no more requests", then accept late update messages until the phone closes."""
        try:
            shutdown = conn.send_shutdown()
            if shutdown:  # revision 0 has no shutdown message (protocol notes 10.4)
                await tunnel.send(shutdown)
            with trio.move_on_after(self.deadlines.linger):
                while True:
                    event = await next_connection_event(tunnel, conn)
                    if isinstance(event, TunnelClosed):
                        return
                    if isinstance(event, UpdateReceived):
                        self._update(event)
        except (TunnelClosedError, ProtocolError) as exc:
            # The transaction is complete; a messy ending after it changes nothing.
            logger.debug("tunnel ended after the response: %s", exc)


async def _give_up(tunnel: Tunnel, conn: DesktopConnection) -> None:
    """Send shutdown on the way out of a transaction that is being abandoned (even if cancelled)."""
    with trio.CancelScope(shield=True), trio.move_on_after(GIVE_UP_TIMEOUT):
        try:
            shutdown = conn.send_shutdown()
            if shutdown:
                await tunnel.send(shutdown)
        except (HybridError, OSError) as exc:
            logger.debug("could not tell the phone the desktop gave up: %s", exc)


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


class RelyingPartyLike(Protocol):
    """What a ceremony needs from a relying party (``hybrid.rp.RelyingParty`` is one).

    ``begin_*`` return the WebAuthn options and an opaque state that ``complete_*`` verifies the
    response against; ``complete_*`` raise ``PasskeyError`` when the response does not verify.
    """

    rp_id: str
    origin: str

    def begin_registration(self, user_name: str) -> tuple[CredentialCreationOptions, Any]: ...

    def complete_registration(self, state: Any, response: RegistrationResponse) -> object: ...

    def begin_authentication(
        self, user_name: str | None
    ) -> tuple[CredentialRequestOptions, Any]: ...

    def complete_authentication(self, state: Any, response: AuthenticationResponse) -> object: ...


async def register(
    rp: RelyingPartyLike,
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
    _verified(session, rp, "registration", lambda: rp.complete_registration(state, response))
    return CeremonyResult(Operation.REGISTER, options.challenge, response, session.transcript)


async def sign_in(
    rp: RelyingPartyLike,
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
    _verified(session, rp, "assertion", lambda: rp.complete_authentication(state, response))
    return CeremonyResult(Operation.SIGN_IN, options.challenge, response, session.transcript)


def _verified(
    session: DesktopSession, rp: RelyingPartyLike, what: str, verify: Callable[[], object]
) -> None:
    """Run the relying party's check (it raises on failure), reporting ``VerifiedByRelyingParty``
    or ``Failed``, and how long it took."""
    started = time.perf_counter()
    with session._reporting_failure():
        verify()
    session._emit(events.VerifiedByRelyingParty(session.operation, rp.rp_id))
    _step(session, f"relying party verified the {what}", time.perf_counter() - started)


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
