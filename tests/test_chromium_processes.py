"""The Chromium lab's line reader: lines a child wrote together are all read, none waited for.

``tests/chromium/processes.py`` reads a relay's start-up log with a deadline. A relay that writes
its warning and its "listening" line in one go must still be seen listening at once; the reader
that selected on a buffered file object waited out its whole deadline instead (a CI run failed
all Chromium tests on it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from chromium.processes import _Lines

TWO_LINES_THEN_WAIT = (
    "import sys, time\n"
    "sys.stderr.write('first\\nsecond\\nthird')\n"
    "sys.stderr.flush()\n"
    "time.sleep(float(sys.argv[1]))\n"
)


def _child(seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TWO_LINES_THEN_WAIT, str(seconds)],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_lines_written_together_are_read_without_waiting() -> None:
    child = _child(30)
    try:
        reader = _Lines(child.stderr)
        started = time.monotonic()
        assert reader.read_line(10, "child") == "first\n"
        assert reader.read_line(10, "child") == "second\n"
        assert time.monotonic() - started < 5
        with pytest.raises(RuntimeError, match="child printed nothing within 1 s"):
            reader.read_line(1, "child")  # "third" has no newline yet
    finally:
        child.kill()
        child.wait()


def test_an_unfinished_last_line_and_exit(tmp_path: Path) -> None:
    child = _child(0)
    reader = _Lines(child.stderr)
    assert reader.read_line(10, "child") == "first\n"
    reader.read_line(10, "child")
    assert reader.read_line(10, "child") == "third"
    with pytest.raises(RuntimeError, match="child exited before it was ready"):
        reader.read_line(10, "child")
    child.wait()


def test_what_was_buffered_reaches_the_log(tmp_path: Path) -> None:
    child = _child(0)
    reader = _Lines(child.stderr)
    assert reader.read_line(10, "child") == "first\n"
    log = tmp_path / "child.log"
    reader.drain_to(log)
    child.wait()
    deadline = time.monotonic() + 10

    def logged() -> str:
        return log.read_text() if log.exists() else ""

    while logged() != "second\nthird" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged() == "second\nthird"
