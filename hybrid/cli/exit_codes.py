"""The one place that decides a ``hybrid`` process's exit status.

Error classes say what went wrong; only the command line turns that into a number. Codes are
distinct per catalogue failure so scripts can tell them apart (``hybrid desktop`` / ``hybrid
phone`` / ``hybrid demo``):

====================  ====  ================================================
Failure               Code  Catalogue title
====================  ====  ================================================
RELAY_UNREACHABLE     10    Passkey Unavailable
USER_DECLINED         11    Passkey Not Found or Canceled / Passkey Set Up Canceled
TIMEOUT               12    Passkey Request Timed Out
NO_CREDENTIAL         13    Passkey is not found on this device
EXCLUDED              14    Passkey already registered for this device
VERIFICATION_FAILED   15    Verification failed
NO_BLE_ADAPTER        16    No compatible device found
PROTOCOL_ERROR        17    Verification couldn’t be completed
NOT_SUPPORTED         18    Passkeys Not Supported
SESSION_EXPIRED       19    Session Expired
LIMIT_REACHED         20    Passkey Limit Reached
REGISTRATION_FAILED   21    Failed to register the device for passkey
USER_NOT_VERIFIED     22    We could not verify you
====================  ====  ================================================

Besides those: 0 success, 1 any other deliberate error (protocol or environment), 2 bad usage
(``UsageError``, like argparse), 130 interrupted.
"""

from __future__ import annotations

from typing import Final

from hybrid.catalogue import Failure, PasskeyError
from hybrid.errors import HybridError, UsageError

OK: Final = 0
GENERIC: Final = 1
USAGE: Final = 2
INTERRUPTED: Final = 130

FAILURE_CODES: Final[dict[Failure, int]] = {
    Failure.RELAY_UNREACHABLE: 10,
    Failure.USER_DECLINED: 11,
    Failure.TIMEOUT: 12,
    Failure.NO_CREDENTIAL: 13,
    Failure.EXCLUDED: 14,
    Failure.VERIFICATION_FAILED: 15,
    Failure.NO_BLE_ADAPTER: 16,
    Failure.PROTOCOL_ERROR: 17,
    Failure.NOT_SUPPORTED: 18,
    Failure.SESSION_EXPIRED: 19,
    Failure.LIMIT_REACHED: 20,
    Failure.REGISTRATION_FAILED: 21,
    Failure.USER_NOT_VERIFIED: 22,
}


def exit_code_for(error: HybridError) -> int:
    """The exit status for a deliberate error that ended a command."""
    if isinstance(error, PasskeyError):
        return FAILURE_CODES[error.failure]
    if isinstance(error, UsageError):
        return USAGE
    return GENERIC
