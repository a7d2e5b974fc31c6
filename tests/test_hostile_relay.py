"""Both roles against a relay that misbehaves on purpose (issue 12, points 1-3).

A hostile relay (``hostile_relay``) accepts TCP on 127.0.0.1 and then never answers, answers with
something that never ends, sends noise, dribbles a ``101``, or sends a ``101`` that breaks RFC 6455.
The tunnel client must give up within its own deadline with "Passkey Unavailable" and a detail
naming what the relay did, as a library call and through ``hybrid phone`` / ``hybrid desktop``
processes (exit 10, no traceback). The relay deadline is injected (1 s) so each case takes about a
second instead of the default 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio
from fido2 import cbor
from hostile_relay import BAD_UPGRADES, HANGS, serve_hostile

from hybrid import keys
from hybrid.ble.eid import Eid, encrypt_advert
from hybrid.ble.loopback import LoopbackAdvertiser
from hybrid.ble.memory import MemoryMedium
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession
from hybrid.desktop.ctap import get_assertion_request
from hybrid.qr.payload import QrPayload
from hybrid.tunnel.client import (
    RelayHandshakeError,
    RelayUnreachableError,
    open_tunnel,
)
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.messages import MessageType, encode_post_handshake, parse_message
from hybrid.tunnel.noise import Responder
from hybrid.tunnel.urls import new_url

HYBRID = [sys.executable, "-m", "hybrid"]
DEADLINE = 1.0
# Generous bound for a 1 s deadline on a shared, loaded machine (process start-up included).
PROCESS_BOUND = 15.0


@pytest.mark.parametrize("name", list(HANGS))
async def test_tunnel_gives_up_within_its_deadline(nursery, name) -> None:
    url = await serve_hostile(nursery, HANGS[name])
    started = trio.current_time()
    with trio.fail_after(5):
        with pytest.raises(RelayUnreachableError) as caught:
            async with open_tunnel(url + "/cable/new/" + "00" * 16, connect_timeout=DEADLINE):
                pass
    assert trio.current_time() - started < DEADLINE + 0.5, name
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("name", list(BAD_UPGRADES))
async def test_a_broken_101_is_a_typed_error_naming_the_fault(nursery, name) -> None:
    behaviour, named = BAD_UPGRADES[name]
    url = await serve_hostile(nursery, behaviour)
    with trio.fail_after(5):
        with pytest.raises(RelayHandshakeError, match=named):
            async with open_tunnel(url + "/cable/new/" + "00" * 16, connect_timeout=DEADLINE):
                pass


def _fake_qr() -> str:
    from hybrid.desktop.session import DesktopSession

    return DesktopSession(Operation.SIGN_IN, MemoryMedium().scanner()).url


def _env(ble_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env["HYBRID_RELAY_TIMEOUT"] = str(DEADLINE)
    env["HYBRID_BLE_PORT"] = str(ble_port)
    return env


def _assert_unavailable(code: int, err: str, named: str) -> None:
    assert "Traceback" not in err, err
    assert code == 10, (code, err)
    assert "Passkey Unavailable" in err, err
    assert named in err, err


CASES = [(name, behaviour, "127.0.0.1") for name, behaviour in HANGS.items()] + [
    (name, behaviour, named) for name, (behaviour, named) in BAD_UPGRADES.items()
]


@pytest.mark.parametrize(("name", "behaviour", "named"), CASES, ids=[c[0] for c in CASES])
async def test_hybrid_phone_reports_passkey_unavailable(
    nursery, tmp_path, ble_port, name, behaviour, named
) -> None:
    url = await serve_hostile(nursery, behaviour)
    started = trio.current_time()
    with trio.fail_after(PROCESS_BOUND):
        done = await trio.run_process(
            [*HYBRID, "phone", "--relay", url, "--approve", "--data-dir", str(tmp_path),
             "--timeout", "30", _fake_qr()],
            capture_stdout=True, capture_stderr=True, check=False, env=_env(ble_port),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    _assert_unavailable(done.returncode, done.stderr.decode(), named)
    assert trio.current_time() - started < PROCESS_BOUND


async def _advertise_for(url: str, ble_port: int) -> None:
    """Play a phone's advert for the desktop's QR so that it connects to the (hostile) relay."""
    qr = QrPayload.from_url(url)
    advert = encrypt_advert(keys.eid_key(qr.qr_secret), Eid.create(b"\xa1\xb2\xc3", 0).pack())
    async with LoopbackAdvertiser(ble_port, interval=0.05).advertise(0xFFF9, advert):
        await trio.sleep_forever()


@pytest.mark.parametrize(
    ("name", "behaviour", "named"),
    [CASES[0], CASES[4], CASES[5], CASES[-1]],
    ids=[CASES[i][0] for i in (0, 4, 5, -1)],
)
async def test_hybrid_desktop_reports_passkey_unavailable(
    nursery, tmp_path, ble_port, name, behaviour, named
) -> None:
    url = await serve_hostile(nursery, behaviour)
    desktop = await trio.lowlevel.open_process(
        [*HYBRID, "desktop", "login", "--relay", url, "--rp-id", "example.com",
         "--data-dir", str(tmp_path), "--timeout", "30", "--no-qr"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(ble_port),
    )  # fmt: skip
    err = b""
    try:
        with trio.fail_after(PROCESS_BOUND):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await desktop.stdout.receive_some(1)
                assert chunk, "desktop exited before printing its URL"
                line += chunk
            async with trio.open_nursery() as inner:
                inner.start_soon(_advertise_for, line.decode().strip(), ble_port)
                while chunk := await desktop.stderr.receive_some(4096):
                    err += chunk
                inner.cancel_scope.cancel()
            code = await desktop.wait()
    finally:
        if desktop.returncode is None:
            desktop.kill()
            await desktop.wait()
    _assert_unavailable(code, err.decode(), named)


# ---- point 3: who is blamed when the relay shuts down -------------------------------------------


async def test_desktop_blames_the_relay_when_it_shuts_down_mid_request(relay) -> None:
    medium = MemoryMedium(interval=0.01)
    deadlines = Deadlines(advert=5, tunnel=2, handshake=2, user=5, linger=0.2)
    session = DesktopSession(
        Operation.SIGN_IN, medium.scanner(), relay_url=relay.base_url, deadlines=deadlines
    )
    from fido2.webauthn import PublicKeyCredentialRequestOptions

    options = PublicKeyCredentialRequestOptions(challenge=b"c" * 32, rp_id="example.com")
    request = get_assertion_request(b"\x11" * 32, options, session._error, rp_id="example.com")
    outcome: list[object] = []

    async def desktop() -> None:
        try:
            outcome.append(await session.transact(request))
        except PasskeyError as exc:
            outcome.append(exc)

    async def phone() -> None:
        qr = QrPayload.from_url(session.url)
        async with open_tunnel(new_url(keys.tunnel_id(qr.qr_secret), base_url=relay.base_url)) as t:
            plaintext = Eid.create(t.routing_id, 0).pack()
            advert = encrypt_advert(keys.eid_key(qr.qr_secret), plaintext)
            async with medium.advertiser().advertise(0xFFF9, advert):
                message1 = await t.receive()
            responder = Responder.qr(qr.public_key_point, keys.psk(qr.qr_secret, plaintext))
            responder.read_message(message1)
            message2, result = responder.write_message()
            await t.send(message2)
            crypter = Crypter.from_handshake(result)
            await t.send(crypter.encrypt(encode_post_handshake(cbor.encode({1: ["FIDO_2_0"]}))))
            kind, _ = parse_message(crypter.decrypt(await t.receive()))
            assert kind is MessageType.CTAP
            # The request is with the "user" now; the relay operator restarts the relay.
            await relay.shutdown(grace=0, drain_delay=0)

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(desktop)
            nursery.start_soon(phone)
    error = outcome[0]
    assert isinstance(error, PasskeyError), error
    assert error.failure is Failure.RELAY_UNREACHABLE, error
    assert "relay went away" in error.detail and "1001" in error.detail, error.detail
    assert "phone closed" not in error.detail
