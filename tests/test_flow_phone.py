"""The phone against a scripted desktop (built from the protocol primitives) over a real relay."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from fido2 import cbor

from hybrid import keys
from hybrid.ble.eid import Eid, decrypt_advert
from hybrid.ble.memory import MemoryMedium
from hybrid.catalogue import Failure, PasskeyError
from hybrid.phone import (
    CredentialStore,
    PhoneDeadlines,
    PhoneSession,
    SoftwareAuthenticator,
    auto_approver,
)
from hybrid.qr.errors import QrError
from hybrid.qr.payload import QrPayload
from hybrid.tunnel.client import TunnelClosedError, open_tunnel
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.messages import MessageType, encode_message, parse_message
from hybrid.tunnel.noise import Initiator
from hybrid.tunnel.urls import connect_url

GET_INFO_REQUEST = b"\x04"


async def test_phone_advertises_answers_one_request_and_closes_without_shutdown(
    relay, tmp_path: Path
) -> None:
    identity = keys.generate_private_key()
    secret = bytes(range(16))
    qr = QrPayload.create(keys.public_key_bytes(identity, compressed=True), secret, timestamp=1)
    medium = MemoryMedium(interval=0.01)
    authenticator = SoftwareAuthenticator(CredentialStore(tmp_path), auto_approver())
    phone = PhoneSession(
        qr.to_url(), authenticator, medium.advertiser(), relay_url=relay.base_url, domain_id=0
    )
    seen: dict[str, object] = {}

    async def desktop() -> None:
        async with medium.scanner().scan() as adverts:
            observed = await adverts.receive()
            plaintext = decrypt_advert(keys.eid_key(secret), observed.data)
        assert observed.uuid16 == 0xFFF9 and len(observed.data) == 20
        assert plaintext is not None
        eid = Eid.parse(plaintext)
        assert eid.tunnel_server_id == 0
        url = connect_url(eid.routing_id, keys.tunnel_id(secret), base_url=relay.base_url)
        async with open_tunnel(url) as tunnel:
            initiator = Initiator.qr(identity, keys.psk(secret, plaintext))
            await tunnel.send(initiator.write_message())
            message2 = await tunnel.receive()
            assert len(message2) == 81
            crypter = Crypter.from_handshake(initiator.read_message(message2))
            sent_before = len(medium.sent)
            await trio.sleep(0.1)
            seen["adverts after handshake"] = len(medium.sent) - sent_before
            post = cbor.decode(crypter.decrypt_first(await tunnel.receive()))
            seen["post-handshake"] = post
            await tunnel.send(crypter.encrypt(encode_message(MessageType.CTAP, GET_INFO_REQUEST)))
            kind, response = parse_message(crypter.decrypt(await tunnel.receive()))
            seen["response"] = (kind, response)
            await tunnel.send(crypter.encrypt(encode_message(MessageType.SHUTDOWN)))
            with pytest.raises(TunnelClosedError):
                await tunnel.receive()  # the phone closes; it never sends shutdown

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(desktop)
            result = await phone.run()
    assert result.status == 0
    assert seen["adverts after handshake"] == 0
    assert seen["post-handshake"] == {1: authenticator.get_info(), 3: ["ctap"]}
    assert seen["response"] == (MessageType.CTAP, b"\x00" + authenticator.get_info())


async def test_phone_without_a_desktop_times_out(relay, tmp_path: Path) -> None:
    identity = keys.generate_private_key()
    qr = QrPayload.create(keys.public_key_bytes(identity), bytes(16), timestamp=1)
    phone = PhoneSession(
        qr,
        SoftwareAuthenticator(CredentialStore(tmp_path), auto_approver()),
        MemoryMedium().advertiser(),
        relay_url=relay.base_url,
        deadlines=PhoneDeadlines(desktop=0.3),
    )
    with pytest.raises(PasskeyError) as caught:
        await phone.run()
    assert caught.value.failure is Failure.TIMEOUT


@pytest.mark.parametrize("url", ["https://example.com", "FIDO:/12a", "FIDO:/1234"])
def test_phone_rejects_a_bad_qr_before_any_network(url: str, tmp_path: Path) -> None:
    with pytest.raises(QrError):
        PhoneSession(
            url,
            SoftwareAuthenticator(CredentialStore(tmp_path), auto_approver()),
            MemoryMedium().advertiser(),
            relay_url="ws://127.0.0.1:9",
        )
