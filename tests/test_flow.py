"""End to end: desktop and phone as trio tasks over the loopback BLE medium and a real relay.

Each test runs the real code on both sides: UDP adverts on 127.0.0.1, WebSockets through the relay
started by the ``relay`` fixture, Noise, the Crypter, the software authenticator and python-fido2's
relying party. Failures must end in the support article's catalogue entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from fido2 import cbor

from hybrid.ble.loopback import LoopbackMedium
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession, register, sign_in
from hybrid.phone import (
    Approval,
    CredentialStore,
    PhoneDeadlines,
    PhoneSession,
    SoftwareAuthenticator,
    auto_approver,
    declining_approver,
)
from hybrid.qr.payload import QrPayload
from hybrid.rp import RelyingParty

RP_ID = "example.com"
ORIGIN = "https://example.com"
FAST = Deadlines(advert=5, tunnel=3, handshake=3, user=5, linger=0.5)
PHONE_FAST = PhoneDeadlines(desktop=5, request=3, user=5, linger=0.5)


def phone_authenticator(data_dir: Path, approver=None) -> SoftwareAuthenticator:
    return SoftwareAuthenticator(CredentialStore(data_dir), approver or auto_approver())


async def ceremony(
    operation: Operation,
    rp: RelyingParty,
    authenticator,
    medium: LoopbackMedium,
    relay_url: str,
    *,
    desktop_relay_url: str | None = None,
    phone_relay_url: str | None = None,
    deadlines: Deadlines = FAST,
    phone_deadlines: PhoneDeadlines = PHONE_FAST,
    user: str | None = "alice",
):
    """Run one ceremony; return (desktop result or error, phone result or error)."""
    session = DesktopSession(
        operation, medium.scanner(), relay_url=desktop_relay_url or relay_url, deadlines=deadlines
    )
    phone = PhoneSession(
        session.url,
        authenticator,
        medium.advertiser(),
        relay_url=phone_relay_url or relay_url,
        deadlines=phone_deadlines,
    )
    outcome: dict[str, object] = {}

    async def run_phone() -> None:
        try:
            outcome["phone"] = await phone.run()
        except PasskeyError as exc:
            outcome["phone"] = exc

    async def run_desktop() -> None:
        try:
            if operation is Operation.REGISTER:
                outcome["desktop"] = await register(rp, user, session)
            else:
                outcome["desktop"] = await sign_in(rp, user, session)
        except PasskeyError as exc:
            outcome["desktop"] = exc

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_phone)
            nursery.start_soon(run_desktop)
    return outcome["desktop"], outcome["phone"]


def failure_of(result: object) -> Failure:
    assert isinstance(result, PasskeyError), f"expected a PasskeyError, got {result!r}"
    return result.failure


@pytest.fixture
def medium(ble_port: int) -> LoopbackMedium:
    return LoopbackMedium(ble_port)


@pytest.fixture
def rp(desktop_dir: Path) -> RelyingParty:
    return RelyingParty(RP_ID, ORIGIN, desktop_dir)


async def test_register_then_sign_in_is_verified_by_the_relying_party(
    relay, medium, rp, phone_dir
) -> None:
    phone = phone_authenticator(phone_dir)
    registered, phone_result = await ceremony(Operation.REGISTER, rp, phone, medium, relay.base_url)
    assert not isinstance(registered, Exception), registered
    assert phone_result.status == 0 and phone_result.command == 0x01
    assert registered.response.authenticator_attachment == "cross-platform"
    assert len(rp.credentials_for("alice")) == 1

    signed_in, phone_result = await ceremony(Operation.SIGN_IN, rp, phone, medium, relay.base_url)
    assert not isinstance(signed_in, Exception), signed_in
    assert phone_result.status == 0 and phone_result.command == 0x02
    assert signed_in.response.raw_id == registered.response.raw_id
    assert rp.sign_count(signed_in.response.raw_id) >= 1
    names = [name for name, _ in signed_in.transcript.steps]
    assert names[0] == "advert found" and names[-1] == "relying party verified the assertion"
    await wait_for_relay_to_drain(relay)


async def wait_for_relay_to_drain(relay) -> None:
    with trio.fail_after(3):
        while relay.live_tunnels():
            await trio.sleep(0.02)


async def test_sign_in_with_a_phone_that_has_no_matching_passkey(
    relay, medium, rp, phone_dir, tmp_path
) -> None:
    await ceremony(Operation.REGISTER, rp, phone_authenticator(phone_dir), medium, relay.base_url)
    other_phone = phone_authenticator(tmp_path / "other-phone")
    desktop, phone = await ceremony(Operation.SIGN_IN, rp, other_phone, medium, relay.base_url)
    assert failure_of(desktop) is Failure.NO_CREDENTIAL
    assert desktop.title == "Passkey is not found on this device"
    assert phone.status == 0x2E  # the phone did answer: CTAP2_ERR_NO_CREDENTIALS


@pytest.mark.parametrize(
    ("operation", "title"),
    [
        (Operation.REGISTER, "Passkey Set Up Canceled"),
        (Operation.SIGN_IN, "Passkey Not Found or Canceled"),
    ],
)
async def test_user_declines_on_the_phone(relay, medium, rp, phone_dir, operation, title) -> None:
    if operation is Operation.SIGN_IN:
        await ceremony(
            Operation.REGISTER, rp, phone_authenticator(phone_dir), medium, relay.base_url
        )
    declining = phone_authenticator(phone_dir, declining_approver())
    desktop, _ = await ceremony(operation, rp, declining, medium, relay.base_url)
    assert failure_of(desktop) is Failure.USER_DECLINED
    assert desktop.title == title


async def test_phone_that_never_answers_hits_the_desktop_deadline(
    relay, medium, rp, phone_dir
) -> None:
    async def never(_request) -> Approval:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    silent = phone_authenticator(phone_dir, never)
    deadlines = Deadlines(advert=5, tunnel=3, handshake=3, user=1, linger=0.5)
    start = trio.current_time()
    desktop, phone = await ceremony(
        Operation.REGISTER, rp, silent, medium, relay.base_url, deadlines=deadlines
    )
    assert failure_of(desktop) is Failure.TIMEOUT
    assert desktop.title == "Passkey Request Timed Out"
    assert trio.current_time() - start < 5
    # The desktop hung up, so the phone abandons the prompt instead of waiting for its own deadline.
    assert failure_of(phone) in (Failure.USER_DECLINED, Failure.TIMEOUT)
    await wait_for_relay_to_drain(relay)


async def test_desktop_with_relay_down_says_passkey_unavailable(
    relay, medium, rp, phone_dir
) -> None:
    dead = await dead_relay_url()
    desktop, phone = await ceremony(
        Operation.REGISTER,
        rp,
        phone_authenticator(phone_dir),
        medium,
        relay.base_url,
        desktop_relay_url=dead,
        deadlines=Deadlines(advert=5, tunnel=2, handshake=1, user=1, linger=0.2),
        phone_deadlines=PhoneDeadlines(desktop=1),
    )
    assert failure_of(desktop) is Failure.RELAY_UNREACHABLE
    assert desktop.title == "Passkey Unavailable"
    assert failure_of(phone) is Failure.TIMEOUT  # no desktop ever joined its tunnel


async def test_phone_with_relay_down_says_passkey_unavailable(medium, phone_dir) -> None:
    dead = await dead_relay_url()
    session = DesktopSession(Operation.SIGN_IN, medium.scanner(), relay_url=dead)
    phone = PhoneSession(session.url, phone_authenticator(phone_dir), medium.advertiser(),
                         relay_url=dead)  # fmt: skip
    with pytest.raises(PasskeyError) as caught:
        await phone.run()
    assert caught.value.failure is Failure.RELAY_UNREACHABLE
    assert caught.value.title == "Passkey Unavailable"


async def dead_relay_url() -> str:
    """A ws:// URL on 127.0.0.1 where nothing listens."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"ws://127.0.0.1:{port}"


class Tampering:
    """The real authenticator, with one bit of its assertion signature flipped on the way out."""

    def __init__(self, inner: SoftwareAuthenticator) -> None:
        self.inner = inner

    def get_info(self) -> bytes:
        return self.inner.get_info()

    async def handle(self, request: bytes) -> bytes:
        response = await self.inner.handle(request)
        fields = cbor.decode(response[1:])
        signature = bytearray(fields[3])
        signature[-1] ^= 0x01
        fields[3] = bytes(signature)
        return response[:1] + cbor.encode(fields)


async def test_tampered_assertion_fails_verification(relay, medium, rp, phone_dir) -> None:
    phone = phone_authenticator(phone_dir)
    await ceremony(Operation.REGISTER, rp, phone, medium, relay.base_url)
    desktop, _ = await ceremony(Operation.SIGN_IN, rp, Tampering(phone), medium, relay.base_url)
    assert failure_of(desktop) is Failure.VERIFICATION_FAILED
    assert desktop.title == "Verification failed"


async def test_registering_the_same_phone_twice_is_excluded(relay, medium, rp, phone_dir) -> None:
    phone = phone_authenticator(phone_dir)
    first, _ = await ceremony(Operation.REGISTER, rp, phone, medium, relay.base_url)
    assert not isinstance(first, Exception), first
    again, phone_result = await ceremony(Operation.REGISTER, rp, phone, medium, relay.base_url)
    assert failure_of(again) is Failure.EXCLUDED
    assert again.title == "Passkey already registered for this device"
    assert phone_result.status == 0x19


async def test_no_usable_ble_adapter(relay, medium, rp, ble_port) -> None:
    async with medium.scanner().scan():  # somebody else holds the medium's port
        session = DesktopSession(Operation.SIGN_IN, medium.scanner(), relay_url=relay.base_url)
        with pytest.raises(PasskeyError) as caught:
            await session.transact(b"\x02")
    assert caught.value.failure is Failure.NO_BLE_ADAPTER
    assert caught.value.title == "No compatible device found"


async def test_no_advert_in_time_is_a_timeout_and_frees_the_medium(relay, medium) -> None:
    session = DesktopSession(
        Operation.SIGN_IN,
        medium.scanner(),
        relay_url=relay.base_url,
        deadlines=Deadlines(advert=0.3),
    )
    with pytest.raises(PasskeyError) as caught:
        await session.transact(b"\x02")
    assert caught.value.failure is Failure.TIMEOUT
    async with medium.scanner().scan():  # the port was released
        pass


async def test_cancelling_the_desktop_leaves_nothing_running(relay, medium, rp, phone_dir) -> None:
    async def hold(_request) -> Approval:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    session = DesktopSession(Operation.REGISTER, medium.scanner(), relay_url=relay.base_url)
    phone = PhoneSession(session.url, phone_authenticator(phone_dir, hold), medium.advertiser(),
                         relay_url=relay.base_url)  # fmt: skip
    phone_outcome: list[object] = []

    async def run_phone() -> None:
        try:
            phone_outcome.append(await phone.run())
        except PasskeyError as exc:
            phone_outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_phone)
        with trio.move_on_after(1.0) as scope:
            await register(rp, "alice", session)
        assert scope.cancelled_caught
    # The desktop's cancellation closed its socket, so the phone gave up and the relay is empty.
    assert isinstance(phone_outcome[0], PasskeyError)
    await wait_for_relay_to_drain(relay)
    async with medium.scanner().scan():
        pass


async def test_desktop_qr_and_ctap_request_follow_the_deployed_shape(
    relay, medium, rp, phone_dir
) -> None:
    seen: list[bytes] = []

    class Recording:
        def __init__(self, inner) -> None:
            self.inner = inner

        def get_info(self) -> bytes:
            return self.inner.get_info()

        async def handle(self, request: bytes) -> bytes:
            seen.append(request)
            return await self.inner.handle(request)

    session = DesktopSession(Operation.REGISTER, medium.scanner(), relay_url=relay.base_url)
    qr = QrPayload.from_url(session.url)
    assert (qr.tunnel_domains, qr.state_assisted, qr.request_type, qr.key6) == (
        2,
        False,
        "mc",
        None,
    )
    assert qr.timestamp is not None
    assert sorted(qr.to_map()) == [0, 1, 2, 3, 4, 5]
    recorder = Recording(phone_authenticator(phone_dir))
    await ceremony(Operation.REGISTER, rp, recorder, medium, relay.base_url)
    request = seen[0]
    assert request[0] == 0x01
    params = cbor.decode(request[1:])
    assert cbor.encode(params) == request[1:]  # canonical
    assert params[2] == {"id": RP_ID, "name": RP_ID}
    assert set(params[3]) == {"id", "name", "displayName"}
    assert params[4] == [{"alg": -7, "type": "public-key"}]
    assert params[7] == {"rk": True, "uv": True}
    assert 8 not in params and 9 not in params  # no PIN/UV auth


async def test_phone_deadline_for_the_user_answers_timed_out(relay, medium, rp, phone_dir) -> None:
    async def never(_request) -> Approval:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    desktop, phone = await ceremony(
        Operation.REGISTER,
        rp,
        phone_authenticator(phone_dir, never),
        medium,
        relay.base_url,
        phone_deadlines=PhoneDeadlines(desktop=5, request=3, user=0.5, linger=0.5),
    )
    assert phone.status == 0x2F  # CTAP2_ERR_USER_ACTION_TIMEOUT, sent to the desktop
    assert failure_of(desktop) is Failure.TIMEOUT
    assert desktop.title == "Passkey Request Timed Out"
