"""The desktop against a scripted phone (built from the protocol primitives) over a real relay.

The scripted phone lets each test misbehave in one precise way (foreign adverts, a suffix, hanging
up, a short Noise message, late updates) while everything else stays real.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
import trio
from fido2 import cbor

from hybrid import keys
from hybrid.ble.eid import Eid, encrypt_advert
from hybrid.ble.memory import MemoryMedium
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession
from hybrid.desktop.ctap import get_assertion_request
from hybrid.qr.payload import QrPayload
from hybrid.tunnel.client import Tunnel, TunnelClosedError, open_tunnel
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.messages import (
    MessageType,
    encode_message,
    encode_post_handshake,
    parse_message,
)
from hybrid.tunnel.noise import Responder
from hybrid.tunnel.urls import new_url

FAST = Deadlines(advert=3, tunnel=2, handshake=2, user=2, linger=0.5)
Script = Callable[[Tunnel, bytes, Crypter], Awaitable[None]]


async def scripted_phone(
    url: str,
    relay_url: str,
    medium: MemoryMedium,
    script: Script,
    *,
    uuid16: int = 0xFFF9,
    suffix: bytes = b"",
    noise: bytes | None = None,
) -> None:
    qr = QrPayload.from_url(url)
    tunnel_url = new_url(keys.tunnel_id(qr.qr_secret), base_url=relay_url)
    async with open_tunnel(tunnel_url) as tunnel:
        eid_plaintext = Eid.create(tunnel.routing_id, 0).pack()
        advert = encrypt_advert(keys.eid_key(qr.qr_secret), eid_plaintext)
        while not medium.scanning:
            await trio.sleep(0.01)
        # Other phones nearby, junk, and a foreign advert repeated: all must be skipped.
        for _ in range(3):
            medium.inject(0xFFF9, os.urandom(20))
            medium.inject(0xFDE2, advert[:19])
        async with medium.advertiser().advertise(uuid16, advert + suffix):
            message1 = await tunnel.receive()
        responder = Responder.qr(qr.public_key_point, keys.psk(qr.qr_secret, eid_plaintext))
        responder.read_message(message1)
        message2, result = responder.write_message()
        await tunnel.send(noise if noise is not None else message2)
        await script(tunnel, message2, Crypter.from_handshake(result))


async def run(relay, script: Script, **phone_options) -> tuple[DesktopSession, object]:
    medium = MemoryMedium(interval=0.01)
    session = DesktopSession(
        Operation.SIGN_IN, medium.scanner(), relay_url=relay.base_url, deadlines=FAST
    )
    request = get_assertion_request(b"\x11" * 32, _options(), session._error, rp_id="example.com")
    outcome: list[object] = []

    async def desktop() -> None:
        try:
            outcome.append(await session.transact(request))
        except PasskeyError as exc:
            outcome.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(desktop)
            nursery.start_soon(
                lambda: scripted_phone(session.url, relay.base_url, medium, script, **phone_options)
            )
    return session, outcome[0]


def _options():
    from fido2.webauthn import PublicKeyCredentialRequestOptions

    return PublicKeyCredentialRequestOptions(challenge=b"c" * 32, rp_id="example.com")


def answering(response: bytes, *, late_update: bool = False, seen: list | None = None) -> Script:
    async def script(tunnel: Tunnel, _m2: bytes, crypter: Crypter) -> None:
        await tunnel.send(crypter.encrypt(encode_post_handshake(cbor.encode({1: ["FIDO_2_0"]}))))
        kind, request = parse_message(crypter.decrypt(await tunnel.receive()))
        assert kind is MessageType.CTAP and request[0] == 0x02
        await tunnel.send(crypter.encrypt(encode_message(MessageType.CTAP, response)))
        if late_update:
            await tunnel.send(crypter.encrypt(encode_message(MessageType.UPDATE, cbor.encode({}))))
        kind, _ = parse_message(crypter.decrypt(await tunnel.receive()))
        if seen is not None:
            seen.append(kind)

    return script


async def test_first_matching_advert_wins_under_fde2_with_a_suffix(relay) -> None:
    body = cbor.encode({1: {"id": b"c", "type": "public-key"}, 2: b"a" * 37, 3: b"sig"})
    session, outcome = await run(
        relay, answering(b"\x00" + body), uuid16=0xFDE2, suffix=b"\xa1\x01\x19\x00\x80"
    )
    assert outcome == body
    assert session.transcript.uuid16 == 0xFDE2
    assert session.transcript.routing_id is not None


async def test_desktop_sends_shutdown_and_accepts_late_updates(relay) -> None:
    seen: list[MessageType] = []
    session, outcome = await run(relay, answering(b"\x00\xa0", late_update=True, seen=seen))
    assert outcome == b"\xa0"
    assert seen == [MessageType.SHUTDOWN]
    assert session.transcript.updates == 1


async def test_phone_hanging_up_on_the_request_means_cancelled(relay) -> None:
    async def hang_up(tunnel: Tunnel, _m2: bytes, crypter: Crypter) -> None:
        await tunnel.send(crypter.encrypt(encode_post_handshake(cbor.encode({1: ["FIDO_2_0"]}))))
        await tunnel.receive()  # the request; then the user dismisses the sheet

    _, outcome = await run(relay, hang_up)
    assert isinstance(outcome, PasskeyError)
    assert outcome.failure is Failure.USER_DECLINED
    assert outcome.title == "Passkey Not Found or Canceled"


async def test_noise_message_2_must_be_81_bytes(relay) -> None:
    async def nothing(tunnel: Tunnel, _m2: bytes, _crypter: Crypter) -> None:
        await trio.sleep(1)

    _, outcome = await run(relay, nothing, noise=b"\x04" * 80)
    assert isinstance(outcome, PasskeyError)
    assert outcome.failure is Failure.PROTOCOL_ERROR


async def test_shutdown_from_a_phone_is_a_protocol_error(relay) -> None:
    async def shutdown(tunnel: Tunnel, _m2: bytes, crypter: Crypter) -> None:
        await tunnel.send(crypter.encrypt(encode_post_handshake(cbor.encode({1: ["FIDO_2_0"]}))))
        await tunnel.receive()
        await tunnel.send(crypter.encrypt(encode_message(MessageType.SHUTDOWN)))
        await trio.sleep(1)

    _, outcome = await run(relay, shutdown)
    assert isinstance(outcome, PasskeyError)
    assert outcome.failure is Failure.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("status", "failure"),
    [(0x27, Failure.USER_DECLINED), (0x2E, Failure.NO_CREDENTIAL), (0x2F, Failure.TIMEOUT)],
)
async def test_ctap_status_maps_to_the_catalogue(relay, status, failure) -> None:
    _, outcome = await run(relay, answering(bytes([status])))
    assert isinstance(outcome, PasskeyError) and outcome.failure is failure


async def test_revision_0_phone_gets_bare_ctap_messages_and_no_shutdown(relay) -> None:
    async def revision0(tunnel: Tunnel, _m2: bytes, crypter: Crypter) -> None:
        post = cbor.encode({1: cbor.encode({1: ["FIDO_2_0"]})})
        zeros = 512 - len(post) - 2
        await tunnel.send(crypter.encrypt(post + bytes(zeros) + zeros.to_bytes(2, "little")))
        request = crypter.decrypt(await tunnel.receive())
        assert request[0] == 0x02  # no type byte in revision 0
        await tunnel.send(crypter.encrypt(b"\x00\xa0"))
        # revision 0 has no shutdown: the desktop just closes
        with pytest.raises(TunnelClosedError):
            await tunnel.receive()

    session, outcome = await run(relay, revision0)
    assert outcome == b"\xa0"
    assert session.transcript.post_handshake.legacy_revision0
