"""Interoperability: our desktop, phone and relay against independent peers (tests/interop).

The peers are written only from the protocol reference (docs/protocol.md), so a misreading shared by
our desktop and phone (which share one protocol core) fails here. Everything runs on 127.0.0.1: a
real relay process, our CLI processes, the independent peers as trio tasks, and the loopback BLE
medium on a free UDP port per test. Every wait is bounded and every child is killed at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest
import trio
from interop import (
    ROUTING_ID_HEADER,
    SUBPROTOCOL,
    advert_encrypt,
    cbor_encode,
    ctap_canonical_key_order,
    digits_decode,
    digits_encode,
    eid_key,
    fido_url,
    new_key,
    parse_fido_url,
    pub33,
    qr_map,
    random_bytes,
)
from interop.peer_desktop import DesktopResult, run_desktop
from interop.peer_phone import run_phone
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

from tests.conftest import free_udp_port

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT = 20


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 15
        port = None
        while port is None and time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "listening":
                    port = int(event["port"])
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert port is not None, f"relay did not start: {log.read_text()}"
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(5)


def our_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hybrid", *args]


async def start_our_desktop(
    action: str, relay: str, port: int, data_dir: Path, log: Path, user: str | None = "alice"
) -> tuple[trio.Process, str]:
    """Start `hybrid desktop` and return it with the FIDO:/ URL from its first stdout line."""
    with log.open("ab") as err:
        proc = await trio.lowlevel.open_process(
            our_cmd(
                "desktop",
                action,
                "--relay",
                relay,
                "--rp-id",
                "example.com",
                "--ble-port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--timeout",
                "15",
                "--no-qr",
                *(["--user", user] if user else []),
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    buf = b""
    try:
        with trio.fail_after(STEP_TIMEOUT):
            while b"\n" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"desktop printed no URL: {log.read_text()}")
                buf += chunk
    except BaseException:
        await stop(proc)
        raise
    return proc, buf.split(b"\n", 1)[0].decode().strip()


async def stop(proc: trio.Process) -> None:
    """Kill a child we started (if still running) and reap it, even while being cancelled."""
    if proc.returncode is None:
        proc.kill()
    with trio.CancelScope(shield=True):
        await proc.wait()


async def drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(4096):
        pass


async def run_our_phone(url: str, relay: str, port: int, data_dir: Path) -> tuple[int, str]:
    with trio.fail_after(STEP_TIMEOUT):
        done = await trio.run_process(
            our_cmd(
                "phone",
                "--relay",
                relay,
                "--approve",
                "--ble-port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--timeout",
                "15",
                url,
            ),
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stderr.decode(errors="replace")


async def desktop_with_phone(phone, relay: str, port: int, **desktop_kwargs) -> tuple:
    """Run the independent desktop; when it shows its URL, start ``phone(url)`` beside it."""
    box: dict = {}
    shown = trio.Event()

    def on_url(url: str) -> None:
        box["url"] = url
        shown.set()

    async def phone_task() -> None:
        await shown.wait()
        box["phone"] = await phone(box["url"])

    with trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(phone_task)
            result: DesktopResult = await run_desktop(relay, port, on_url=on_url, **desktop_kwargs)
    return result, box["phone"]


# --- self-checks of the independent peers ------------------------------------------------------


def test_peer_codecs_follow_the_notes() -> None:
    for n in range(1, 60):
        data = random_bytes(n)
        assert digits_decode(digits_encode(data)) == data
    # cbor2 canonical mode must give CTAP2 order for every key set the peers send (§2).
    for keys in (
        ["type", "alg"],
        ["displayName", "name", "id"],
        ["rk", "uv", "up", "plat"],
        [1, 3, -1, -2, -3],
        [0, 1, 2, 3, 4, 5],
        [10, 9, 4, 3, 1],
    ):
        encoded = cbor_encode({k: 0 for k in keys})
        assert list(cbor2.loads(encoded)) == ctap_canonical_key_order(keys)


# --- 1. our desktop + independent phone --------------------------------------------------------


async def test_our_desktop_with_independent_phone(relay_url: str, tmp_path: Path) -> None:
    port = free_udp_port()
    state = tmp_path / "indep-phone.json"
    desk_dir = tmp_path / "desktop"
    desk_dir.mkdir()
    log = tmp_path / "desktop.log"
    # Register: the phone sends an Android-style padded update first and waits for the shutdown.
    # Login: a hashed domain id (>= 256) in the advert, and the phone hangs up right after its
    # answer, as deployed phones do (§7.5).
    runs = (
        ("register", "alice", 0x01, {"send_update": True, "wait_for_shutdown": 5.0, "junk": True}),
        ("login", "alice", 0x02, {"domain_id": 0x1234, "uuid": b"\xfd\xe2"}),
        # §6.2 step 1 / §15: accept service data longer than 20 bytes and use the first 20.
        ("login", "alice", 0x02, {"suffix": cbor_encode({1: 0x0081})}),
        # §12: linking information from an older phone (post-handshake key 2) or in an update;
        # the desktop sent QR key 4 = false, so it may ignore it but must not fail.
        ("login", "alice", 0x02, {"linking": "post-handshake"}),
        ("login", "alice", 0x02, {"linking": "update", "wait_for_shutdown": 5.0}),
        # §10.1: features absent means ["ctap"]; unknown keys (padding at key 0) are ignored.
        ("login", "alice", 0x02, {"features": None, "post_extra": {0: bytes(24), 7: "x"}}),
        # Discoverable sign-in: empty allowList, the phone returns user and userSelected.
        ("login", None, 0x02, {}),
    )
    for action, user, command, phone_kwargs in runs:
        proc, url = await start_our_desktop(action, relay_url, port, desk_dir, log, user)
        try:
            qr = parse_fido_url(url)
            assert url.startswith("FIDO:/")
            # §3.2: Chrome-shaped QR, keys 0..5, key 2 = 2, key 4 present (false), real time.
            assert sorted(qr.raw) == [0, 1, 2, 3, 4, 5] and qr.raw[2] == 2
            assert qr.raw[4] is False and abs(qr.raw[3] - time.time()) < 60
            assert qr.raw[5] == ("mc" if action == "register" else "ga")
            with trio.fail_after(STEP_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain, proc.stdout)
                    result = await run_phone(url, relay_url, port, state, **phone_kwargs)
                    rc = await proc.wait()
        finally:
            await stop(proc)
        assert not result.noncanonical, result.request
        assert (result.command, result.status) == (command, 0), log.read_text()
        # §11.1: no PIN/UV auth parameters over hybrid.
        pin_keys = {8, 9} if command == 0x01 else {6, 7}
        assert not pin_keys & set(result.request), result.request
        if command == 0x02 and user is None:
            assert not result.request.get(3), "discoverable sign-in sends an empty allowList"
        if phone_kwargs.get("wait_for_shutdown"):
            assert result.messages_after == [b"\x00"], "desktop must send shutdown (§10.2)"
        assert rc == 0, f"{phone_kwargs}: {log.read_text()}"
        log.write_text("")


@pytest.mark.parametrize(
    ("action", "phone_kwargs", "exit_code"),
    [
        # §11.2: a tunnel closed with the request outstanding is a cancellation, not a bug.
        ("register", {"hang_up": True}, 11),
        ("register", {"force_status": 0x27}, 11),  # CTAP2_ERR_OPERATION_DENIED
        ("register", {"force_status": 0x19}, 14),  # CTAP2_ERR_CREDENTIAL_EXCLUDED
        ("login", {"force_status": 0x2E}, 13),  # CTAP2_ERR_NO_CREDENTIALS
        # §10.1: a phone without "ctap" (digital credentials only) cannot serve WebAuthn.
        ("register", {"features": ["dc"]}, 18),
    ],
    ids=["hang-up", "denied", "excluded", "no-credentials", "no-ctap"],
)
async def test_our_desktop_reports_phone_outcomes(
    relay_url: str, tmp_path: Path, action: str, phone_kwargs: dict, exit_code: int
) -> None:
    port = free_udp_port()
    log = tmp_path / "desktop.log"
    user = "alice" if action == "register" else None
    proc, url = await start_our_desktop(action, relay_url, port, tmp_path / "d", log, user)
    try:
        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, proc.stdout)
                outcome = None
                try:
                    outcome = await run_phone(
                        url, relay_url, port, tmp_path / "p.json", **phone_kwargs
                    )
                except ConnectionClosed:
                    pass  # the desktop gave up on this phone first, as it should
                rc = await proc.wait()
    finally:
        await stop(proc)
    assert rc == exit_code, log.read_text()
    if "features" in phone_kwargs:
        # Giving up after the handshake, the desktop says so with shutdown (§11.1 cancellation).
        assert outcome is not None and outcome.messages_after == [b"\x00"]


# --- 2. independent desktop + our phone --------------------------------------------------------


async def test_independent_desktop_with_our_phone(relay_url: str, tmp_path: Path) -> None:
    port = free_udp_port()
    phone_dir = tmp_path / "phone"
    phone_dir.mkdir()

    async def our_phone(url: str) -> tuple[int, str]:
        return await run_our_phone(url, relay_url, port, phone_dir)

    reg, (rc, err) = await desktop_with_phone(our_phone, relay_url, port, mode="mc")
    assert reg.status == 0 and rc == 0, err
    assert "ctap" in reg.features and reg.credential is not None
    # §6.3/§15: phones advertise under FFF9, legacy 20 bytes when the QR has no key 6.
    assert (reg.advert_uuid, reg.advert_len) == (b"\xff\xf9", 20)
    assert reg.domain_id == 0
    first_counter = reg.credential.counter

    # §10.2: a desktop update message before the request is valid CBOR the phone must accept.
    login, (rc, err) = await desktop_with_phone(
        our_phone, relay_url, port, mode="ga", credential=reg.credential, send_update_first=True
    )
    assert login.status == 0 and rc == 0, err
    # Our phone counts every assertion (the spec also allows a constant 0; ours never does).
    assert login.counter == first_counter + 1

    def other_desktop(qr: dict) -> dict:
        # §3.1/§3.5: optional keys 3 and 5 absent, an unknown key ignored; scheme case-insensitive.
        del qr[3], qr[5]
        qr[99] = b"grease"
        return qr

    again, (rc, err) = await desktop_with_phone(
        our_phone,
        relay_url,
        port,
        mode="ga",
        credential=reg.credential,
        discoverable=True,
        qr_variant=other_desktop,
        url_prefix="fido:/",
    )
    assert again.status == 0 and rc == 0, err
    assert again.counter == login.counter + 1

    # §11.2 status codes: the exclude list matches (0x19); no passkey for another site (0x2E).
    # The phone has still answered, so it exits 0.
    dup, (rc, err) = await desktop_with_phone(
        our_phone, relay_url, port, mode="mc", exclude=[reg.credential.credential_id]
    )
    assert (dup.status, rc) == (0x19, 0), err
    other, (rc, err) = await desktop_with_phone(
        our_phone, relay_url, port, mode="ga", rp_id="other.example", credential=reg.credential
    )
    assert (other.status, rc) == (0x2E, 0), err


async def test_our_phone_picks_a_domain_the_desktop_knows(relay_url: str, tmp_path: Path) -> None:
    port = free_udp_port()

    async def our_phone(url: str) -> tuple[int, str]:
        return await run_our_phone(url, relay_url, port, tmp_path)

    def no_key_2(qr: dict) -> dict:
        del qr[2]
        return qr

    reg, (rc, err) = await desktop_with_phone(
        our_phone, relay_url, port, mode="mc", qr_variant=no_key_2
    )
    assert reg.status == 0 and rc == 0, err
    assert reg.domain_id >= 256, f"advert domain id {reg.domain_id} is unknown to this desktop"


def bad_qr_urls() -> dict[str, str]:
    good = {0: pub33(new_key().public_key()), 1: random_bytes(16), 2: 2, 3: 0, 4: False, 5: "mc"}

    def url(**changes) -> str:
        m = dict(good)
        for k, v in changes.items():
            m[int(k[1:])] = v
        return fido_url(cbor_encode(m))

    trailing = fido_url(cbor_encode(good) + b"\x00")
    return {
        "secret 15 bytes": url(k1=random_bytes(15)),
        "secret 17 bytes": url(k1=random_bytes(17)),
        "key 4 not bool": url(k4=1),
        "key 5 not text": url(k5=5),
        "key 2 not int": url(k2="2"),
        "off-curve key": url(k0=b"\x02" + b"\xff" * 32),
        "key 0 missing": fido_url(cbor_encode({1: random_bytes(16)})),
        "trailing bytes": trailing,
        "bad remainder length": trailing[:-3] + "1",
        "group out of range": "FIDO:/" + "9" * 17,
        "not digits": url()[:-1] + "x",
        "not a map": fido_url(cbor_encode([1, 2])),
        "wrong scheme": "FIDX:/" + url()[6:],
    }


async def test_our_phone_rejects_bad_qr(tmp_path: Path) -> None:
    """§3.5: reject before any tunnel. The relay URL is dead, so connecting would exit 10."""
    results: dict[str, tuple[int, str]] = {}
    limiter = trio.CapacityLimiter(4)

    async def one(name: str, url: str) -> None:
        async with limiter:
            results[name] = await run_our_phone(url, "ws://127.0.0.1:9", free_udp_port(), tmp_path)

    async with trio.open_nursery() as nursery:
        for name, url in bad_qr_urls().items():
            nursery.start_soon(one, name, url)
    wrong = {name: r for name, r in results.items() if r[0] != 1}
    assert not wrong, wrong


# --- 3. independent desktop + independent phone through our relay ------------------------------


async def test_independent_peers_through_our_relay(relay_url: str, tmp_path: Path) -> None:
    port = free_udp_port()
    state = tmp_path / "indep-phone.json"

    async def indep_phone(url: str, **kwargs):
        return await run_phone(
            url, relay_url, port, state, wait_for_shutdown=2.0, junk=True, **kwargs
        )

    # §7.1: relays MUST accept either hex case; the same tunnel id in the other case is the same
    # tunnel. Register: phone upper case, desktop lower case; sign in: the other way round.
    reg, phone = await desktop_with_phone(indep_phone, relay_url, port, mode="mc", hex_case="lower")
    assert reg.status == 0 and phone.status == 0
    # The relay forwarded our shutdown byte untouched (§10.2, §14: no alteration).
    assert phone.messages_after == [b"\x00"]

    async def lower_phone(url: str):
        return await indep_phone(url, hex_case="lower")

    login, phone = await desktop_with_phone(
        lower_phone, relay_url, port, mode="ga", credential=reg.credential, hex_case="upper"
    )
    assert login.status == 0 and phone.status == 0 and login.counter == 1


async def raw_upgrade(
    relay: str, path: str, subprotocol: str | None, method: str = "GET"
) -> tuple[int, list]:
    """Send a bare RFC 6455 upgrade request; return the status code and response headers."""
    host, port = relay.removeprefix("ws://").split(":")
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
    status_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
    return int(status_line.split()[1]), [(k.strip().lower(), v.strip()) for k, v in headers]


async def test_our_relay_upgrade_headers(relay_url: str) -> None:
    tid = random_bytes(16).hex().upper()
    status, headers = await raw_upgrade(relay_url, f"/cable/new/{tid}", SUBPROTOCOL)
    assert status == 101
    rids = [v for k, v in headers if k == ROUTING_ID_HEADER]
    assert len(rids) == 1 and len(rids[0]) == 6 and bytes.fromhex(rids[0])
    assert [v for k, v in headers if k == "sec-websocket-protocol"] == [SUBPROTOCOL]


# --- 4. our relay refuses ----------------------------------------------------------------------


async def test_our_relay_refusals(relay_url: str) -> None:
    unknown = random_bytes(16).hex().upper()
    status, _ = await raw_upgrade(relay_url, f"/cable/connect/000000/{unknown}", SUBPROTOCOL)
    assert status == 404

    tid = random_bytes(16).hex().upper()
    with trio.fail_after(10):
        async with open_websocket_url(
            f"{relay_url}/cable/new/{tid}", subprotocols=[SUBPROTOCOL]
        ) as ws:
            assert ws.subprotocol == SUBPROTOCOL
            status, _ = await raw_upgrade(relay_url, f"/cable/new/{tid}", SUBPROTOCOL)
            assert status == 409
            # Lower-case form of the same tunnel id is the same tunnel (§7.1).
            status, _ = await raw_upgrade(relay_url, f"/cable/new/{tid.lower()}", SUBPROTOCOL)
            assert status == 409

    status, _ = await raw_upgrade(relay_url, f"/cable/new/{random_bytes(16).hex()}", None)
    assert status == 400

    # §14: wrong hex lengths, bad characters, extra segments, traversal, other methods refused.
    good_tid = random_bytes(16).hex()
    for path in (
        f"/cable/new/{good_tid[:-2]}",
        f"/cable/new/{good_tid}00",
        f"/cable/new/{good_tid[:-1]}g",
        f"/cable/new/{good_tid}/x",
        f"/cable/new/{good_tid}/",
        f"/cable/connect/00000/{good_tid}",
        f"/cable/connect/000000/{good_tid}/x",
        f"/cable/new/../new/{good_tid}",
        "/cable/other/" + good_tid,
    ):
        status, _ = await raw_upgrade(relay_url, path, SUBPROTOCOL)
        assert 400 <= status < 500, (path, status)
    status, _ = await raw_upgrade(relay_url, f"/cable/new/{good_tid}", SUBPROTOCOL, "POST")
    assert 400 <= status < 500, ("POST", status)


async def test_our_relay_pairs_once_and_drops_text(relay_url: str) -> None:
    tid = random_bytes(16).hex().upper()
    with trio.fail_after(10):
        async with open_websocket_url(
            f"{relay_url}/cable/new/{tid}", subprotocols=["chat", SUBPROTOCOL]
        ) as phone:
            assert phone.subprotocol == SUBPROTOCOL
            rid = dict((k.decode().lower(), v.decode()) for k, v in phone.handshake_headers)[
                ROUTING_ID_HEADER
            ]
            async with open_websocket_url(
                f"{relay_url}/cable/connect/{rid}/{tid}", subprotocols=[SUBPROTOCOL]
            ) as desktop:
                # §14: pairing removes the pending tunnel, so a second connect fails.
                status, _ = await raw_upgrade(relay_url, f"/cable/connect/{rid}/{tid}", SUBPROTOCOL)
                assert status == 404
                payload = random_bytes(300)
                await desktop.send_message(payload)
                assert await phone.get_message() == payload
                await phone.send_message(payload[::-1])
                assert await desktop.get_message() == payload[::-1]
                # §7.3/§14: a text message is a protocol error; the relay closes.
                await desktop.send_message("text")
                with pytest.raises(ConnectionClosed):
                    await desktop.get_message()
                with pytest.raises(ConnectionClosed):
                    await phone.get_message()


# --- our clients against a misbehaving relay ---------------------------------------------------


async def fake_relay(nursery: trio.Nursery, handler) -> str:
    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}"


async def send_adverts(url: str, port: int) -> None:
    """Advertise for ``url`` as a phone would, without any tunnel behind it."""
    qr = parse_fido_url(url)
    plain = b"\x00" + random_bytes(10) + b"\x01\x02\x03" + b"\x00\x00"
    datagram = b"\xff\xf9" + advert_encrypt(eid_key(qr.secret), plain)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        while True:
            await sock.sendto(datagram, ("127.0.0.1", port))
            await trio.sleep(0.1)


@pytest.mark.parametrize("misbehaviour", ["no-subprotocol", "short-message-2"])
async def test_our_desktop_drops_a_bad_tunnel(tmp_path: Path, misbehaviour: str) -> None:
    """§7.2: no `fido.cable` echo → drop the connection; §8.4: message 2 not 81 bytes → abort."""
    received: list = []

    async def handler(request) -> None:
        if misbehaviour == "no-subprotocol":
            ws = await request.accept()
        else:
            ws = await request.accept(subprotocol=SUBPROTOCOL)
        try:
            while True:
                received.append(await ws.get_message())
                await ws.send_message(random_bytes(80))
        except ConnectionClosed:
            pass

    port = free_udp_port()
    desk_dir = tmp_path / "desktop"
    log = tmp_path / "desktop.log"
    async with trio.open_nursery() as nursery:
        relay = await fake_relay(nursery, handler)
        proc, url = await start_our_desktop("register", relay, port, desk_dir, log)
        try:
            nursery.start_soon(drain, proc.stdout)
            nursery.start_soon(send_adverts, url, port)
            # Well inside the desktop's own 10 s handshake deadline: it must notice by itself.
            with trio.fail_after(8):
                rc = await proc.wait()
        finally:
            await stop(proc)
        nursery.cancel_scope.cancel()
    assert rc not in (0, 12), log.read_text()
    if misbehaviour == "short-message-2":
        assert [len(m) for m in received] == [81]
        assert rc == 17, log.read_text()


async def test_our_phone_needs_the_routing_id_header(tmp_path: Path) -> None:
    """§7.2: X-caBLE-Routing-ID MUST be in the 101 answer to /cable/new; the phone fails without."""

    async def handler(request) -> None:
        ws = await request.accept(subprotocol=SUBPROTOCOL)
        with trio.move_on_after(10):
            try:
                await ws.get_message()
            except ConnectionClosed:
                pass

    port = free_udp_port()
    url = fido_url(qr_map(pub33(new_key().public_key()), random_bytes(16), int(time.time()), "mc"))
    adverts: list[bytes] = []

    async def listen(medium) -> None:
        while True:
            adverts.append(await medium.recv(64))

    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as medium:
        await medium.bind(("127.0.0.1", port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen, medium)
            relay = await fake_relay(nursery, handler)
            with trio.fail_after(8):
                rc, err = await run_our_phone(url, relay, port, tmp_path)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    assert rc not in (0, 12), err
    assert adverts == [], "no routing id, so nothing to advertise"
