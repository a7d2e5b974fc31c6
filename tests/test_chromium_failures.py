"""Chromium against our phone when things go wrong: decline, exclude list, cancel, relay trouble.

Each test puts the two sides next to each other: what the page got from Chromium (the error name
a website sees) and what our phone said and did (its exit status, CTAP status and message).
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import time

import pytest
from chromium import fixtures
from chromium.harness import Lab
from chromium.processes import Relay
from chromium.webauthn import creation, registered, request, server_for

pytestmark = pytest.mark.usefixtures("chromium_case")
chromium_lab = fixtures.chromium_lab  # one Chromium for all Chromium tests
chromium_case = fixtures.chromium_case


def test_decline_is_not_allowed_error(chromium_case: Lab) -> None:
    lab = chromium_case
    options, _ = creation(server_for(lab.page.origin))
    # No --approve: the phone asks on its terminal, and the user answers "n".
    result, phone = lab.ceremony(
        "create", options, lab.case_dir / "phone", approve=False, stdin_text="n\n"
    )
    assert "status OPERATION_DENIED" in phone.stderr, phone.stderr
    assert phone.returncode == 0, phone.stderr  # it answered: exit 0, the status says how
    assert not result["ok"] and result["name"] == "NotAllowedError", result


def test_exclude_list_is_invalid_state_error(chromium_case: Lab) -> None:
    lab = chromium_case
    server = server_for(lab.page.origin)
    options, state = creation(server)
    first, phone = lab.ceremony("create", options, lab.case_dir / "phone")
    assert first["ok"] and phone.returncode == 0, (first, phone.stderr)
    credential = registered(server, state, first)

    options, _ = creation(server, exclude=[credential])
    result, phone = lab.ceremony("create", options, lab.case_dir / "phone")
    assert "status CREDENTIAL_EXCLUDED" in phone.stderr, phone.stderr
    assert phone.returncode == 0, phone.stderr
    assert not result["ok"] and result["name"] == "InvalidStateError", result


def _read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_cancel_in_chromium_ends_the_phone_prompt(chromium_case: Lab) -> None:
    lab = chromium_case
    options, _ = creation(server_for(lab.page.origin))
    command_id, url = lab.start_ceremony("create", options)
    # The phone on a pseudo-terminal, as a person runs it, waiting at its y/N prompt.
    controller, terminal = pty.openpty()
    phone = subprocess.Popen(
        lab.phone_command(url, lab.case_dir / "phone", approve=False),
        env=lab.phone_env(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    try:
        shown = _read_until(controller, b"[y/N]", 15)
        assert b"[y/N]" in shown, shown.decode(errors="replace")
        lab.key("Escape")  # Cancel in Chromium's dialog
        pressed = time.monotonic()
        try:
            phone.wait(1.5)
        except subprocess.TimeoutExpired:
            pass
        exited_after = time.monotonic() - pressed
        output = shown + _read_until(controller, b"\0", 0.2)
        result = lab.page.result(command_id, 5)
        assert result is not None and not result["ok"], result
        assert result["name"] == "NotAllowedError", result
        assert phone.returncode is not None, (
            "our phone still waits at its prompt 1.5 s after Chromium cancelled:\n"
            + output.decode(errors="replace")
        )
        assert exited_after < 1.0, f"our phone took {exited_after:.2f} s to notice the cancel"
        # The computer stopped waiting: on the phone that is "Session Expired" (exit 19).
        assert phone.returncode == 19, output.decode(errors="replace")
        assert b"Session Expired" in output, output.decode(errors="replace")
    finally:
        if phone.poll() is None:
            phone.kill()
            phone.wait()
        os.close(controller)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_relay_down(chromium_case: Lab) -> None:
    """Nothing listens where either side expects the relay."""
    lab = chromium_case
    lab.forwarder.down()  # Chromium's tunnel server refuses connections...
    dead = f"wss://localhost:{_dead_port()}"  # ...and so does the phone's
    options, _ = request(server_for(lab.page.origin))
    command_id, url = lab.start_ceremony("get", options)
    started = time.monotonic()
    phone = _run_phone(lab, url, relay_url=dead)
    took = time.monotonic() - started
    assert phone.returncode == 10, phone.stderr
    assert "hybrid: error: Passkey Unavailable" in phone.stderr, phone.stderr
    assert took < 10, f"the phone took {took:.1f} s to give up on a relay that is down"
    # Chromium never sees an advert (the phone needs a routing id from the relay first), so it
    # keeps showing its QR code until the user cancels.
    assert lab.page.result(command_id, 0.5) is None
    lab.read_qr(timeout=2, same=True)
    lab.key("Escape")
    result = lab.page.result(command_id, 5)
    assert result is not None and result["name"] == "NotAllowedError", result


def test_relay_refuses_the_phone(chromium_case: Lab) -> None:
    """The phone's relay is full (503): side by side with Chromium, which never hears of it."""
    import ssl

    from websockets.sync.client import connect

    lab = chromium_case
    full = Relay(lab.tls, lab.case_dir / "full-relay.log", "--max-tunnels", "1").start()
    context = ssl.create_default_context(cafile=str(lab.tls.ca_file))
    try:
        # Someone else's tunnel takes the only place.
        with connect(f"{full.url}/cable/new/{'00' * 16}", ssl=context, subprotocols=["fido.cable"]):
            options, _ = request(server_for(lab.page.origin))
            command_id, url = lab.start_ceremony("get", options)
            phone = _run_phone(lab, url, relay_url=full.url)
            assert phone.returncode == 10, phone.stderr
            assert "hybrid: error: Passkey Unavailable" in phone.stderr, phone.stderr
            assert "503" in phone.stderr, phone.stderr  # the relay's answer is named
    finally:
        full.stop()
    assert lab.page.result(command_id, 0.5) is None  # Chromium still shows its QR code
    lab.read_qr(timeout=2, same=True)
    lab.key("Escape")
    result = lab.page.result(command_id, 5)
    assert result is not None and result["name"] == "NotAllowedError", result


def _chromium_cannot_reach_its_tunnel(lab: Lab, why: str) -> None:
    """Our phone's relay works; Chromium's way to it fails (``why`` is in Chromium's log)."""
    log_offset = lab.log_offset()
    options, _ = request(server_for(lab.page.origin))
    command_id, url = lab.start_ceremony("get", options)
    phone = _run_phone(lab, url, timeout=2)
    # The phone advertised, Chromium saw it and failed to connect; the phone waits for the
    # handshake until its deadline and says so.
    assert phone.returncode == 12, phone.stderr
    assert "hybrid: error: Passkey Request Timed Out" in phone.stderr, phone.stderr
    assert "no desktop connected within 2 s" in phone.stderr, phone.stderr
    log = lab.log_since(log_offset)
    assert "Tunnel server connection failed" in log and why in log, log[-3000:]
    # Chromium leaves its dialog at "Connecting to your device" and the page waits: no error
    # reaches the website until the user gives up.
    assert lab.page.result(command_id, 0.5) is None
    lab.save_screenshot("tunnel-failed")
    lab.key("Escape")
    result = lab.page.result(command_id, 5)
    assert result is not None and result["name"] == "NotAllowedError", result


def test_tunnel_server_down_for_chromium(chromium_case: Lab) -> None:
    chromium_case.forwarder.down()
    _chromium_cannot_reach_its_tunnel(chromium_case, "ERR_CONNECTION_REFUSED")


def test_relay_refuses_chromium(chromium_case: Lab) -> None:
    """Chromium reaches a relay that does not know the tunnel: it answers 404 to the upgrade."""
    lab = chromium_case
    lab.forwarder.target = lab.other.port
    _chromium_cannot_reach_its_tunnel(lab, "Unexpected response code: 404")


def _run_phone(lab: Lab, url: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        lab.phone_command(url, lab.case_dir / "phone", **options),
        env=lab.phone_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
