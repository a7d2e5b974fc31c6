"""``Lab``: one Chromium with everything around it, and the steps of a ceremony through it.

Start order (TLS material is made first): private bus, fake BlueZ (also reading the loopback
medium's port), the relay, Xvfb, the page server, the forwarder Chromium reaches the relay
through, Chromium, and a second relay while Chromium boots. Stop order is the reverse, so Chromium
always stops before its bus (it aborts when its system bus disappears) and before Xvfb.

A ceremony: queue a WebAuthn call on the page, wait for a *new* ``FIDO:/`` QR code on the screen
(screenshot of the whole X display read by zxing-cpp: the dialog is browser UI, not page content),
start ``hybrid phone`` with that URL as a separate process, then collect the page's result and the
phone's exit status and stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chromium.bluez import FakeBluez
from chromium.page import PageServer
from chromium.processes import Chromium, Forwarder, PrivateBus, Relay, TlsMaterial, Xvfb

if TYPE_CHECKING:
    from PIL import Image

QR_TIMEOUT = 10.0
RESULT_TIMEOUT = 20.0
PICK_ATTEMPTS = 5  # Return presses to pick "Use a phone or tablet" (see start_ceremony)


@dataclass
class PhoneRun:
    """A finished (or killed) ``hybrid phone``."""

    returncode: int | None
    stderr: str
    seconds: float


class Lab:
    def __init__(self, directory: Path) -> None:
        from tests.conftest import free_udp_port

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.loopback_port = free_udp_port()
        self.bus = PrivateBus(directory)
        self.bluez = FakeBluez(self.bus.address, loopback_port=self.loopback_port)
        self.tls = TlsMaterial(directory)
        self.relay = Relay(self.tls, directory / "relay.log")
        self.forwarder = Forwarder(0)  # Chromium's way to the relay (target set at start)
        self.other = Relay(self.tls, directory / "other-relay.log")  # knows none of our tunnels
        self.xvfb = Xvfb()
        self.page = PageServer()
        self.chromium: Chromium | None = None
        self.last_qr: str | None = None
        self.case_dir = directory
        self.screenshots: list[Path] = []  # every screenshot saved, in order
        self._started: list[Any] = []

    def start(self) -> Lab:
        try:
            for part in (self.bus, self.bluez, self.relay, self.xvfb, self.page):
                part.start()
                self._started.append(part)
            self.forwarder.target = self.relay.port
            self._started.append(self.forwarder.start())
            self.chromium = Chromium(
                self.directory / "chromium",
                display=self.xvfb.display,
                bus_address=self.bus.address,
                relay_port=self.forwarder.port,
                spki_hash=self.tls.spki_hash,
                url=self.page.url,
                size=self.xvfb.size,
            )
            self.chromium.start()
            self._started.append(self.chromium)
            # Started while Chromium boots: a relay that knows none of the first one's tunnels.
            self._started.insert(0, self.other.start())
            if not self.page.wait_for_page(30):
                raise RuntimeError(
                    f"Chromium never loaded the page; log:\n{self.chromium.log()[-3000:]}"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Reverse start order: Chromium first (before its bus and display), the bus last but one.
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except Exception as exc:  # keep stopping the rest
                print(
                    f"chromium lab: stopping {type(part).__name__} failed: {exc}", file=sys.stderr
                )

    def settle(self) -> None:
        """Close whatever dialog a test left open, so the next test starts from the page."""
        for command_id in self.page.pending():
            for _ in range(3):
                self.key("Escape")
                if self.page.result(command_id, 3.0) is not None:
                    break
        if not self.forwarder.listening:
            self.forwarder.up()
        self.forwarder.target = self.relay.port

    def log_offset(self) -> int:
        """Where Chromium's log ends now; ``log_since`` reads what it wrote after that."""
        return self.chromium.log_file.stat().st_size if self.chromium else 0

    def log_since(self, offset: int) -> str:
        if self.chromium is None:
            return ""
        with open(self.chromium.log_file, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    # -- the screen ---------------------------------------------------------------------------

    def screenshot(self) -> Image.Image:
        from PIL import ImageGrab

        return ImageGrab.grab(xdisplay=self.xvfb.display)

    def save_screenshot(self, name: str) -> Path:
        path = self.directory / f"screen-{len(self.screenshots) + 1:02d}-{name}.png"
        self.screenshot().save(path)
        self.screenshots.append(path)
        return path

    def wait_for_log(self, pattern: str, since: int, timeout: float) -> str | None:
        """The first match of ``pattern`` in what Chromium logged after ``since``, or None."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_since(since))
            if match is not None:
                return match.group(0)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def start_ceremony(
        self, op: str, options: dict[str, Any], *, pick_phone: bool = False
    ) -> tuple[int, str]:
        """Queue a WebAuthn call on the page; its command id and the QR code Chromium shows.

        Chromium's device log says which dialog step it shows, so the screen is read only once
        the QR step is there (screenshots cost CPU that Chromium needs on a busy machine).
        ``pick_phone``: Chromium first shows its list of ways ("Use a phone or tablet", "USB
        security key") despite the hybrid hint, as it does for ``residentKey: "discouraged"``;
        its first entry has the focus, so Return picks the phone. Without ``pick_phone`` that
        list is a failure: Chromium changed its behaviour.
        """
        since = self.log_offset()
        command_id = self.page.run(op, options)
        step = self.wait_for_log(
            r"UI step: (kCableV2QRCode|kMechanismSelection)", since, QR_TIMEOUT
        )
        if step is not None and step.endswith("kMechanismSelection"):
            if not pick_phone:
                shot = self.save_screenshot("mechanism-list")
                raise AssertionError(
                    f"Chromium showed its list of ways instead of the QR code (see {shot})"
                )
            # The step is logged before the list is drawn and focused, so a key press can be
            # lost: press again until the QR step is logged (it is, at once, once one lands).
            for _ in range(PICK_ATTEMPTS):
                self.key("Return")
                if self.wait_for_log(r"UI step: kCableV2QRCode", since, 1.0):
                    break
        elif step is None:
            shot = self.save_screenshot("no-dialog")
            raise AssertionError(f"Chromium showed no QR dialog within {QR_TIMEOUT:g} s ({shot})")
        return command_id, self.read_qr()

    def read_qr(self, timeout: float = QR_TIMEOUT, *, same: bool = False) -> str:
        """The ``FIDO:/`` URL of a QR code on screen that differs from the last one read.

        ``same``: the QR code read last is still (or again) on screen.
        """
        import zxingcpp

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for barcode in zxingcpp.read_barcodes(self.screenshot()):
                text = barcode.text
                if text.upper().startswith("FIDO:/") and (text == self.last_qr) == same:
                    self.last_qr = text
                    return text
            time.sleep(0.1)
        shot = self.save_screenshot("no-qr")
        what = "the same" if same else "a new"
        raise AssertionError(
            f"{what} FIDO:/ QR code not on screen within {timeout:g} s (see {shot})"
        )

    def key(self, *keys: str) -> None:
        subprocess.run(
            ["xdotool", "key", *keys],
            env=dict(os.environ, DISPLAY=self.xvfb.display),
            check=True,
            timeout=10,
        )

    # -- the phone ----------------------------------------------------------------------------

    def phone_command(
        self,
        url: str,
        data_dir: Path,
        *,
        medium: str = "loopback",
        approve: bool = True,
        relay_url: str | None = None,
        timeout: float = 20.0,
        extra: tuple[str, ...] = (),
    ) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "hybrid",
            "phone",
            "--relay",
            relay_url or self.relay.url,
            "--data-dir",
            str(data_dir),
            "--ble",
            medium,
            "--timeout",
            f"{timeout:g}",
        ]
        if medium == "loopback":
            args += ["--ble-port", str(self.loopback_port)]
        if approve:
            args.append("--approve")
        return [*args, *extra, url]

    def phone_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SSL_CERT_FILE=str(self.tls.ca_file),  # trust the throwaway CA, nothing else
            DBUS_SYSTEM_BUS_ADDRESS=self.bus.address,  # `--ble bluez` finds our fake BlueZ
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_phone(
        self, url: str, data_dir: Path, *, stdin: Any = subprocess.DEVNULL, **options: Any
    ) -> subprocess.Popen:
        return subprocess.Popen(
            self.phone_command(url, data_dir, **options),
            env=self.phone_env(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # -- a whole ceremony ---------------------------------------------------------------------

    def _result_after_account_choice(self, command_id: int, since: int) -> dict[str, Any] | None:
        """The page's result; first confirm the account if Chromium asks which one to use.

        Our phone sets ``userSelected`` only when its user picked among several accounts, so after
        a discoverable sign-in Chromium lists the one account it got and waits for a click, as it
        does for any phone that leaves the choice to the browser. The list has the focus: Return
        picks the account. The step is logged before the list is focused, so press until it lands.
        """
        if self.wait_for_log(r"UI step: kSelectAccount", since, 1.0) is None:
            return self.page.result(command_id, RESULT_TIMEOUT)
        for _ in range(PICK_ATTEMPTS):
            self.key("Return")
            result = self.page.result(command_id, 1.0)
            if result is not None:
                return result
        return self.page.result(command_id, RESULT_TIMEOUT)

    def ceremony(
        self,
        op: str,
        options: dict[str, Any],
        data_dir: Path,
        *,
        stdin_text: str | None = None,
        pick_phone: bool = False,
        **phone_options: Any,
    ) -> tuple[dict[str, Any], PhoneRun]:
        """Run one create/get through Chromium and our phone; the page's result and the phone's."""
        since = self.log_offset()
        command_id, url = self.start_ceremony(op, options, pick_phone=pick_phone)
        started = time.monotonic()
        phone = self.start_phone(
            url,
            data_dir,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            **phone_options,
        )
        try:
            _, stderr = phone.communicate(stdin_text, timeout=RESULT_TIMEOUT)
        except subprocess.TimeoutExpired:
            phone.kill()
            _, stderr = phone.communicate()
        run = PhoneRun(phone.returncode, stderr, time.monotonic() - started)
        result = self._result_after_account_choice(command_id, since)
        if result is None:
            shot = self.save_screenshot(f"no-result-{command_id}")
            raise AssertionError(
                f"the page got no result for {op} (screenshot {shot}); phone exited "
                f"{run.returncode}:\n{run.stderr}"
            )
        return result, run
