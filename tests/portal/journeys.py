"""Steps of the portal's journeys, driven only through visible names, as a person would.

The browser steps find inputs by their labels ("Username", "Password", "Code") and buttons by
their text ("Continue", "Log in with passkey", ...). The phone is the real ``hybrid phone``
command, given the URL read by zxing-cpp from a screenshot of the page.
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import time
from pathlib import Path

import zxingcpp
from PIL import Image

from hybrid.portal.accounts import create_account
from hybrid.portal.security import TOTP_STEP, totp_code

from .portal_support import BIN, SCREENSHOTS, PortalUnderTest

PASSWORD = "correct horse battery"

# Records every text the status line shows, so a test can check the sequence even when the
# phone answers faster than a person could read.
STATUS_RECORDER = """
window.__statuses = [];
document.addEventListener("DOMContentLoaded", () => {
  const line = document.getElementById("status");
  if (!line) return;
  window.__statuses.push(line.textContent);
  new MutationObserver(() => window.__statuses.push(line.textContent))
    .observe(line, {childList: true, characterData: true, subtree: true});
});
"""


def add_user(portal: PortalUnderTest, name: str, role: str = "user") -> None:
    create_account(portal.store, name, PASSWORD, role, portal.clock())


def add_user_with_command(db_url: str, name: str, tmp: Path, role: str = "user") -> None:
    """``hybrid portal user add`` exactly as an administrator types it."""
    password_file = tmp / f"{name}.password"
    password_file.write_text(PASSWORD + "\n")
    argv = [str(BIN / "hybrid"), "portal", "user", "add", name, "--password-file",
            str(password_file), "--db", db_url]  # fmt: skip
    if role != "user":
        argv += ["--role", role]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"added user {name}" in done.stdout


def fresh_totp_step(portal: PortalUnderTest) -> None:
    """Move the clock to the next 30 s step: codes are single-use, and tests sign in often."""
    portal.clock.advance(TOTP_STEP)


def sign_in_with_password(page, portal: PortalUnderTest, name: str, password: str = PASSWORD):
    """Username → Continue → (passkey page: use the password) → Password → Code (or enrol)."""
    page.goto(portal.url + "/signin")
    page.get_by_label("Username").fill(name)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_load_state()
    if "/signin/passkey" in page.url:
        page.get_by_role("link", name="Use your password instead").click()
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/signin/**")
    fresh_totp_step(portal)
    if "/signin/enrol" in page.url:
        secret = page.locator("#totp-secret").inner_text().strip()
    else:
        user = portal.store.get_user(name)
        assert user is not None and user.totp_secret
        secret = user.totp_secret
    page.get_by_label("Code").fill(totp_code(secret, portal.clock()))
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(lambda url: "/signin/" not in url)


def read_qr(page, save_as: str | None = None) -> str:
    """The FIDO:/ URL in the QR code on the page, read from a screenshot by zxing-cpp."""
    page.locator("#qr").wait_for()
    png = page.screenshot(full_page=True)
    if save_as:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / save_as).write_bytes(png)
    found = [r.text for r in zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))]
    urls = [text for text in found if text.upper().startswith("FIDO:/")]
    assert len(urls) == 1, f"expected one FIDO:/ QR code on the page, found {found}"
    return urls[0]


def phone(
    portal: PortalUnderTest, relay_url: str, url: str, data_dir: Path, *, approve: bool = True
) -> subprocess.Popen:
    """``hybrid phone [--approve] --relay R --ble-port N --data-dir D URL`` as a subprocess."""
    argv = [str(BIN / "hybrid"), "phone", "--relay", relay_url, "--ble-port",
            str(portal.ble_port), "--data-dir", str(data_dir), "--timeout", "30", url]  # fmt: skip
    if approve:
        argv.insert(2, "--approve")
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    # A phone that asks its user needs a terminal: with stdin a plain pipe it declines at once.
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            argv, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(terminal)
    _TERMINALS[process.pid] = controller
    return process


# the controlling side of each asking phone's terminal, by process id
_TERMINALS: dict[int, int] = {}


def answer(process: subprocess.Popen, text: str) -> None:
    """Type ``text`` and Enter at an asking phone's prompt."""
    os.write(_TERMINALS[process.pid], text.encode() + b"\n")


def finish(process: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    controller = _TERMINALS.pop(process.pid, None)
    if controller is not None:
        os.close(controller)
    return process.returncode, err


def create_passkey_with_phone(page, portal, relay_url, phone_dir, *, save_as=None) -> str:
    """From a page with "Create a passkey": scan, approve on the phone, land on Security."""
    page.get_by_role("button", name="Create a passkey").click()
    url = read_qr(page, save_as)
    proc = phone(portal, relay_url, url, phone_dir)
    page.wait_for_url("**/settings/security", timeout=40_000)
    code, err = finish(proc)
    assert code == 0, err
    return url


def log_in_with_phone(page, portal, relay_url, phone_dir, name, *, save_as=None) -> None:
    page.goto(portal.url + "/signin")
    page.get_by_label("Username").fill(name)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Log in with passkey").click()
    url = read_qr(page, save_as)
    proc = phone(portal, relay_url, url, phone_dir)
    page.wait_for_url("**/home", timeout=40_000)
    code, err = finish(proc)
    assert code == 0, err


def wait_for_text(page, selector: str, text: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    locator = page.locator(selector)
    while time.monotonic() < deadline:
        if locator.count() and text in locator.first.inner_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{selector} never showed {text!r}; page says {page.inner_text('main')}")


class VirtualAuthenticator:
    """Chromium's virtual authenticator (DevTools ``WebAuthn`` domain) for "this device"."""

    def __init__(self, page, *, user_verified: bool = True, transport: str = "internal") -> None:
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("WebAuthn.enable", {"enableUI": False})
        self.transport = transport
        self.user_verified = user_verified
        self.id: str | None = None
        self.replace()

    def replace(self) -> None:
        """A new, empty authenticator (an exclude list would refuse the old one)."""
        if self.id is not None:
            self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.id})
        options = {
            "protocol": "ctap2",
            "transport": self.transport,
            "hasResidentKey": True,
            "hasUserVerification": True,
            "isUserVerified": self.user_verified,
            "automaticPresenceSimulation": True,
        }
        self.id = self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})[
            "authenticatorId"
        ]

    def credentials(self) -> list[dict]:
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.id})["credentials"]


def create_passkey_on_this_device(page) -> None:
    """ "Create a passkey" → "Use this device instead" → the browser's own create()."""
    page.get_by_role("button", name="Create a passkey").click()
    page.get_by_role("button", name="Use this device instead").click()
    page.wait_for_url("**/settings/security")


def problem(page) -> tuple[str, str]:
    """The error shown on the page: (title, message)."""
    alert = page.locator("[role=alert]:visible").first
    alert.wait_for(timeout=40_000)
    return alert.locator("h1, h2").first.inner_text().strip(), alert.locator(
        "p"
    ).first.inner_text().strip()


class TamperingAuthenticator:
    """The phone's real authenticator, with its answers changed on the way out (``mutate``)."""

    def __init__(self, inner, mutate) -> None:
        self.inner = inner
        self.mutate = mutate

    def get_info(self) -> bytes:
        return self.inner.get_info()

    async def handle(self, request: bytes) -> bytes:
        return self.mutate(await self.inner.handle(request))


def phone_in_thread(portal, relay_url, url, data_dir, *, approver=None, mutate=None):
    """A real ``PhoneSession`` in a thread, for phones the command line cannot play: one that
    cannot verify its user, or one whose answers are tampered with. Returns (thread, outcome)."""
    import threading

    import trio

    from hybrid.ble.loopback import LoopbackAdvertiser
    from hybrid.phone import (
        CredentialStore,
        PhoneDeadlines,
        PhoneSession,
        SoftwareAuthenticator,
        auto_approver,
    )

    outcome: dict = {}

    def main() -> None:
        store = CredentialStore(data_dir)
        try:
            authenticator = SoftwareAuthenticator(store, approver or auto_approver())
            if mutate is not None:
                authenticator = TamperingAuthenticator(authenticator, mutate)
            session = PhoneSession(
                url, authenticator, LoopbackAdvertiser(portal.ble_port), relay_url=relay_url,
                deadlines=PhoneDeadlines(desktop=30, user=30),
            )  # fmt: skip
            outcome["result"] = trio.run(session.run)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            store.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, outcome


def seed_passkey(portal, name: str) -> None:
    """A stored passkey whose private key no phone holds (for failures before any phone)."""
    import os

    from cryptography.hazmat.primitives.asymmetric import ec
    from fido2.cose import ES256
    from fido2.webauthn import Aaguid, AttestedCredentialData

    key = ec.generate_private_key(ec.SECP256R1())
    credential_id = os.urandom(32)
    data = AttestedCredentialData.create(
        Aaguid(bytes(16)), credential_id, ES256.from_cryptography_key(key.public_key())
    )
    user = portal.store.get_user(name)
    portal.store.add_passkey(
        user.id, credential_id=credential_id, credential_data=bytes(data), sign_count=0,
        kind="Phone via QR", name=None, now=portal.clock(), limit=5, actor="test", subject=name,
    )  # fmt: skip


def start_passkey_login(page, portal, name: str) -> None:
    page.goto(portal.url + "/signin")
    page.get_by_label("Username").fill(name)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Log in with passkey").click()


def csrf_of(html: str) -> str:
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in_over_http(request, portal, name: str, password: str = PASSWORD) -> str:
    """The same three forms as ``sign_in_with_password``, posted without rendering them (a
    browser context's ``request`` shares its cookies). Returns the final URL path."""
    page = request.get(portal.url + "/signin")
    csrf = csrf_of(page.text())
    response = request.post(portal.url + "/signin", form={"csrf": csrf, "username": name})
    if response.url.endswith("/signin/passkey"):
        response = request.get(portal.url + "/signin/password")
    response = request.post(
        portal.url + "/signin/password", form={"csrf": csrf, "password": password}
    )
    fresh_totp_step(portal)
    if response.url.endswith("/signin/enrol"):
        secret = response.text().split('aria-label="Secret key">')[1].split("<")[0]
        step = "/signin/enrol"
    else:
        assert response.url.endswith("/signin/code"), response.url
        secret, step = portal.store.get_user(name).totp_secret, "/signin/code"
    code = totp_code(secret, portal.clock())
    response = request.post(portal.url + step, form={"csrf": csrf, "code": code})
    return response.url.removeprefix(portal.url)


def sign_out_over_http(request, portal) -> None:
    csrf = csrf_of(request.get(portal.url + "/home").text())
    request.post(portal.url + "/signout", form={"csrf": csrf})
