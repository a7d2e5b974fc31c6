"""Phone ceremonies running in the background while their page shows the QR code.

A ``Flow`` belongs to one browser session and one operation. Its task (started in the portal's
nursery) runs the phone transaction and the relying-party checks; the page follows it through
``Flow.watch()`` (Server-Sent Events), and once it succeeded the browser calls the flow's finish
URL, which applies the result to the session (signed in, or back to the Security tab). A flow is
cancelled when its page picks "this device" instead, and forgotten ``FLOW_LIFETIME`` after it
started; an id that is unknown or belongs to another session is "Session Expired".
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.portal.phone_flow import PhoneStatus
from hybrid.portal.security import Clock

logger = logging.getLogger(__name__)

FLOW_LIFETIME = 15 * 60.0


@dataclass
class FlowEvent:
    """One status change, as the page receives it (JSON)."""

    status: PhoneStatus
    title: str = ""
    message: str = ""
    redirect: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "state": self.status.name.lower(),
            "status": str(self.status),
            "title": self.title,
            "message": self.message,
            "redirect": self.redirect,
        }


@dataclass
class Flow:
    id: str
    session_id: str
    operation: Operation
    url: str
    started: float
    events: list[FlowEvent] = field(default_factory=list)
    result: Any = None
    error: PasskeyError | None = None
    finished: bool = False
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def succeeded(self) -> bool:
        return self.finished and self.error is None

    def _push(self, event: FlowEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def status(self, status: PhoneStatus) -> None:
        if not self.finished and (not self.events or self.events[-1].status is not status):
            self._push(FlowEvent(status))

    def succeed(self, result: Any, redirect: str) -> None:
        self.result = result
        self.finished = True
        self._push(FlowEvent(PhoneStatus.DONE, redirect=redirect))

    def fail(self, error: PasskeyError) -> None:
        self.error = error
        self.finished = True
        self._push(FlowEvent(PhoneStatus.FAILED, error.title, error.message))

    async def watch(self) -> AsyncIterator[FlowEvent]:
        """Every event so far, then each new one, until the flow finished."""
        sent = 0
        while True:
            while sent < len(self.events):
                sent += 1
                yield self.events[sent - 1]
            if self.finished:
                return
            await self._changed.wait()


Runner = Callable[[Flow], Awaitable[None]]


class FlowRegistry:
    """The flows of this portal process, each run in ``nursery``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._flows: dict[str, Flow] = {}
        self.nursery: trio.Nursery | None = None

    def start(self, session_id: str, operation: Operation, url: str, runner: Runner) -> Flow:
        if self.nursery is None:
            raise RuntimeError("the flow registry has no nursery yet")
        self._sweep()
        flow = Flow(secrets.token_urlsafe(18), session_id, operation, url, self.clock())
        self._flows[flow.id] = flow
        self.nursery.start_soon(self._run, flow, runner)
        return flow

    async def _run(self, flow: Flow, runner: Runner) -> None:
        with flow.cancel_scope:
            try:
                await runner(flow)
            except PasskeyError as exc:
                logger.info("phone %s failed: %s", flow.operation, exc)
                flow.fail(exc)
            except Exception as exc:
                # A bug of ours must still end the page's wait with a catalogue entry.
                logger.exception("phone flow crashed")
                flow.fail(PasskeyError(Failure.PROTOCOL_ERROR, flow.operation, repr(exc)))
        if not flow.finished:
            flow.fail(PasskeyError(
                Failure.USER_DECLINED, flow.operation, "the ceremony was cancelled"
            ))  # fmt: skip

    def get(self, flow_id: str, session_id: str) -> Flow | None:
        flow = self._flows.get(flow_id)
        if flow is None or not secrets.compare_digest(flow.session_id, session_id):
            return None
        return flow

    def cancel(self, flow: Flow) -> None:
        flow.cancel_scope.cancel()

    def _sweep(self) -> None:
        now = self.clock()
        for key, flow in list(self._flows.items()):
            if now - flow.started > FLOW_LIFETIME:
                flow.cancel_scope.cancel()
                del self._flows[key]
