"""Asking the phone's user to approve a registration or a sign-in.

The authenticator never decides on its own that a user is present: every makeCredential and
getAssertion awaits an ``Approver``, an async callback that receives what is being asked
(``ApprovalRequest``) and answers with an ``Approval``. ``approved`` is user presence (the UP flag);
``user_verified`` says the approver also verified the user (the UV flag), the way a phone's
biometric or screen-lock prompt does. An approver verifies only when the request asks for it
(``ApprovalRequest.user_verification``); one that has no way to verify says so with a
``can_verify_user = False`` attribute, and the authenticator then refuses ``uv: true`` requests
without prompting.

When a sign-in finds several discoverable credentials for the site, the request lists them
(``ApprovalRequest.accounts``, newest first) and the approver picks one by index
(``Approval.account``): that choice is what makes the response say ``userSelected``.

Approvers provided: ``terminal_approver`` (interactive prompt, a numbered account list when there
is a choice), ``auto_approver`` (unattended runs, ``--approve``; ``choose_account`` is the API's
account callback), ``declining_approver`` (tests, scripted refusals) and ``unattended_approver``
(stdin is not a terminal: nobody can approve, so it declines and says why).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import trio

from hybrid.catalogue import Operation


@dataclass(frozen=True)
class Account:
    """One account the phone holds a discoverable passkey for (what a chooser shows)."""

    user_name: str | None
    user_display_name: str | None
    user_id: bytes = b""

    def describe(self) -> str:
        name = self.user_name or ""
        if self.user_display_name and self.user_display_name != self.user_name:
            name = f"{name} ({self.user_display_name})" if name else self.user_display_name
        return name or f"account {self.user_id.hex()[:12] or '?'}"


@dataclass(frozen=True)
class ApprovalRequest:
    """What the user is asked to approve, as far as the request tells us.

    ``user_verification`` is True when the request asks the phone to verify the user (``uv``);
    ``accounts`` lists the candidate accounts when a sign-in must choose among several.
    """

    operation: Operation
    rp_id: str
    rp_name: str | None = None
    user_name: str | None = None
    user_display_name: str | None = None
    user_verification: bool = False
    accounts: tuple[Account, ...] = ()

    def describe(self) -> str:
        """One line for a prompt or a log: operation, relying party and account."""
        site = self.rp_id if not self.rp_name else f"{self.rp_name} ({self.rp_id})"
        verb = "Create a passkey for" if self.operation is Operation.REGISTER else "Sign in to"
        account = self.user_display_name or self.user_name
        if self.accounts:
            account = None  # the account is what the user is about to choose
        return f"{verb} {site}" + (f" as {account}" if account else "")


@dataclass(frozen=True)
class Approval:
    """The user's answer: ``approved`` (presence), ``user_verified`` (verification) and, when the
    request listed ``accounts``, the index of the ``account`` chosen (``None``: no choice made)."""

    approved: bool
    user_verified: bool = False
    account: int | None = None


Approver = Callable[[ApprovalRequest], Awaitable[Approval]]
AccountChooser = Callable[[Sequence[Account]], int | None]


def auto_approver(
    user_verified: bool = True, *, choose_account: AccountChooser | None = None
) -> Approver:
    """Approve everything at once (unattended demos and tests).

    ``user_verified=False`` is an approver with no way to verify the user. ``choose_account``
    picks an index from the candidate accounts (``None`` leaves the choice to the authenticator,
    which takes the newest credential and does not report ``userSelected``).
    """

    async def approve(request: ApprovalRequest) -> Approval:
        account = choose_account(request.accounts) if request.accounts and choose_account else None
        return Approval(
            approved=True,
            user_verified=user_verified and request.user_verification,
            account=account,
        )

    approve.can_verify_user = user_verified  # type: ignore[attr-defined]
    return approve


def declining_approver() -> Approver:
    """Decline everything, as a user pressing "Cancel" would."""

    async def decline(request: ApprovalRequest) -> Approval:
        return Approval(approved=False, user_verified=False)

    return decline


NOBODY_TO_APPROVE = "declining: standard input is not a terminal, so nobody can approve (--approve)"


def unattended_approver(output: TextIO | None = None) -> Approver:
    """Decline, saying why: without a terminal on stdin no one can answer a prompt."""

    async def decline(request: ApprovalRequest) -> Approval:
        stream = output if output is not None else sys.stderr
        print(f"phone: {request.describe()}: {NOBODY_TO_APPROVE}", file=stream, flush=True)
        return Approval(approved=False, user_verified=False)

    return decline


# An answer is a word or a number; a longer line is consumed but cut to this.
MAX_ANSWER = 256


async def read_terminal_line(fd: int = 0) -> str:
    """One line from ``fd`` read by this trio task (no worker thread), ``""`` at end of input.

    Waiting happens in trio, so cancelling the prompt (the desktop gave up, a deadline) leaves
    nothing blocked on standard input behind. Descriptors that cannot be polled (regular files,
    ``/dev/null``) never block, so they are read directly.
    """
    data = bytearray()
    while True:
        try:
            await trio.lowlevel.wait_readable(fd)
        except OSError:
            await trio.lowlevel.checkpoint()
        try:
            chunk = os.read(fd, 1024)
        except BlockingIOError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            break
        data += chunk[: max(0, MAX_ANSWER - len(data))]
        if b"\n" in chunk:
            break
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")


def _request_lines(request: ApprovalRequest) -> list[str]:
    lines = [
        "",
        f"Passkey request: {request.operation.value}",
        f"  relying party: {request.rp_id}" + (f" ({request.rp_name})" if request.rp_name else ""),
    ]
    if not request.accounts and (request.user_name or request.user_display_name):
        shown = Account(request.user_name, request.user_display_name).describe()
        lines.append(f"  user: {shown}")
    if request.user_verification:
        lines.append("  the site asks the phone to verify you (your answer stands in for it)")
    for number, account in enumerate(request.accounts, 1):
        lines.append(f"  {number}. {account.describe()}")
    return lines


def terminal_approver(
    user_verified: bool = True,
    *,
    read_line: Callable[[str], str] | None = None,
    input_fd: int = 0,
    output: TextIO | None = None,
) -> Approver:
    """Ask on the terminal: show the operation, relying party and user, then ``[y/N]``.

    With several accounts to choose from, they are listed by number and the answer is the number
    (empty cancels). Answering stands in for the phone's biometric prompt, so when the request
    asks for user verification the approval counts as verified unless ``user_verified`` is False.
    The prompt goes to the same stream as the description (stderr by default). The answer is
    read from ``input_fd`` (standard input) by the prompting task itself (``read_terminal_line``),
    so a desktop that gives up (or a timeout) cancels the prompt and leaves nothing behind;
    ``read_line`` replaces that with a blocking callable run in an abandonable worker thread
    (tests, embedding). End of input declines.
    """

    async def ask(request: ApprovalRequest) -> Approval:
        stream = output if output is not None else sys.stderr
        print("\n".join(_request_lines(request)), file=stream, flush=True)
        count = len(request.accounts)
        prompt = (
            f"{request.describe()}: which account? [1-{count}, empty cancels] "
            if count
            else f"{request.describe()}? [y/N] "
        )
        if read_line is not None:
            try:
                answer = await trio.to_thread.run_sync(read_line, prompt, abandon_on_cancel=True)
            except EOFError:
                answer = ""
        else:
            print(prompt, end="", file=stream, flush=True)
            answer = await read_terminal_line(input_fd)
        answer = answer.strip().lower()
        account = None
        if count:
            approved = answer.isdigit() and 1 <= int(answer) <= count
            account = int(answer) - 1 if approved else None
        else:
            approved = answer in ("y", "yes")
        verified = approved and user_verified and request.user_verification
        return Approval(approved=approved, user_verified=verified, account=account)

    ask.can_verify_user = user_verified  # type: ignore[attr-defined]
    return ask
