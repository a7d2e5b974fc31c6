"""Fixtures and helpers for the portal: real relay, real PostgreSQL, the portal, Chromium.

* ``relay_url``: ``hybrid-relay --port 0`` as a subprocess for the whole session; its port comes
  from its JSON "listening" log line.
* ``postgres``: a throw-away PostgreSQL cluster (Debian's binaries, ``initdb`` as the
  ``postgres`` user when we are root) on a free port on 127.0.0.1, one fresh database per test.
* ``make_portal``: ``serve_portal`` on trio in a background thread, with a ``ManualClock`` the test
  moves, on a free port, with its own free loopback BLE port.
* ``browser``: Debian's ``/usr/bin/chromium`` through Playwright (no browser download).

Outside CI a missing Chromium or PostgreSQL skips the tests that need it; under ``CI=true`` it
fails them instead.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from hybrid.portal import ManualClock, PortalConfig, RunningPortal, serve_portal
from hybrid.portal.phone_flow import PhoneSettings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("PORTAL_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO / "build" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(why: str) -> None:
    """Skip outside CI, fail in CI: a missing dependency must not hide tests there."""
    if IN_CI:
        pytest.fail(f"{why} (CI must provide it: see .ci/apt.d/portal.txt)")
    pytest.skip(why)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- relay ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "hybrid-relay"), "--host", "127.0.0.1", "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline and process.poll() is None:
            for line in log.read_text(errors="replace").splitlines():
                if '"listening"' in line:
                    port = json.loads(line[line.index("{") :])["port"]
            time.sleep(0.05)
        assert port is not None, f"the relay did not start: {log.read_text()}"
        yield f"ws://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


# ---- PostgreSQL ----------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    count: int = 0

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        self.count += 1
        name = f"portal_test_{os.getpid()}_{self.count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = _pg_bin()
    if bindir is None:
        unavailable("PostgreSQL server binaries not installed (Debian package postgresql)")
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="portal-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    as_user: dict[str, object] = {}
    if os.geteuid() == 0:
        # initdb and postgres refuse to run as root. Dropping privileges in the child itself (no
        # runuser in between) lets our signals reach postgres.
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": [], "cwd": root}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **as_user,
    )  # fmt: skip
    port = free_tcp_port()
    process = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
        stdout=subprocess.DEVNULL, stderr=(root / "postgres.log").open("wb"), **as_user,
    )  # fmt: skip
    try:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(Postgres(port).url("postgres"), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(
                        "PostgreSQL did not start: " + (root / "postgres.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield Postgres(port)
    finally:
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'portal.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()


# ---- the portal ----------------------------------------------------------------------------------


@dataclass
class PortalUnderTest:
    """A portal serving from a background thread, and what a test needs to drive it."""

    config: PortalConfig
    clock: ManualClock
    running: RunningPortal | None = None
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _token: trio.lowlevel.TrioToken | None = None
    _scope: trio.CancelScope | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url.rstrip("/")

    @property
    def store(self):
        assert self.running is not None
        return self.running.portal.store

    @property
    def ble_port(self) -> int:
        assert self.config.phone.ble_port is not None
        return self.config.phone.ble_port

    def start(self) -> PortalUnderTest:
        self._thread = threading.Thread(target=self._main, daemon=True, name="portal")
        self._thread.start()
        assert self._ready.wait(30), "the portal did not start within 30 s"
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        async def run() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self.running = await nursery.start(serve_portal, self.config)
                self._ready.set()

        try:
            trio.run(run)
        except BaseException as exc:  # reported to the test thread by start()
            self.error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(15)


@pytest.fixture
def make_portal(relay_url: str, tmp_path: Path) -> Iterator[Callable[..., PortalUnderTest]]:
    started: list[PortalUnderTest] = []

    def make(
        db_url: str | None = None, *, relay: str | None = None, timeout: float = 30.0,
        idle_timeout: float = 600.0, **overrides: object,
    ) -> PortalUnderTest:  # fmt: skip
        clock = ManualClock()
        config = PortalConfig(
            db_url=db_url or f"sqlite:///{tmp_path / 'portal.sqlite3'}",
            port=0,
            phone=PhoneSettings(
                relay_url=relay or relay_url, ble_port=free_udp_port(), timeout=timeout
            ),
            idle_timeout=idle_timeout,
            clock=clock,
            **overrides,  # type: ignore[arg-type]
        )
        portal = PortalUnderTest(config, clock).start()
        started.append(portal)
        return portal

    yield make
    for portal in started:
        portal.stop()


# ---- the browser ---------------------------------------------------------------------------------


# Package scope: Playwright's sync API keeps an asyncio loop running in this thread while it is
# open, which would break later tests that call asyncio.run().
@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} not found (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()
