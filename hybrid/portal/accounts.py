"""Creating accounts: the one rule set for the admin page and ``hybrid portal user add``.

Accounts are made by an administrator, as in a business product; the person then signs in with
the password they were given and enrols their second factor at that first sign-in.
"""

from __future__ import annotations

import os
import re

from hybrid.errors import UsageError
from hybrid.portal.security import hash_password
from hybrid.portal.store import ROLES, Store, User

USER_HANDLE_LEN = 32
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


class AccountError(UsageError):
    """A user name, password or role that the portal does not accept (a usage error: exit 2)."""


def check_new_account(name: str, password: str, role: str) -> None:
    if not _NAME.match(name):
        raise AccountError(
            f"user name {name!r} must be 1-64 letters, digits or . _ @ + - (starting with a "
            "letter or digit)"
        )
    if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
        raise AccountError(
            f"the password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters long"
        )
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


def create_account(store: Store, name: str, password: str, role: str, now: float) -> User:
    """Validate, hash the password (argon2id), store the account; ``UserExistsError`` if taken."""
    check_new_account(name, password, role)
    return store.create_user(name, hash_password(password), role, os.urandom(USER_HANDLE_LEN), now)
