"""Shared by the examples: their command line, and ``--with-local-phone``.

Every example scans the loopback BLE medium (``--ble-port``) and reaches its phone through a
relay (``--relay``). Run a relay and a phone yourself in other terminals::

    hybrid-relay --port 8080
    hybrid phone --relay ws://127.0.0.1:8080 --approve --data-dir /tmp/phone 'FIDO:/...'

or pass ``--with-local-phone``: ``LocalPhone`` then starts a relay (``python -m relay``, free
port) and, for every QR code the example shows, ``hybrid phone --approve`` as a background process
that reads the URL the way a camera would. Its passkeys live in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

RELAY_START = 20.0  # seconds for the relay process to start listening


def parse_args(description: str, *extra: tuple[str, dict]) -> argparse.Namespace:
    """The options every example takes, plus ``extra`` (``("--flag", {argparse kwargs})``)."""
    parser = argparse.ArgumentParser(description=description)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--relay",
        default="ws://127.0.0.1:8080",
        help="the relay the phone uses (default: ws://127.0.0.1:8080, 'hybrid-relay --port 8080')",
    )
    where.add_argument(
        "--with-local-phone",
        action="store_true",
        help="start a relay and 'hybrid phone --approve' in the background (one command demo)",
    )
    parser.add_argument(
        "--ble-port",
        type=int,
        default=None,
        help="loopback BLE medium port (default: $HYBRID_BLE_PORT or 47474)",
    )
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def free_udp_port() -> int:
    """A port nobody holds now, for a private loopback BLE medium."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class LocalPhone:
    """A relay process and one ``hybrid phone --approve`` process per QR code shown."""

    def __init__(self, ble_port: int | None = None) -> None:
        # A private medium port: another desktop scanning the default port must not see our phone.
        self.ble_port = ble_port if ble_port is not None else free_udp_port()
        self._scratch = tempfile.TemporaryDirectory(prefix="hybrid-example-")
        self._dir = Path(self._scratch.name)
        self._relay: subprocess.Popen[bytes] | None = None
        self._phones: list[subprocess.Popen[bytes]] = []
        self.relay_url = ""

    def __enter__(self) -> LocalPhone:
        log = self._dir / "relay.log"
        with log.open("wb") as sink:
            self._relay = subprocess.Popen(
                [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0"],
                stdout=sink,
                stderr=sink,
            )
        deadline = time.monotonic() + RELAY_START
        while not self.relay_url:
            for line in log.read_text().splitlines():
                record = _json(line)
                if record.get("event") == "listening":
                    self.relay_url = f"ws://127.0.0.1:{record['port']}"
            if self._relay.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the local relay did not start:\n{log.read_text()}")
            time.sleep(0.05)
        print(f"(local relay on {self.relay_url}, BLE port {self.ble_port})", file=sys.stderr)
        return self

    def scan(self, url: str) -> None:
        """Hand ``url`` to a new phone process, as if its camera had read the QR code."""
        stderr = (self._dir / f"phone-{len(self._phones)}.log").open("wb")
        self._phones.append(
            subprocess.Popen(
                [sys.executable, "-m", "hybrid", "phone", "--relay", self.relay_url,
                 "--ble-port", str(self.ble_port), "--approve",
                 "--data-dir", str(self._dir / "phone"), url],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        )  # fmt: skip

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in [*self._phones, self._relay]:
            if process is None:
                continue
            if process is not self._relay:
                try:
                    process.wait(timeout=5)  # a phone exits by itself once it has answered
                except subprocess.TimeoutExpired:
                    pass
            if process.poll() is None:
                process.kill()
                process.wait()
        self._scratch.cleanup()


def _json(line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
