"""The commands as real processes: `hybrid desktop` + `hybrid phone`, and `hybrid demo --json`.

The desktop and the phone are two `python -m hybrid` processes that meet only through the loopback
BLE medium and the relay (started in this test process); the phone reads the URL from the
desktop's first stdout line, as any driving tool would. The demo's JSON is re-verified with
python-fido2's server from the JSON alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
import webauthn
from fido2.server import Fido2Server
from fido2.utils import websafe_decode
from fido2.webauthn import (
    AuthenticationResponse,
    PublicKeyCredentialRpEntity,
    RegistrationResponse,
)
from webauthn.helpers import base64url_to_bytes

from hybrid.qr.render import save_png

HYBRID = [sys.executable, "-m", "hybrid"]


async def first_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode()


async def drain(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some(4096):
        into.append(chunk)


async def desktop_and_phone(
    action: str,
    relay_url: str,
    ble_port: int,
    desktop_dir: Path,
    phone_dir: Path,
    *extra: str,
    qr_image: Path | None = None,
) -> tuple[int, str, int, str]:
    """Run one ceremony as two processes; (desktop code, desktop output, phone code, phone err)."""
    common = ["--relay", relay_url, "--ble-port", str(ble_port)]
    desktop = await trio.lowlevel.open_process(
        [*HYBRID, "desktop", action, "--rp-id", "example.com", "--user", "alice",
         "--data-dir", str(desktop_dir), "--timeout", "10", *common, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        with trio.fail_after(30):
            url = await first_line(desktop.stdout)
            assert url.startswith("FIDO:/"), url
            scanned = [url]
            if qr_image is not None:  # the phone reads the QR code itself, from a picture
                save_png(url, qr_image)
                scanned = ["--qr-image", str(qr_image)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, desktop.stdout, out)
                nursery.start_soon(drain, desktop.stderr, err)
                phone = await trio.run_process(
                    [
                        *HYBRID,
                        "phone",
                        "--approve",
                        "--data-dir",
                        str(phone_dir),
                        *common,
                        *scanned,
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                await desktop.wait()
    finally:
        if desktop.returncode is None:
            desktop.kill()
            await desktop.wait()
    output = b"".join(out).decode() + b"".join(err).decode()
    return desktop.returncode, output, phone.returncode, phone.stderr.decode()


async def test_desktop_and_phone_processes_register_then_sign_in(
    relay, ble_port, desktop_dir, phone_dir, tmp_path
) -> None:
    code, output, phone_code, phone_err = await desktop_and_phone(
        "register", relay.base_url, ble_port, desktop_dir, phone_dir
    )
    assert (code, phone_code) == (0, 0), output + phone_err
    assert "verified: the relying party example.com accepted the registration" in output
    assert "status OK" in phone_err
    # login in a new process works because both sides persisted their state
    code, output, phone_code, phone_err = await desktop_and_phone(
        "login", relay.base_url, ble_port, desktop_dir, phone_dir, qr_image=tmp_path / "qr.png"
    )
    assert (code, phone_code) == (0, 0), output + phone_err
    assert "accepted the assertion" in output


async def test_desktop_process_exits_with_the_catalogue_error(
    relay, ble_port, desktop_dir, phone_dir, tmp_path
) -> None:
    await desktop_and_phone("register", relay.base_url, ble_port, desktop_dir, phone_dir)
    code, output, phone_code, _ = await desktop_and_phone(
        "login", relay.base_url, ble_port, desktop_dir, tmp_path / "empty-phone"
    )
    assert code == 13  # Passkey is not found on this device
    assert "hybrid: error: Passkey is not found on this device: " in output
    assert phone_code == 0  # the phone did send its (negative) response


async def test_demo_json_reverifies_with_fido2_server_from_the_json_alone(tmp_path, ble_port):
    result_file = tmp_path / "demo.json"
    demo = await trio.run_process(
        [*HYBRID, "demo", "--json", str(result_file), "--ble-port", str(ble_port), "--no-qr"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    stdout = demo.stdout.decode()
    assert demo.returncode == 0, stdout + demo.stderr.decode()
    assert "RESULT: the relying party example.com verified the assertion" in stdout
    document = json.loads(result_file.read_text())
    assert set(document) == {"rp_id", "origin", "registration", "authentication"}
    reg = document["registration"]["response"]
    auth = document["authentication"]["response"]
    assert set(reg["response"]) >= {"clientDataJSON", "attestationObject"}
    assert set(auth["response"]) >= {"clientDataJSON", "authenticatorData", "signature"}
    assert reg["type"] == auth["type"] == "public-key"
    assert auth["authenticatorAttachment"] == "cross-platform"
    assert reg["clientExtensionResults"] == {}

    server = Fido2Server(
        PublicKeyCredentialRpEntity(name=document["rp_id"], id=document["rp_id"]),
        verify_origin=lambda origin: origin == document["origin"],
    )
    registration_state = {
        "challenge": document["registration"]["challenge"],
        "user_verification": "preferred",
    }
    auth_data = server.register_complete(registration_state, RegistrationResponse.from_dict(reg))
    credential = auth_data.credential_data
    assert credential.credential_id == websafe_decode(reg["rawId"])
    authentication_state = {
        "challenge": document["authentication"]["challenge"],
        "user_verification": "preferred",
    }
    server.authenticate_complete(
        authentication_state, [credential], AuthenticationResponse.from_dict(auth)
    )

    # A second, independent WebAuthn server library (py_webauthn, which this project does not
    # otherwise use) must accept the same JSON, as any relying party would.
    registration = webauthn.verify_registration_response(
        credential=reg,
        expected_challenge=base64url_to_bytes(document["registration"]["challenge"]),
        expected_origin=document["origin"],
        expected_rp_id=document["rp_id"],
        require_user_verification=True,
    )
    assert registration.credential_id == websafe_decode(reg["rawId"])
    assertion = webauthn.verify_authentication_response(
        credential=auth,
        expected_challenge=base64url_to_bytes(document["authentication"]["challenge"]),
        expected_origin=document["origin"],
        expected_rp_id=document["rp_id"],
        credential_public_key=registration.credential_public_key,
        credential_current_sign_count=registration.sign_count,
        require_user_verification=True,
    )
    assert assertion.new_sign_count > registration.sign_count
