"""`hybrid demo`, the README's first command: a relay, a desktop and a phone on this machine;
register a passkey, then sign in.

``run_demo`` starts a relay on 127.0.0.1 (in this process, on trio), then for each ceremony runs
``hybrid desktop`` and ``hybrid phone`` as two separate processes that meet only through the
loopback BLE medium and the relay, exactly as two devices would. The desktop's first stdout line is
the ``FIDO:/`` URL; the demo hands it to the phone the way a camera would, shows the desktop's QR
code, echoes every step each side reports with its duration, and ends with one plain sentence
saying whether the relying party verified the assertion. Exit status 0 only if it did.

With ``--json FILE`` (``json_path``) it also writes both verified responses in the standard
WebAuthn JSON serialization, with their challenges, so that any WebAuthn server library can
re-verify them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from hybrid.ble.loopback import PORT_ENV_VAR, resolve_port
from hybrid.cli.args import seconds_arg
from hybrid.cli.desktop import DEFAULT_TIMEOUT, add_ble_port
from hybrid.errors import EnvironmentalError
from hybrid.trio_util import single_exceptions, text_lines

URL_WAIT = 20.0  # the desktop process starting up and printing its URL
CEREMONY_WAIT = 120.0  # one whole ceremony, both processes


class DemoError(EnvironmentalError):
    """The demo itself could not run (a process died before saying why)."""


@dataclass
class DemoConfig:
    rp_id: str = "example.com"
    user: str = "alice"
    data_dir: Path | None = None
    ble_port: int | None = None
    timeout: float = 60.0
    json_path: Path | None = None
    show_qr: bool = True

    @property
    def origin(self) -> str:
        return f"https://{self.rp_id}"


@dataclass
class CeremonyOutcome:
    action: str
    desktop_code: int
    phone_code: int
    seconds: float
    document: dict[str, Any] | None = None
    error: str = ""

    @property
    def verified(self) -> bool:
        return self.desktop_code == 0 and self.document is not None


@dataclass
class DemoReport:
    relay_url: str
    ceremonies: list[CeremonyOutcome] = field(default_factory=list)
    reused_passkey: bool = False  # --data-dir already held the passkey: no registration ran

    @property
    def verified(self) -> bool:
        wanted = ("login",) if self.reused_passkey else ("register", "login")
        return tuple(c.action for c in self.ceremonies) == wanted and all(
            c.verified for c in self.ceremonies
        )

    def to_json(self, rp_id: str, origin: str) -> dict[str, Any]:
        documents = {c.action: c.document or {} for c in self.ceremonies}

        def part(action: str) -> dict[str, Any] | None:
            if action not in documents:
                return None  # a reused passkey: this run registered nothing
            document = documents[action]
            return {"challenge": document.get("challenge"), "response": document.get("response")}

        return {
            "rp_id": rp_id,
            "origin": origin,
            "registration": part("register"),
            "authentication": part("login"),
        }


Say = Callable[[str], None]


def _say_to_stdout(line: str) -> None:
    print(line, flush=True)


class _Child:
    """One ``python -m hybrid ...`` process whose output is echoed line by line."""

    def __init__(self, name: str, argv: list[str], say: Say) -> None:
        self.name = name
        self.argv = argv
        self.say = say
        self.process: trio.Process | None = None
        self.last_error = ""

    async def start(self) -> trio.Process:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "hybrid", *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        return self.process

    async def echo_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in text_lines(self.process.stderr):
            text = line.strip()
            if text.startswith("hybrid: error:"):
                self.last_error = text.removeprefix("hybrid: error:").strip()
                self.say(f"  [{self.name}] ERROR {self.last_error}")
            elif text.startswith(f"{self.name}: "):
                self.say(f"  [{self.name}] {text.removeprefix(self.name + ': ')}")
            elif text:
                self.say(f"  [{self.name}] {text}")

    async def stop(self) -> int:
        assert self.process is not None
        code = -1
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.kill()
            code = await self.process.wait()
        return code


async def _ceremony(
    action: str,
    relay_url: str,
    config: DemoConfig,
    data_dir: Path,
    port: int,
    say: Say,
) -> CeremonyOutcome:
    started = time.perf_counter()
    result_path = data_dir / f"{action}.json"
    result_path.unlink(missing_ok=True)
    common = ["--relay", relay_url, "--ble-port", str(port), "--timeout", str(config.timeout)]
    desktop = _Child(
        "desktop",
        ["desktop", action, "--rp-id", config.rp_id, "--user", config.user,
         "--data-dir", str(data_dir / "desktop"), "--json", str(result_path), *common]
        + ([] if config.show_qr else ["--no-qr"]),
        say,
    )  # fmt: skip
    phone_code = -1
    desktop_code = -1
    try:
        process = await desktop.start()
        assert process.stdout is not None
        desktop_lines = text_lines(process.stdout)
        url = None
        with trio.move_on_after(URL_WAIT):
            async for line in desktop_lines:
                url = line.strip()
                break
        if not url or not url.upper().startswith("FIDO:/"):
            desktop_code = await desktop.stop()
            assert process.stderr is not None
            with trio.move_on_after(1):
                await desktop.echo_stderr()
            return CeremonyOutcome(
                action, desktop_code, phone_code, time.perf_counter() - started, None,
                desktop.last_error or "the desktop printed no FIDO:/ URL",
            )  # fmt: skip
        say(f"  [desktop] showing the QR code for {url[:24]}... ({len(url)} characters)")
        phone = _Child(
            "phone",
            ["phone", "--approve", "--data-dir", str(data_dir / "phone"), *common, url],
            say,
        )

        async def echo_stdout() -> None:
            async for line in desktop_lines:
                if line.startswith("verified:"):
                    say(f"  [desktop] {line}")
                elif config.show_qr:
                    say("      " + line)

        timed_out = False
        with single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(desktop.echo_stderr)
                nursery.start_soon(echo_stdout)
                say("  [phone] scanning the QR code; the request is approved (--approve)")
                phone_process = await phone.start()
                nursery.start_soon(phone.echo_stderr)
                try:
                    with trio.move_on_after(CEREMONY_WAIT) as scope:
                        phone_code = await phone_process.wait()
                        desktop_code = await process.wait()
                    timed_out = scope.cancelled_caught
                finally:
                    await phone.stop()
                    await desktop.stop()
        if timed_out:
            raise DemoError(f"the {action} ceremony took more than {CEREMONY_WAIT:g} s")
    finally:
        if desktop.process is not None:
            await desktop.stop()
    document = None
    if desktop_code == 0 and result_path.exists():
        document = json.loads(result_path.read_text())
    return CeremonyOutcome(
        action,
        desktop_code,
        phone_code,
        time.perf_counter() - started,
        document,
        desktop.last_error,
    )


async def run_demo(config: DemoConfig, say: Say = _say_to_stdout) -> DemoReport:
    """Relay + two processes per ceremony; returns what happened (never raises for a failure of
    the flow itself: that is reported)."""
    from relay.server import RelayConfig, serve

    port = _demo_port(config.ble_port, say)
    with tempfile.TemporaryDirectory(prefix="hybrid-demo-") as scratch:
        data_dir = config.data_dir or Path(scratch)
        data_dir.mkdir(parents=True, exist_ok=True)
        async with trio.open_nursery() as nursery:
            started = time.perf_counter()
            relay = await nursery.start(serve, RelayConfig(host="127.0.0.1", port=0))
            report = DemoReport(relay.base_url)
            say(f"relay listening on {relay.base_url} ({time.perf_counter() - started:.3f} s)")
            say(f"loopback BLE medium on udp://127.0.0.1:{port}; data in {data_dir}")
            ceremonies = [("register", "Register a passkey"), ("login", "Sign in")]
            if _has_passkey(config, data_dir):
                report.reused_passkey = True
                ceremonies = ceremonies[1:]
                say(
                    f"{config.user} already has a passkey for {config.rp_id} in {data_dir}: "
                    "reusing it (no registration)"
                )
            for action, title in ceremonies:
                say("")
                say(f"== {title} for {config.user} at {config.rp_id} ==")
                outcome = await _ceremony(action, relay.base_url, config, data_dir, port, say)
                report.ceremonies.append(outcome)
                state = "verified" if outcome.verified else "FAILED"
                say(f"== {title}: {state} in {outcome.seconds:.2f} s ==")
                if not outcome.verified:
                    break
            nursery.cancel_scope.cancel()
    return report


def _has_passkey(config: DemoConfig, data_dir: Path) -> bool:
    """Whether an earlier run left a registered passkey for the user in ``data_dir``."""
    from hybrid.catalogue import PasskeyError
    from hybrid.rp import RelyingParty

    if not (data_dir / "desktop").is_dir():
        return False
    try:
        RelyingParty(config.rp_id, config.origin, data_dir / "desktop").begin_authentication(
            config.user
        )
    except PasskeyError:
        return False
    return True


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _demo_port(requested: int | None, say: Say) -> int:
    """The medium's port; the demo owns both ends, so a busy *default* port is swapped for a free
    one rather than failing (an explicit ``--ble-port`` / ``$HYBRID_BLE_PORT`` is always used)."""
    port = resolve_port(requested)
    explicit = requested is not None or os.environ.get(PORT_ENV_VAR, "").strip()
    if explicit or _port_is_free(port):
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free: int = probe.getsockname()[1]
    say(f"loopback BLE port {port} is busy; the demo uses {free} for both of its processes")
    return free


def conclusion(report: DemoReport, config: DemoConfig) -> str:
    """The demo's last sentence."""
    if report.verified:
        how = (
            "signed in with the passkey registered in an earlier run"
            if report.reused_passkey
            else "registered a passkey on the phone and signed in with it"
        )
        return (
            f"RESULT: the relying party {config.rp_id} verified the assertion: {config.user} "
            f"{how} over hybrid."
        )
    failed = next((c for c in report.ceremonies if not c.verified), None)
    why = ""
    if failed is not None:
        why = f" ({failed.action}: {failed.error or 'exit code ' + str(failed.desktop_code)})"
    return "RESULT: the relying party did NOT verify the assertion" + why + "."


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run relay, desktop and phone locally: register a passkey, then sign in",
        description="Start a relay on 127.0.0.1, then a desktop and a phone as two processes "
        "that find each other over the loopback BLE medium; register a passkey and sign in.",
    )
    parser.add_argument(
        "--rp-id",
        default="example.com",
        metavar="ID",
        help="relying party ID (default: %(default)s)",
    )
    parser.add_argument(
        "--user", default="alice", metavar="NAME", help="account name (default: %(default)s)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="keep desktop and phone state here; a second run with the same DIR reuses the "
        "passkey and only signs in (default: a fresh temporary directory)",
    )
    add_ble_port(parser)
    parser.add_argument(
        "--timeout",
        type=seconds_arg,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"per-wait deadline in seconds (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write both verified responses as JSON (default: none)",
    )
    parser.add_argument(
        "--no-qr", action="store_true", help="do not draw the QR code (default: draw it)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        rp_id=args.rp_id,
        user=args.user,
        data_dir=args.data_dir,
        ble_port=args.ble_port,
        timeout=args.timeout,
        json_path=args.json,
        show_qr=not args.no_qr,
    )
    with single_exceptions():
        report = trio.run(run_demo, config)
    print()
    print(conclusion(report, config), flush=True)
    if args.json is not None and report.verified:
        document = report.to_json(config.rp_id, config.origin)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        what = "the sign-in response" if report.reused_passkey else "both responses"
        print(f"wrote {what} to {args.json}", flush=True)
    if report.verified:
        return 0
    failed = next((c for c in report.ceremonies if not c.verified), None)
    # The desktop's own status says which catalogue failure it was; anything else is generic.
    return failed.desktop_code if failed is not None and failed.desktop_code > 0 else 1
