"""python-fido2's ``WebAuthnClient`` over hybrid: use a phone with no other change to an app.

An application that already drives python-fido2 (``client.make_credential(options["publicKey"])``
then ``server.register_complete(...)``; ``client.get_assertion(...).get_response(0)`` then
``server.authenticate_complete(...)``) can swap its ``Fido2Client`` for ``HybridWebAuthnClient``.
Each call shows a ``FIDO:/`` QR code through ``on_url``, runs one ``DesktopSession`` on trio
(synchronously, like every python-fido2 client) and returns python-fido2's usual
``RegistrationResponse`` / ``AssertionSelection``.

Errors follow python-fido2's conventions: a ``ClientError`` whose code mirrors what ``Fido2Client``
raises for the same CTAP outcome, with the catalogue's ``PasskeyError`` as its ``cause``. The
optional ``threading.Event`` cancels the request like it does for ``Fido2Client``; the options'
``timeout`` (milliseconds) bounds the wait for the phone and for the user.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import trio
from fido2.client import (
    AssertionSelection,
    ClientDataCollector,
    ClientError,
    DefaultClientDataCollector,
    WebAuthnClient,
)
from fido2.webauthn import (
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions,
    RegistrationResponse,
)

from hybrid.ble.medium import Scanner
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop.ctap import (
    get_assertion_request,
    make_credential_request,
    parse_assertion,
    parse_attestation,
)
from hybrid.desktop.session import Deadlines, DesktopSession, Progress
from hybrid.trio_util import single_exceptions

EVENT_POLL = 0.05

_CLIENT_ERRORS = {
    Failure.NO_CREDENTIAL: ClientError.ERR.DEVICE_INELIGIBLE,
    Failure.EXCLUDED: ClientError.ERR.DEVICE_INELIGIBLE,
    Failure.TIMEOUT: ClientError.ERR.TIMEOUT,
    Failure.NOT_SUPPORTED: ClientError.ERR.CONFIGURATION_UNSUPPORTED,
    Failure.USER_DECLINED: ClientError.ERR.BAD_REQUEST,  # Fido2Client: OPERATION_DENIED
}


def client_error(error: PasskeyError) -> ClientError:
    """The ``ClientError`` python-fido2 raises for the same outcome, caused by ``error``."""
    return ClientError(_CLIENT_ERRORS.get(error.failure, ClientError.ERR.OTHER_ERROR), error)


class HybridWebAuthnClient(WebAuthnClient):
    """A ``WebAuthnClient`` whose authenticator is a phone reached over the hybrid transport."""

    def __init__(
        self,
        client_data_collector: ClientDataCollector | str,
        scanner: Scanner | Callable[[], Scanner],
        *,
        relay_url: str | None = None,
        on_url: Callable[[str], None] = print,
        deadlines: Deadlines | None = None,
        progress: Progress | None = None,
    ) -> None:
        if isinstance(client_data_collector, str):
            client_data_collector = DefaultClientDataCollector(client_data_collector)
        self._collector = client_data_collector
        self._scanner = scanner
        self._relay_url = relay_url
        self._on_url = on_url
        self._deadlines = deadlines or Deadlines()
        self._progress = progress

    def _session(self, operation: Operation, timeout_ms: int | None) -> DesktopSession:
        deadlines = self._deadlines
        if timeout_ms:
            seconds = timeout_ms / 1000
            deadlines = Deadlines(
                advert=min(deadlines.advert, seconds),
                tunnel=deadlines.tunnel,
                handshake=deadlines.handshake,
                user=min(deadlines.user, seconds),
                linger=deadlines.linger,
            )
        scanner = self._scanner if isinstance(self._scanner, Scanner) else self._scanner()
        return DesktopSession(
            operation,
            scanner,
            relay_url=self._relay_url,
            deadlines=deadlines,
            progress=self._progress,
        )

    def _run(self, session: DesktopSession, request: bytes, event: threading.Event | None) -> bytes:
        async def main() -> bytes | None:
            result: list[bytes] = []
            with single_exceptions():
                async with trio.open_nursery() as nursery:

                    async def watch_event() -> None:
                        while not (event and event.is_set()):
                            await trio.sleep(EVENT_POLL)
                        nursery.cancel_scope.cancel()

                    async def transact() -> None:
                        result.append(await session.transact(request))
                        nursery.cancel_scope.cancel()

                    if event is not None:
                        nursery.start_soon(watch_event)
                    nursery.start_soon(transact)
            return result[0] if result else None

        self._on_url(session.url)
        try:
            body = trio.run(main)
        except PasskeyError as exc:
            raise client_error(exc) from exc
        if body is None:
            raise ClientError(ClientError.ERR.TIMEOUT, "cancelled by the caller's event")
        return body

    def make_credential(
        self,
        options: PublicKeyCredentialCreationOptions | Mapping[str, Any],
        event: threading.Event | None = None,
    ) -> RegistrationResponse:
        """Create a passkey on the phone; python-fido2's ``RegistrationResponse``."""
        options = PublicKeyCredentialCreationOptions.from_dict(options)
        client_data, rp_id = self._collector.collect_client_data(options)
        session = self._session(Operation.REGISTER, options.timeout)
        try:
            request = make_credential_request(
                client_data.hash, options, session._error, rp_id=rp_id
            )
        except PasskeyError as exc:
            raise client_error(exc) from exc
        body = self._run(session, request, event)
        try:
            return parse_attestation(body, client_data, session._error)
        except PasskeyError as exc:
            raise client_error(exc) from exc

    def get_assertion(
        self,
        options: PublicKeyCredentialRequestOptions | Mapping[str, Any],
        event: threading.Event | None = None,
    ) -> AssertionSelection:
        """Sign in with a passkey on the phone; python-fido2's ``AssertionSelection``."""
        options = PublicKeyCredentialRequestOptions.from_dict(options)
        client_data, rp_id = self._collector.collect_client_data(options)
        session = self._session(Operation.SIGN_IN, options.timeout)
        try:
            request = get_assertion_request(client_data.hash, options, session._error, rp_id=rp_id)
        except PasskeyError as exc:
            raise client_error(exc) from exc
        body = self._run(session, request, event)
        try:
            assertion = parse_assertion(body, session._error, options)
        except PasskeyError as exc:
            raise client_error(exc) from exc
        return AssertionSelection(client_data, [assertion])
