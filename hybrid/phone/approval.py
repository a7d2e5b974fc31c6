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
    read_line: Callable[[str], str] = input,
    output: TextIO | None = None,
) -> Approver:
    """Ask on the terminal: show the operation, relying party and user, then ``[y/N]``.

    Answering ``y``/``yes`` stands in for the phone's biometric prompt, so the approval counts as
    user verification unless ``user_verified`` is False. ``input()`` blocks, so it runs in a worker
    thread that is abandoned on cancellation: a desktop that gives up (or a timeout) is never held
    hostage by a prompt nobody answers.
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
        try:
            answer = await trio.to_thread.run_sync(
                read_line, f"{request.describe()}? [y/N] ", abandon_on_cancel=True
            )
        except EOFError:
            answer = ""
        approved = answer.strip().lower() in ("y", "yes")
        return Approval(approved=approved, user_verified=approved and user_verified)

    return ask
