"""Server-side browser sessions: an opaque cookie names a record kept in this process.

A session carries where the visitor is in the sign-in flow (the user name typed, whether the
password and code were checked), who is signed in, a CSRF token every form must echo, and the
single pending WebAuthn ceremony state. Nothing but a random id travels in the cookie.

Idle timeout: a session not used for ``idle_timeout`` seconds (the article's 5–15 minutes, 10 by
default) is gone; the next request with its cookie is answered "Session Expired". Time comes from
the portal's injectable clock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hybrid.portal.security import Clock

COOKIE_NAME = "portal_session"
DEFAULT_IDLE_TIMEOUT = 10 * 60.0
MIN_IDLE_TIMEOUT = 5 * 60.0
MAX_IDLE_TIMEOUT = 15 * 60.0


class Stage(Enum):
    """How far an unsigned visitor got."""

    START = "start"  # nothing typed yet
    USERNAME = "username"  # user name given: password or passkey next
    PASSWORD_OK = "password ok"  # password checked: the code (or its enrolment) next
    SIGNED_IN = "signed in"


@dataclass
class Session:
    id: str
    csrf: str
    created: float
    last_seen: float
    stage: Stage = Stage.START
    username: str | None = None
    user_id: int | None = None  # set only once signed in
    pending_user_id: int | None = None  # the account whose password was checked
    enrol_secret: str | None = None  # TOTP secret being enrolled, until its first code works
    ceremony: dict[str, Any] | None = None  # one pending browser WebAuthn ceremony
    flows: set[str] = field(default_factory=set)
    notice: str | None = None  # one-shot message for the next page


class SessionStore:
    """All live sessions of this portal process."""

    def __init__(self, clock: Clock, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        if not MIN_IDLE_TIMEOUT <= idle_timeout <= MAX_IDLE_TIMEOUT:
            raise ValueError(
                f"the session idle timeout must be within {MIN_IDLE_TIMEOUT / 60:g}–"
                f"{MAX_IDLE_TIMEOUT / 60:g} minutes, got {idle_timeout / 60:g}"
            )
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, Session] = {}

    def new(self) -> Session:
        now = self.clock()
        self._sweep(now)
        session = Session(
            id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), created=now,
            last_seen=now,
        )  # fmt: skip
        self._sessions[session.id] = session
        return session

    def lookup(self, session_id: str | None) -> tuple[Session | None, bool]:
        """``(session, expired)``: the live session touched now, or ``None`` and whether the
        cookie named a session that timed out or no longer exists."""
        if not session_id:
            return None, False
        session = self._sessions.get(session_id)
        now = self.clock()
        if session is None:
            return None, True
        if now - session.last_seen > self.idle_timeout:
            del self._sessions[session_id]
            return None, True
        session.last_seen = now
        return session, False

    def rotate(self, session: Session) -> Session:
        """The same session under a new id and CSRF token (at sign-in: defeats fixation)."""
        self._sessions.pop(session.id, None)
        session.id = secrets.token_urlsafe(32)
        session.csrf = secrets.token_urlsafe(32)
        self._sessions[session.id] = session
        return session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def _sweep(self, now: float) -> None:
        stale = [k for k, s in self._sessions.items() if now - s.last_seen > self.idle_timeout]
        for key in stale:
            del self._sessions[key]
