"""Pytest fixtures for the Chromium tests; a test module imports them by name.

``chromium_lab`` starts one ``Lab`` for the whole run: everything must stay well under a minute, so
the browser, its display, bus, fake BlueZ, relay and page server are shared by all Chromium tests,
and each test only runs ceremonies through them. (Test modules bind the fixture to a module-level
name, which gives each module its own fixture definition, so the lab itself is kept here; it is
stopped after the last module that uses it, or at the latest when pytest finishes.)
``chromium_case`` (autouse in the test modules) gives each test a clean dialog state and, when the
test failed, saves a screenshot and the part of Chromium's log (with the device event log) written
during the test into a fresh ``/tmp/chromium-artefacts-<test>-*`` directory (outside pytest's
basetemp, which keeps only the last few runs of everyone on the machine), then prints its path.

Missing Chromium/Xvfb/dbus-daemon/xdotool skips the tests on a developer machine and fails them
under CI (``CI=true``): a browser test must not silently stop running there.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chromium.harness import Lab
from chromium.processes import missing_tools, under_ci

_lab: Lab | None = None


@pytest.fixture(scope="module")
def chromium_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    global _lab
    if _lab is None:
        missing = missing_tools()
        if missing:
            why = f"Chromium tests need {', '.join(missing)} (see .ci/apt.d/chromium.txt)"
            if under_ci():
                pytest.fail(why)
            pytest.skip(why)
        lab = Lab(tmp_path_factory.mktemp("chromium-lab")).start()
        request.config.add_cleanup(lab.stop)  # in any case, at the very end
        _lab = lab
    yield _lab
    # Stop as soon as no later test needs Chromium: an idle browser must not slow the rest of
    # the suite (timing-sensitive relay tests run after these).
    items = request.session.items
    here = [n for n, item in enumerate(items) if getattr(item, "module", None) is request.module]
    later = items[max(here) + 1 :] if here else []
    if not any("chromium_lab" in getattr(item, "fixturenames", ()) for item in later):
        _lab.stop()
        _lab = None


@pytest.fixture
def chromium_case(
    chromium_lab: Lab, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Lab]:
    lab = chromium_lab
    browser = lab.chromium
    if browser is not None and browser.process is not None and browser.process.poll() is not None:
        pytest.fail(f"Chromium exited with {browser.process.returncode}; log: {browser.log_file}")
    log_start = lab.log_offset()
    shots_before = len(lab.screenshots)
    failed_before = request.session.testsfailed
    lab.case_dir = tmp_path
    yield lab
    if request.session.testsfailed > failed_before:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
        artefacts = Path(tempfile.mkdtemp(prefix=f"chromium-artefacts-{name}-"))
        try:
            lab.screenshot().save(artefacts / "screen.png")
        except Exception as exc:  # the display may be what broke
            (artefacts / "screen-error.txt").write_text(repr(exc))
        (artefacts / "chromium-device.log").write_text(lab.log_since(log_start))
        for shot in lab.screenshots[shots_before:]:  # the ones this test took
            shutil.copy(shot, artefacts)
        (artefacts / "bluez-calls.txt").write_text("\n".join(lab.bluez.chromium_calls()))
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        line = f"chromium artefacts for {request.node.name}: {artefacts}"
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)
    lab.settle()
