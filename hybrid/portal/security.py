"""The portal's own security: clock, password hashes, TOTP codes, attempt limits.

* ``Clock``: every time the portal reasons about (session idle time, TOTP steps, the set-up
  prompt's seven days, challenge expiry) comes from one injectable callable; ``ManualClock`` lets a
  test move time forward without waiting.
* Passwords are hashed with argon2id (argon2-cffi's defaults). ``verify_password`` also runs for
  unknown accounts against a fixed dummy hash, so the time taken does not reveal whether a user
  name exists.
* TOTP (RFC 6238, pyotp): 30-second steps, one step of clock skew accepted either way; a code is
  single-use because the step it matched is recorded and only later steps are accepted afterwards.
* ``AttemptLimiter``: failed password or code attempts counted per account and per client address
  over a sliding window; past the limit every attempt is refused until old failures age out.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Clock = Callable[[], float]

TOTP_STEP = 30
TOTP_DIGITS = 6
TOTP_SKEW_STEPS = 1
TOTP_ISSUER = "hybrid portal"


class ManualClock:
    """Wall-clock time plus an offset that tests move with ``advance``."""

    def __init__(self, base: Clock = time.time) -> None:
        self._base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self._base() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): every sign-in attempt pays it, so a
# heavier setting would mostly help attackers exhaust the server. Old hashes keep their own cost.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the account does not exist: same cost, always fails.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True only if ``password`` matches; ``None`` (unknown account) costs the same and fails."""
    try:
        _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return password_hash is not None


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, account: str, issuer: str = TOTP_ISSUER) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app scans."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP).provisioning_uri(
        name=account, issuer_name=issuer
    )


def totp_code(secret: str, at: float) -> str:
    """The code for time ``at`` (what an authenticator app would show)."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP).at(at)


def totp_step(at: float) -> int:
    return int(at // TOTP_STEP)


def match_totp(secret: str, code: str, at: float) -> int | None:
    """The time step ``code`` belongs to (within the allowed skew), or ``None``."""
    code = code.strip().replace(" ", "")
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    now_step = totp_step(at)
    for step in range(now_step - TOTP_SKEW_STEPS, now_step + TOTP_SKEW_STEPS + 1):
        if secrets.compare_digest(totp.at(step * TOTP_STEP), code):
            return step
    return None


@dataclass
class AttemptLimiter:
    """Failures per key (an account name or an address) within ``window`` seconds."""

    clock: Clock
    per_account: int = 5
    per_address: int = 20
    window: float = 15 * 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> deque[float]:
        queue = self._failures.setdefault(key, deque())
        cutoff = self.clock() - self.window
        while queue and queue[0] <= cutoff:
            queue.popleft()
        return queue

    def blocked(self, account: str, address: str) -> bool:
        return (
            len(self._recent("account:" + account.lower())) >= self.per_account
            or len(self._recent("address:" + address)) >= self.per_address
        )

    def fail(self, account: str, address: str) -> None:
        now = self.clock()
        for key in ("account:" + account.lower(), "address:" + address):
            self._recent(key).append(now)

    def succeed(self, account: str) -> None:
        self._failures.pop("account:" + account.lower(), None)
