"""``HybridWebAuthnClient`` driven exactly like python-fido2's examples drive ``Fido2Client``.

The app side is synchronous python-fido2 code (``Fido2Server`` + client). The phone and the relay
run in a background thread on trio; the phone "scans" the QR by reading the URL the client shows.
"""

from __future__ import annotations

import socket
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
from hybrid.phone import declining_approver
from hybrid.webauthn_client import HybridWebAuthnClient
from tests.phone_thread import PhoneThread, hybrid_client


@pytest.fixture
def phone(ble_socket: socket.socket, phone_dir: Path) -> Iterator[PhoneThread]:
    with PhoneThread(LoopbackMedium(sock=ble_socket), phone_dir) as running:
        yield running


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


def test_on_event_reports_progress_and_the_caller_event_tells_the_phone(
    phone: PhoneThread,
) -> None:
    from hybrid import events

    prompting = threading.Event()

    async def person_who_never_answers(_request) -> object:
        prompting.set()
        await trio.sleep_forever()

    phone.approver = person_who_never_answers
    seen: list[events.Event] = []
    client = HybridWebAuthnClient(
        "https://example.com",
        phone.medium.scanner,
        relay_url=phone.relay_url,
        on_url=phone.urls.put,
        on_event=seen.append,
        deadlines=Deadlines(advert=5, tunnel=3, handshake=3, user=20, linger=0.5),
    )
    server = Fido2Server({"id": "example.com", "name": "Example RP"}, attestation="none")
    create_options, _ = server.register_begin({"id": b"u", "name": "u"})
    cancel = threading.Event()

    def cancel_once_the_phone_asks() -> None:
        if prompting.wait(timeout=10):
            cancel.set()

    threading.Thread(target=cancel_once_the_phone_asks, daemon=True).start()
    with pytest.raises(ClientError) as caught:
        client.make_credential(create_options["publicKey"], event=cancel)
    assert caught.value.code == ClientError.ERR.TIMEOUT
    assert [type(e) for e in seen] == [
        events.QrShown,
        events.PhoneFound,
        events.TunnelConnected,
        events.SecureChannelEstablished,
        events.WaitingForUser,
    ]
    # The desktop sent shutdown as the caller cancelled: the phone dismissed its prompt.
    deadline = threading.Event()
    for _ in range(100):
        if phone.results:
            break
        deadline.wait(0.02)
    (result,) = phone.results
    assert isinstance(result, PasskeyError) and result.failure is Failure.SESSION_EXPIRED
    assert "it sent shutdown while you were deciding" in result.detail
