"""``HybridWebAuthnClient`` driven exactly like python-fido2's examples drive ``Fido2Client``.

The app side is synchronous python-fido2 code (``Fido2Server`` + client). The phone and the relay
run in a background thread on trio; the phone "scans" the QR by reading the URL the client shows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from fido2.client import ClientError
from fido2.server import Fido2Server

from hybrid.ble.loopback import LoopbackMedium
from hybrid.catalogue import Failure, PasskeyError
from hybrid.desktop import Deadlines
from hybrid.phone import (
    CredentialStore,
    PhoneDeadlines,
    PhoneSession,
    SoftwareAuthenticator,
    auto_approver,
    declining_approver,
)
from hybrid.webauthn_client import HybridWebAuthnClient


class PhoneThread:
    """A relay and a phone that answers every URL put in ``urls``, on trio in a thread."""

    def __init__(self, medium: LoopbackMedium, data_dir: Path) -> None:
        self.medium = medium
        self.data_dir = data_dir
        self.urls: queue.Queue[str | None] = queue.Queue()
        self.approver = auto_approver()
        self.results: list[object] = []
        self._relay_url: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def __enter__(self) -> PhoneThread:
        self._thread.start()
        self.relay_url = self._relay_url.get(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.urls.put(None)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    async def _main(self) -> None:
        from relay.server import RelayConfig, serve

        async with trio.open_nursery() as nursery:
            relay = await nursery.start(serve, RelayConfig(host="127.0.0.1", port=0))
            self._relay_url.put(relay.base_url)
            with CredentialStore(self.data_dir) as store:
                while (url := await trio.to_thread.run_sync(self.urls.get)) is not None:
                    authenticator = SoftwareAuthenticator(store, self.approver)
                    phone = PhoneSession(
                        url,
                        authenticator,
                        self.medium.advertiser(),
                        relay_url=relay.base_url,
                        deadlines=PhoneDeadlines(desktop=5, request=3, user=5, linger=0.5),
                    )
                    try:
                        self.results.append(await phone.run())
                    except PasskeyError as exc:
                        self.results.append(exc)
            nursery.cancel_scope.cancel()


@pytest.fixture
def phone(ble_port: int, phone_dir: Path) -> Iterator[PhoneThread]:
    with PhoneThread(LoopbackMedium(ble_port), phone_dir) as running:
        yield running


def hybrid_client(phone: PhoneThread) -> HybridWebAuthnClient:
    return HybridWebAuthnClient(
        "https://example.com",
        phone.medium.scanner,
        relay_url=phone.relay_url,
        on_url=phone.urls.put,  # the "camera": the phone reads the QR the client shows
        deadlines=Deadlines(advert=5, tunnel=3, handshake=3, user=5, linger=0.5),
    )


def test_register_and_authenticate_like_the_fido2_examples(phone: PhoneThread) -> None:
    client = hybrid_client(phone)
    server = Fido2Server({"id": "example.com", "name": "Example RP"}, attestation="none")
    user = {"id": b"user_id", "name": "A. User"}

    create_options, state = server.register_begin(
        user, user_verification="discouraged", authenticator_attachment="cross-platform"
    )
    result = client.make_credential(create_options["publicKey"])
    auth_data = server.register_complete(state, result)
    credentials = [auth_data.credential_data]
    assert result.authenticator_attachment == "cross-platform"

    request_options, state = server.authenticate_begin(credentials, user_verification="discouraged")
    selection = client.get_assertion(request_options["publicKey"])
    response = selection.get_response(0)
    server.authenticate_complete(state, credentials, response)
    assert response.raw_id == credentials[0].credential_id
    assert response.response.user_handle == b"user_id"


def test_declined_request_raises_client_error_caused_by_the_catalogue_error(
    phone: PhoneThread,
) -> None:
    phone.approver = declining_approver()
    client = hybrid_client(phone)
    server = Fido2Server({"id": "example.com", "name": "Example RP"}, attestation="none")
    create_options, _ = server.register_begin({"id": b"u", "name": "u"})
    with pytest.raises(ClientError) as caught:
        client.make_credential(create_options["publicKey"])
    assert isinstance(caught.value.cause, PasskeyError)
    assert caught.value.cause.failure is Failure.USER_DECLINED
    assert caught.value.cause.title == "Passkey Set Up Canceled"


def test_event_cancels_the_request(phone: PhoneThread) -> None:
    client = HybridWebAuthnClient(
        "https://example.com",
        phone.medium.scanner,
        relay_url=phone.relay_url,
        on_url=lambda url: None,  # nobody scans this QR
    )
    server = Fido2Server({"id": "example.com", "name": "Example RP"}, attestation="none")
    request_options, _ = server.authenticate_begin([])
    event = threading.Event()
    threading.Timer(0.3, event.set).start()
    with pytest.raises(ClientError) as caught:
        client.get_assertion(request_options["publicKey"], event=event)
    assert caught.value.code == ClientError.ERR.TIMEOUT
