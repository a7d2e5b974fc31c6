"""The scripts in ``examples/`` run as a newcomer runs them: real processes, a real relay, a real
phone.

A relay process listens on a free port; each example runs as a subprocess with ``--relay`` and a
free ``--ble-port``; every ``FIDO:/`` URL it prints is handed to a real ``hybrid phone --approve``
process, as a camera would. One run uses ``--with-local-phone`` instead (the one-command way).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_udp_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RUN_LIMIT = 25.0  # seconds for one example run, phones included


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    with log.open("wb") as sink:
        relay = subprocess.Popen(
            [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0"],
            stdout=sink,
            stderr=sink,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None:
            assert relay.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            for line in log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("event") == "listening":
                    port = json.loads(line)["port"]
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}"
    finally:
        relay.kill()
        relay.wait()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    phones: list[int] = field(default_factory=list)  # each phone's exit status


def run_example(
    script: str, *args: str, relay_url: str | None, phone_dir: Path | None, tmp_path: Path
) -> Run:
    """Run ``examples/<script>``; with ``relay_url``, answer each QR with ``hybrid phone``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYBRID_BLE_PORT", None)
    port = str(free_udp_port())
    argv = [sys.executable, str(EXAMPLES / script), *args]
    if relay_url is not None:
        argv += ["--relay", relay_url, "--ble-port", port]
    stderr_path = tmp_path / f"{script}.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path
        )
    killer = threading.Timer(RUN_LIMIT, process.kill)
    killer.start()
    phones: list[subprocess.Popen[bytes]] = []
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("FIDO:/") and relay_url is not None and phone_dir is not None:
                phones.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "hybrid", "phone", "--relay", relay_url,
                         "--ble-port", port, "--approve", "--data-dir", str(phone_dir),
                         line.strip()],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        env=env,
                    )
                )  # fmt: skip
        process.wait()
        statuses = [phone.wait(timeout=10) for phone in phones]
    finally:
        killer.cancel()
        for phone in phones:
            if phone.poll() is None:
                phone.kill()
    return Run(process.returncode, "".join(lines), stderr_path.read_text(), statuses)


def test_register_and_authenticate_with_cred_props_and_prf(
    relay_url: str, phone_dir: Path, tmp_path: Path
) -> None:
    run = run_example(
        "register_and_authenticate.py", "--cred-props", "--prf",
        relay_url=relay_url, phone_dir=phone_dir, tmp_path=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.phones == [0, 0]
    assert "New credential created!" in run.stdout
    assert "credProps: {'rk': False}" in run.stdout  # user_verification discouraged, rk not asked
    assert "prf enabled: True" in run.stdout
    assert "Credential authenticated!" in run.stdout
    assert "USER HANDLE: b'user_id'" in run.stdout
    assert re.search(r"^prf output: [0-9a-f]{64}$", run.stdout, re.M)
    assert "Traceback" not in run.stderr


def test_asyncio_app_awaits_both_ceremonies_while_its_loop_runs(
    relay_url: str, phone_dir: Path, tmp_path: Path
) -> None:
    run = run_example("asyncio_app.py", relay_url=relay_url, phone_dir=phone_dir, tmp_path=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.phones == [0, 0]
    registered = re.search(r"^registered: (\S+)$", run.stdout, re.M)
    signed_in = re.search(r"^signed in: (\S+)$", run.stdout, re.M)
    assert registered and signed_in and registered[1] == signed_in[1]
    assert run.stdout.count("[VerifiedByRelyingParty]") == 2
    beats = re.search(r"kept running: (\d+) heartbeats", run.stdout)
    assert beats and int(beats[1]) > 0


def test_progress_display_numbers_every_step(
    relay_url: str, phone_dir: Path, tmp_path: Path
) -> None:
    run = run_example(
        "progress_display.py", relay_url=relay_url, phone_dir=phone_dir, tmp_path=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    steps = re.findall(r"^\[(\d)/6\]", run.stdout, re.M)
    assert steps == ["1", "2", "3", "4", "5", "6"] * 2
    assert run.stdout.count("Done: example.com accepted your passkey") == 2


def test_progress_display_shows_a_failure_from_its_event(tmp_path: Path) -> None:
    # No phone at all: the advert deadline passes and the Failed event is displayed.
    run = run_example(
        "progress_display.py", "--timeout", "1", "--relay", "ws://127.0.0.1:9",
        "--ble-port", str(free_udp_port()), relay_url=None, phone_dir=None, tmp_path=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1
    assert "[ ! ] Passkey Request Timed Out" in run.stdout
    assert "no phone advert at all within 1 s" in run.stdout
    assert "Traceback" not in run.stderr


def test_with_local_phone_runs_in_one_command(tmp_path: Path) -> None:
    run = run_example(
        "register_and_authenticate.py", "--with-local-phone", "--prf",
        relay_url=None, phone_dir=None, tmp_path=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Credential authenticated!" in run.stdout
    assert re.search(r"^prf output: [0-9a-f]{64}$", run.stdout, re.M)
    assert "local relay on ws://127.0.0.1:" in run.stderr


def test_with_local_phone_and_relay_is_a_usage_error(tmp_path: Path) -> None:
    run = run_example(
        "asyncio_app.py", "--with-local-phone", "--relay", "ws://127.0.0.1:8080",
        relay_url=None, phone_dir=None, tmp_path=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "not allowed with argument" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "script", ["register_and_authenticate.py", "asyncio_app.py", "progress_display.py"]
)
def test_a_busy_ble_port_is_reported_without_a_traceback(
    script: str, ble_socket: socket.socket, tmp_path: Path
) -> None:
    # Another scanner holds the medium's port: the catalogue's entry, exit 1, and no QR code.
    port = str(ble_socket.getsockname()[1])
    run = run_example(script, "--ble-port", port, relay_url=None, phone_dir=None, tmp_path=tmp_path)
    assert run.returncode == 1
    assert "No compatible device found" in run.stdout + run.stderr
    assert f"cannot bind 127.0.0.1:{port}" in run.stdout + run.stderr
    assert "FIDO:/" not in run.stdout
    assert "Traceback" not in run.stderr
