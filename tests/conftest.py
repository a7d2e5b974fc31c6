"""Shared test setup: Hypothesis profiles, CI rules, a real relay, free ports, data dirs.

Hypothesis profiles are chosen here and only here: ``dev`` (the default, fast enough for everyday
runs) or ``ci`` (thorough; selected when ``CI=true``, as ``.ci/run`` sets it). The environment
variable ``HYPOTHESIS_PROFILE`` overrides the choice (``HYPOTHESIS_PROFILE=ci ./dev test ...``).
Tests do not set their own example counts; one whose examples are expensive takes a share of the
profile's count with ``examples(fraction)``.

Something a test needs but cannot find (a Debian package, the support article) is a skip on a
developer machine and a failure in CI: ``skip_unless_ci_must_have``.

The relay is started in-process through ``relay.server.serve`` (port 0, so tests never collide),
on the engine ``HYBRID_TEST_RELAY_ENGINE`` names ("reactor" or "tasks"; unset: the config default,
"auto"); see ``tests/relay_helpers.py``.
The loopback BLE medium in this process runs on ``ble_socket``, a UDP socket bound to a free port
and held for the whole test, so no other test can take the port meanwhile. Only a test that hands
the port to a *sub-process* (which must bind it itself) uses ``ble_port``, a port that was free a
moment ago, also exported as ``HYBRID_BLE_PORT``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=1500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "dev"))


def examples(fraction: float) -> int:
    """This share of the active profile's example count (at least 10), for expensive examples."""
    return max(10, int(settings.default.max_examples * fraction))


def skip_unless_ci_must_have(present: bool, what: str) -> None:
    """Skip when ``what`` is missing on a developer machine; fail when it is missing in CI.

    CI (``CI=true``, see ``.ci/run``) installs everything the tests need, so a missing piece there
    is a broken setup, never a reason to skip silently.
    """
    if present:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing in CI (CI=true): the CI setup must provide it")
    pytest.skip(f"{what} is missing (outside CI this test is skipped)")


@pytest.fixture
def ble_socket() -> Iterator[socket.socket]:
    """A UDP socket bound to a free port on 127.0.0.1, held until the test ends."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing was bound to a moment ago (for sub-processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ble_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_udp_port()
    monkeypatch.setenv("HYBRID_BLE_PORT", str(port))
    return port


@pytest.fixture
def desktop_dir(tmp_path: Path) -> Path:
    path = tmp_path / "desktop"
    path.mkdir()
    return path


@pytest.fixture
def phone_dir(tmp_path: Path) -> Path:
    path = tmp_path / "phone"
    path.mkdir()
    return path


@pytest.fixture
async def relay(nursery):
    """A real relay on 127.0.0.1 (random port); ``.base_url`` is ``ws://127.0.0.1:PORT``."""
    from relay.server import serve
    from tests.relay_helpers import relay_config

    running = await nursery.start(serve, relay_config(host="127.0.0.1", port=0))
    yield running
