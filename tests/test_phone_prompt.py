"""`hybrid phone`'s terminal prompt, abandoned while stdin is a pipe (issue 12, point 6).

The phone asks "[y/N]" on the terminal; here its stdin is a pipe nobody writes to. When the prompt
is abandoned (the desktop hangs up, or the user deadline passes) the process must exit with its
catalogue code: no ``Fatal Python error`` about stdin's lock and no SIGABRT, which a reader thread
left blocked in ``input()`` caused.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import trio

from hybrid.catalogue import Operation
from hybrid.phone.approval import ApprovalRequest, read_terminal_line, terminal_approver

HYBRID = [sys.executable, "-m", "hybrid"]


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes, into: bytearray) -> None:
    while marker not in into:
        chunk = await stream.receive_some(4096)
        assert chunk, f"stream ended before {marker!r}: {bytes(into)!r}"
        into += chunk


async def _drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some(4096):
        into += chunk


async def _prompting_phone(relay_url: str, ble_port: int, tmp_path, timeout: str):
    """A desktop registering, and a phone without --approve that has shown its prompt."""
    common = ["--relay", relay_url, "--ble-port", str(ble_port)]
    desktop = await trio.lowlevel.open_process(
        [*HYBRID, "desktop", "register", "--rp-id", "example.com", "--user", "alice",
         "--data-dir", str(tmp_path / "d"), "--timeout", "20", "--no-qr", *common],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    line = bytearray()
    await _read_until(desktop.stdout, b"\n", line)
    url = bytes(line).split(b"\n", 1)[0].decode().strip()
    phone = await trio.lowlevel.open_process(
        [*HYBRID, "phone", "--data-dir", str(tmp_path / "p"), "--timeout", timeout, *common, url],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    err = bytearray()
    await _read_until(phone.stderr, b"Passkey request:", err)
    return desktop, phone, err


async def _stop(*processes) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_phone_exits_cleanly_when_the_desktop_hangs_up_during_the_prompt(
    relay, ble_port, tmp_path
) -> None:
    desktop = phone = None
    try:
        with trio.fail_after(30):
            desktop, phone, err = await _prompting_phone(relay.base_url, ble_port, tmp_path, "20")
            desktop.kill()  # the desktop goes away; the relay tells the phone (1001)
            await desktop.wait()
            await _drain(phone.stderr, err)
            code = await phone.wait()
    finally:
        await _stop(*(p for p in (desktop, phone) if p is not None))
    text = err.decode()
    assert "Fatal Python error" not in text and "Traceback" not in text, text
    # A closed tunnel is the computer no longer waiting: "Session Expired" (issue 9 §2, §4).
    assert code == 19, (code, text)
    assert "it closed the tunnel while you were deciding" in text, text


async def test_phone_exits_cleanly_when_the_user_deadline_passes(relay, ble_port, tmp_path) -> None:
    desktop = phone = None
    try:
        with trio.fail_after(30):
            desktop, phone, err = await _prompting_phone(relay.base_url, ble_port, tmp_path, "3")
            await _drain(phone.stderr, err)
            code = await phone.wait()
            await desktop.wait()
    finally:
        await _stop(*(p for p in (desktop, phone) if p is not None))
    text = err.decode()
    assert "Fatal Python error" not in text and "Traceback" not in text, text
    assert code == 0, (code, text)
    assert "USER_ACTION_TIMEOUT" in text, text


async def test_terminal_line_is_read_from_a_pipe_and_cancellable() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with trio.move_on_after(0.2) as scope:
            await read_terminal_line(read_fd)
        assert scope.cancelled_caught  # nothing written: waits, and cancels cleanly
        os.write(write_fd, b" yes \n")
        assert await read_terminal_line(read_fd) == " yes "
        approver = terminal_approver(input_fd=read_fd, output=io.StringIO())
        os.write(write_fd, b"nope\n")
        assert not (await approver(ApprovalRequest(Operation.SIGN_IN, "example.com"))).approved
        os.write(write_fd, b"y")
        os.close(write_fd)
        write_fd = -1
        assert (await approver(ApprovalRequest(Operation.SIGN_IN, "example.com"))).approved
        assert await read_terminal_line(read_fd) == ""  # end of input
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
