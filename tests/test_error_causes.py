"""Errors that name the real cause: the catalogue entry whose cause fits, and a detail that says
what happened (issue 9, section 4), plus TLS trust and the advertised relay domain (section 6).

Real relays on 127.0.0.1 (plain and TLS, with a certificate from a private CA made here), the
loopback BLE medium, and the command line where the behaviour lives there.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import hybrid.tunnel.client as tunnel_client
from hybrid import keys
from hybrid.ble.loopback import LoopbackMedium
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.cli.args import UsageError
from hybrid.cli.phone import advertised_domain
from hybrid.desktop import Deadlines, DesktopSession, register
from hybrid.desktop.webauthn_client import HybridWebAuthnClient
from hybrid.phone import (
    CredentialStore,
    PhoneDeadlines,
    PhoneSession,
    SoftwareAuthenticator,
    auto_approver,
)
from hybrid.qr.payload import QrPayload
from hybrid.rp import RelyingParty
from hybrid.session_errors import stale_qr_warning
from hybrid.tunnel.domains import tunnel_domain
from hybrid.tunnel.relay_url import RelayUrlError

FAST = Deadlines(advert=3, tunnel=3, handshake=3, user=5, linger=0.3)
PHONE_FAST = PhoneDeadlines(tunnel=3, desktop=3, request=3, user=5, linger=0.3)
HYBRID = [sys.executable, "-m", "hybrid"]


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:  # bound, never listening: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{sock.getsockname()[1]}"


def phone_for(url: str, phone_dir: Path, medium: LoopbackMedium, relay_url: str, **kw):
    store = CredentialStore(phone_dir)
    return PhoneSession(
        url,
        SoftwareAuthenticator(store, auto_approver()),
        medium.advertiser(),
        relay_url=relay_url,
        deadlines=PHONE_FAST,
        **kw,
    )


async def test_phone_with_an_unreachable_relay_says_passkey_unavailable_at_once(
    phone_dir, ble_port
) -> None:
    session = DesktopSession(Operation.REGISTER, LoopbackMedium(ble_port).scanner())
    phone = phone_for(session.url, phone_dir, LoopbackMedium(ble_port), closed_port_url())
    started = time.monotonic()
    with pytest.raises(PasskeyError) as caught:
        await phone.run()
    assert time.monotonic() - started < 1.0  # never a timeout
    assert caught.value.failure is Failure.RELAY_UNREACHABLE
    assert caught.value.title == "Passkey Unavailable"


async def test_desktop_with_an_unreachable_relay_says_passkey_unavailable_at_once(
    relay, phone_dir, desktop_dir, ble_port
) -> None:
    medium = LoopbackMedium(ble_port)
    session = DesktopSession(
        Operation.REGISTER, medium.scanner(), relay_url=closed_port_url(), deadlines=FAST
    )
    phone = phone_for(session.url, phone_dir, medium, relay.base_url)
    outcome: list[BaseException] = []

    async def desktop() -> None:
        try:
            await register(RelyingParty("example.com", "https://example.com"), "alice", session)
        except PasskeyError as exc:
            outcome.append(exc)

    async def run_phone() -> None:
        try:
            await phone.run()
        except PasskeyError:
            pass

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_phone)
            await desktop()
            nursery.cancel_scope.cancel()
    (error,) = outcome
    assert error.failure is Failure.RELAY_UNREACHABLE
    assert "cannot reach relay" in error.detail


async def test_second_phone_on_the_same_qr_is_told_another_phone_uses_it(
    relay, phone_dir, tmp_path, ble_port
) -> None:
    session = DesktopSession(Operation.SIGN_IN, LoopbackMedium(ble_port).scanner())
    first = phone_for(session.url, phone_dir, LoopbackMedium(ble_port), relay.base_url)
    second = phone_for(session.url, tmp_path / "second", LoopbackMedium(ble_port), relay.base_url)
    caught: list[PasskeyError] = []
    async with trio.open_nursery() as nursery:

        async def run_first() -> None:
            try:
                await first.run()
            except PasskeyError:
                pass

        nursery.start_soon(run_first)
        await trio.sleep(0.3)  # the first phone holds /cable/new/<tunnel id> now
        started = time.monotonic()
        try:
            await second.run()
        except PasskeyError as exc:
            caught.append(exc)
        elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    (error,) = caught
    assert elapsed < 1.0
    assert error.title == "Passkey Unavailable"
    assert "this QR code is already being used by another phone" in error.detail
    assert "409" in error.detail


async def test_desktop_says_whether_it_heard_no_phone_or_a_phone_for_another_code(
    relay, phone_dir, ble_port
) -> None:
    medium = LoopbackMedium(ble_port)
    quiet = DesktopSession(Operation.SIGN_IN, medium.scanner(), deadlines=Deadlines(advert=0.5))
    with pytest.raises(PasskeyError) as caught:
        await quiet.transact(b"\x02")
    assert caught.value.failure is Failure.TIMEOUT
    assert "no phone advert at all within 0.5 s" in caught.value.detail

    ours = DesktopSession(Operation.SIGN_IN, medium.scanner(), deadlines=Deadlines(advert=1.5))
    other = DesktopSession(Operation.SIGN_IN, medium.scanner())  # the code the phone scanned
    phone = phone_for(other.url, phone_dir, medium, relay.base_url)
    async with trio.open_nursery() as nursery:

        async def run_phone() -> None:
            try:
                await phone.run()
            except PasskeyError:
                pass

        nursery.start_soon(run_phone)
        with pytest.raises(PasskeyError) as caught:
            await ours.transact(b"\x02")
        nursery.cancel_scope.cancel()
    assert caught.value.title == "Passkey Request Timed Out"
    assert "a phone is nearby, but it scanned another code" in caught.value.detail


def test_stale_qr_warning_threshold() -> None:
    assert stale_qr_warning(60) is None
    assert stale_qr_warning(179) is None
    assert "10 minutes ago" in (stale_qr_warning(600) or "")


async def test_phone_with_a_stale_qr_warns_and_reports_session_expired(relay, phone_dir) -> None:
    old = QrPayload.create(
        keys.public_key_bytes(keys.generate_private_key(), compressed=True),
        bytes(range(16)),
        request_type="ga",
        timestamp=int(time.time()) - 600,
    ).to_url()
    from tests.conftest import free_udp_port

    result = await trio.run_process(
        [*HYBRID, "phone", "--approve", "--relay", relay.base_url, "--timeout", "0.5",
         "--ble-port", str(free_udp_port()), "--data-dir", str(phone_dir), old],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 19, stderr
    assert "phone: warning: this QR code was made 10 minutes ago" in stderr
    assert (
        "hybrid: error: Session Expired: Your session has expired; restart to continue." in stderr
    )
    assert "Traceback" not in stderr


def test_desktop_api_checks_its_relay_url_before_any_qr(ble_port) -> None:
    shown: list[str] = []
    for bad in ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/path", "ws://127.0.0.1:70000"):
        with pytest.raises(RelayUrlError):
            HybridWebAuthnClient(
                "https://example.com",
                LoopbackMedium(ble_port).scanner,
                relay_url=bad,
                on_url=shown.append,
            )
    assert shown == []
    with pytest.raises(PasskeyError) as caught:
        DesktopSession(
            Operation.SIGN_IN, LoopbackMedium(ble_port).scanner(), relay_url="http://relay:80"
        )
    assert caught.value.title == "Passkey Unavailable"
    assert "must start with ws:// or wss://" in caught.value.detail
    url = DesktopSession(Operation.SIGN_IN, LoopbackMedium(ble_port).scanner()).url
    with pytest.raises(PasskeyError, match="without a path"):
        PhoneSession(url, None, LoopbackMedium(ble_port).advertiser(), relay_url="ws://r:1/x")


def test_the_advert_names_the_relay_the_phone_uses() -> None:
    assert advertised_domain(None, None) == (None, None)
    assert advertised_domain("wss://cable.ua5v.com", None) == (0, None)
    assert advertised_domain("wss://cable.auth.com", 1) == (1, None)
    hashed = tunnel_domain(31337)
    assert advertised_domain(f"wss://{hashed}", None) == (31337, None)
    with pytest.raises(UsageError, match="contradicts --relay"):
        advertised_domain(f"wss://{hashed}", 0)
    pinned, note = advertised_domain("ws://127.0.0.1:8080", None)
    assert pinned is None
    assert note is not None and "only desktops given the same --relay will find" in note


# ---- TLS: a relay whose certificate comes from a private CA ---------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_private_ca(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, relay certificate for 127.0.0.1, relay key), all PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("hybrid test CA"))
        .issuer_name(_name("hybrid test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "relay.pem", directory / "relay-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
async def tls_relay(nursery, tmp_path):
    from relay.server import RelayConfig, serve

    ca, cert, key = make_private_ca(tmp_path)
    running = await nursery.start(
        serve, RelayConfig(host="127.0.0.1", port=0, tls_cert=str(cert), tls_key=str(key))
    )
    assert running.base_url.startswith("wss://")
    return running, ca


async def test_ca_file_trusts_a_private_relay_on_both_sides(
    tls_relay, ble_port, desktop_dir, phone_dir
) -> None:
    relay, ca = tls_relay
    desktop = await trio.lowlevel.open_process(
        [*HYBRID, "desktop", "register", "--rp-id", "example.com", "--user", "alice",
         "--relay", relay.base_url, "--ble-port", str(ble_port), "--timeout", "10",
         "--data-dir", str(desktop_dir), "--no-qr"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**__import__("os").environ, "HYBRID_CA_FILE": str(ca)},  # the environment variable
    )  # fmt: skip
    try:
        with trio.fail_after(30):
            assert desktop.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await desktop.stdout.receive_some(1)
            phone = await trio.run_process(
                [*HYBRID, "phone", "--approve", "--relay", relay.base_url, "--ca-file", str(ca),
                 "--ble-port", str(ble_port), "--data-dir", str(phone_dir), line.decode().strip()],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
            assert phone.returncode == 0, phone.stderr.decode()
            assert await desktop.wait() == 0
    finally:
        if desktop.returncode is None:
            desktop.kill()
            await desktop.wait()


@pytest.mark.xfail(
    not hasattr(tunnel_client, "RelayHandshakeError"),
    reason="this branch's tunnel client sees a TLS failure only as its connect timeout; the "
    "client of issue 12 (engineer robust) runs TLS before the upgrade and reports it at once",
    strict=True,
)
async def test_a_certificate_that_does_not_verify_says_so_at_once(
    tls_relay, ble_port, phone_dir
) -> None:
    relay, _ = tls_relay
    session = DesktopSession(Operation.REGISTER, LoopbackMedium(ble_port).scanner())
    phone = phone_for(
        session.url,
        phone_dir,
        LoopbackMedium(ble_port),
        relay.base_url,
        ssl_context=ssl.create_default_context(),  # the system's trust store only
    )
    started = time.monotonic()
    with pytest.raises(PasskeyError) as caught:
        await phone.run()
    assert time.monotonic() - started < 2.0
    assert caught.value.title == "Passkey Unavailable"
    assert "the relay's TLS certificate does not verify" in caught.value.detail
    assert "--ca-file" in caught.value.detail


def test_client_shows_no_qr_when_the_ble_medium_cannot_start(ble_port) -> None:
    import socket

    from fido2.client import ClientError
    from fido2.server import Fido2Server

    shown: list[str] = []
    client = HybridWebAuthnClient(
        "https://example.com", LoopbackMedium(ble_port).scanner, on_url=shown.append
    )
    options, _ = Fido2Server({"id": "example.com", "name": "Example"}).authenticate_begin()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", ble_port))
        with pytest.raises(ClientError) as caught:
            client.get_assertion(options["publicKey"])
    assert caught.value.cause.failure is Failure.NO_BLE_ADAPTER
    assert "no QR code was shown" in caught.value.cause.detail
    assert shown == []


async def test_register_shows_no_qr_when_the_scanner_cannot_open(ble_port, desktop_dir) -> None:
    import socket

    shown: list[str] = []
    session = DesktopSession(Operation.REGISTER, LoopbackMedium(ble_port).scanner())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", ble_port))
        with pytest.raises(PasskeyError) as caught:
            await register(
                RelyingParty("example.com", "https://example.com", desktop_dir),
                "alice",
                session,
                on_url=shown.append,
            )
    assert caught.value.title == "No compatible device found"
    assert shown == []
