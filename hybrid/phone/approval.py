"""Asking the phone's user to approve a registration or a sign-in.

The authenticator never decides on its own that a user is present: every makeCredential and
getAssertion awaits an ``Approver``, an async callback that receives what is being asked
(``ApprovalRequest``) and answers with an ``Approval``. ``approved`` is user presence (the UP flag);
``user_verified`` says the approver also verified the user (the UV flag), the way a phone's
biometric or screen-lock prompt does.

Three approvers are provided: ``terminal_approver`` (interactive y/N prompt), ``auto_approver``
(unattended runs, ``--approve``) and ``declining_approver`` (tests, scripted refusals).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

import trio

from hybrid.catalogue import Operation


@dataclass(frozen=True)
class ApprovalRequest:
    """What the user is asked to approve, as far as the request tells us."""

    operation: Operation
    rp_id: str
    rp_name: str | None = None
    user_name: str | None = None
    user_display_name: str | None = None

    def describe(self) -> str:
        """One line for a prompt or a log: operation, relying party and account."""
        site = self.rp_id if not self.rp_name else f"{self.rp_name} ({self.rp_id})"
        verb = "Create a passkey for" if self.operation is Operation.REGISTER else "Sign in to"
        account = self.user_display_name or self.user_name
        return f"{verb} {site}" + (f" as {account}" if account else "")


@dataclass(frozen=True)
class Approval:
    """The user's answer: ``approved`` (presence) and ``user_verified`` (verification)."""

    approved: bool
    user_verified: bool = False


Approver = Callable[[ApprovalRequest], Awaitable[Approval]]
# A y/N answer is one word; a line longer than this is cut (its rest is still consumed).
MAX_ANSWER = 256


def auto_approver(user_verified: bool = True) -> Approver:
    """Approve everything at once (unattended demos and tests)."""

    async def approve(request: ApprovalRequest) -> Approval:
        return Approval(approved=True, user_verified=user_verified)

    return approve


def declining_approver() -> Approver:
    """Decline everything, as a user pressing "Cancel" would."""

    async def decline(request: ApprovalRequest) -> Approval:
        return Approval(approved=False, user_verified=False)

    return decline


def terminal_approver(
    user_verified: bool = True,
    *,
    read_line: Callable[[str], str] | None = None,
    input_fd: int = 0,
    output: TextIO | None = None,
) -> Approver:
    """Ask on the terminal: show the operation, relying party and user, then ``[y/N]``.

    Answering ``y``/``yes`` stands in for the phone's biometric prompt, so the approval counts as
    user verification unless ``user_verified`` is False. End of input (a closed pipe, ``/dev/null``)
    declines.

    The answer is read from ``input_fd`` (standard input) by this task itself: it waits for the
    descriptor to become readable in trio, then reads what is there with ``os.read``, so cancelling
    the prompt (the desktop hung up, the deadline passed, the relay shut down) leaves nothing
    behind. A worker thread blocked in ``input()`` would outlive the prompt while holding the
    interpreter's stdin lock, and Python aborts at exit when it finds it taken (issue 12, point 6).
    ``read_line`` replaces the terminal with a blocking callable run in a worker thread (tests,
    embedding).
    """

    async def ask(request: ApprovalRequest) -> Approval:
        stream = output if output is not None else sys.stderr
        lines = [
            "",
            f"Passkey request: {request.operation.value}",
            f"  relying party: {request.rp_id}"
            + (f" ({request.rp_name})" if request.rp_name else ""),
        ]
        if request.user_name or request.user_display_name:
            shown = request.user_name or ""
            if request.user_display_name and request.user_display_name != request.user_name:
                shown = (
                    f"{shown} ({request.user_display_name})" if shown else request.user_display_name
                )
            lines.append(f"  user: {shown}")
        print("\n".join(lines), file=stream, flush=True)
        prompt = f"{request.describe()}? [y/N] "
        if read_line is not None:
            try:
                answer = await trio.to_thread.run_sync(read_line, prompt, abandon_on_cancel=True)
            except EOFError:
                answer = ""
        else:
            print(prompt, end="", file=stream, flush=True)
            answer = await read_terminal_line(input_fd)
        approved = answer.strip().lower() in ("y", "yes")
        return Approval(approved=approved, user_verified=approved and user_verified)

    return ask


async def read_terminal_line(fd: int = 0) -> str:
    """One line from ``fd`` without a thread: ``""`` at end of input; cancellable at any point.

    Only bytes up to ``MAX_ANSWER`` are kept (an answer is one word); a longer line is read to its
    end and cut. Regular files and ``/dev/null`` cannot be polled, but never block either, so they
    are read directly.
    """
    data = bytearray()
    while True:
        try:
            await trio.lowlevel.wait_readable(fd)
        except OSError:
            await trio.lowlevel.checkpoint()  # not pollable (regular file, /dev/null): never blocks
        try:
            chunk = os.read(fd, 1024)
        except BlockingIOError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            break
        if len(data) < MAX_ANSWER:
            data += chunk[: MAX_ANSWER - len(data)]
        if b"\n" in chunk:
            break
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")
