"""The user-facing error catalogue: every passkey failure maps to one entry of the support article.

The support article ("Passkeys: Use and Setup", section "Troubleshoot Issues") lists the errors a
user may see, each as a title and a user message, split into sign-in, registration and "both"
tables. This module is the single place where those strings live: the desktop, the phone, the
relying party and the command line all raise ``PasskeyError`` built by ``passkey_error`` and never
spell a message themselves. The titles and messages are copied byte for byte from the article
(including its curly apostrophes and its one message without a final full stop).

Exit codes (distinct per failure, for ``hybrid desktop`` / ``hybrid phone`` / ``hybrid demo``;
1 stays "generic error", 2 "bad usage", 130 "interrupted"):

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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from hybrid.errors import HybridError


class Operation(StrEnum):
    """The ceremony a failure happened in; some catalogue entries differ between the two."""

    REGISTER = "register"
    SIGN_IN = "sign in"


class Failure(Enum):
    """What went wrong, independent of how the article words it."""

    RELAY_UNREACHABLE = "relay unreachable"
    USER_DECLINED = "user declined"
    TIMEOUT = "timeout"
    NO_CREDENTIAL = "no credential"
    EXCLUDED = "credential excluded"
    VERIFICATION_FAILED = "verification failed"
    NO_BLE_ADAPTER = "no BLE adapter"
    PROTOCOL_ERROR = "protocol error"
    NOT_SUPPORTED = "not supported"
    SESSION_EXPIRED = "session expired"
    LIMIT_REACHED = "limit reached"
    REGISTRATION_FAILED = "registration failed"
    USER_NOT_VERIFIED = "user not verified"


@dataclass(frozen=True)
class CatalogueEntry:
    """One row of the article: a title and its user message, plus our exit code."""

    title: str
    message: str
    exit_code: int


# The article gives "Verification couldn’t be completed" a title and a cause ("Authenticator
# hardware issue, firmware problem, or unhandled error condition.") but no user message; the
# message below is ours, derived from that cause text.
_PROTOCOL_ERROR_MESSAGE = (
    "Something went wrong with the authenticator or the connection to it. Try again or use "
    "another method to log in."
)

# One table: (failure, operation) -> entry. ``None`` as the operation means "same for both".
_CATALOGUE: dict[tuple[Failure, Operation | None], CatalogueEntry] = {
    (Failure.RELAY_UNREACHABLE, Operation.SIGN_IN): CatalogueEntry(
        "Passkey Unavailable",
        "Passkey login is temporarily unavailable. You can try again or sign in with your "
        "password instead.",
        10,
    ),
    (Failure.RELAY_UNREACHABLE, Operation.REGISTER): CatalogueEntry(
        "Passkey Unavailable",
        "We could not complete the passkey setup right now. You can try again or set it up later.",
        10,
    ),
    (Failure.USER_DECLINED, Operation.SIGN_IN): CatalogueEntry(
        "Passkey Not Found or Canceled",
        "No passkey was detected for this device, or the operation was canceled. Log in with your "
        "password and two-factor authentication (2FA) to proceed. After you are verified, you can "
        "set up a new passkey.",
        11,
    ),
    (Failure.USER_DECLINED, Operation.REGISTER): CatalogueEntry(
        "Passkey Set Up Canceled",
        "Your passkey setup was canceled. Retry or continue with your password.",
        11,
    ),
    (Failure.TIMEOUT, Operation.SIGN_IN): CatalogueEntry(
        "Passkey Request Timed Out",
        "You did not respond to the passkey prompt in time. Please try again.",
        12,
    ),
    (Failure.TIMEOUT, Operation.REGISTER): CatalogueEntry(
        "Passkey Request Timed Out",
        "You did not respond to the passkey prompt in time. Try again or set it up later.",
        12,
    ),
    (Failure.NO_CREDENTIAL, None): CatalogueEntry(
        "Passkey is not found on this device",
        "No Passkey is set up for this device. To create one, log in with your password and 2FA. "
        "After verification, you can set up a passkey for this device. You can also choose to "
        "sign in with your password for now.",
        13,
    ),
    (Failure.EXCLUDED, None): CatalogueEntry(
        "Passkey already registered for this device",
        "The passkey already exists for this device. You cannot register the same device twice.",
        14,
    ),
    (Failure.VERIFICATION_FAILED, None): CatalogueEntry(
        "Verification failed",
        "We could not verify your identity. Use another sign-in method to access your account.",
        15,
    ),
    (Failure.NO_BLE_ADAPTER, None): CatalogueEntry(
        "No compatible device found",
        "We could not find a compatible device for this action. Connect a supported device or "
        "use another login method.",
        16,
    ),
    (Failure.PROTOCOL_ERROR, None): CatalogueEntry(
        "Verification couldn’t be completed", _PROTOCOL_ERROR_MESSAGE, 17
    ),
    # The article's message has no final full stop; kept as written.
    (Failure.NOT_SUPPORTED, None): CatalogueEntry(
        "Passkeys Not Supported",
        "Your browser or device does not support passkeys. You can continue with your password "
        "or use a different device",
        18,
    ),
    (Failure.SESSION_EXPIRED, None): CatalogueEntry(
        "Session Expired", "Your session has expired; restart to continue.", 19
    ),
    (Failure.LIMIT_REACHED, None): CatalogueEntry(
        "Passkey Limit Reached",
        "You have reached the maximum number of passkeys. Use your password or remove an "
        "existing passkey to add a new one.",
        20,
    ),
    (Failure.REGISTRATION_FAILED, None): CatalogueEntry(
        "Failed to register the device for passkey",
        "We were unable to activate this device for passkeys. You can also choose to log in with "
        "your password for now.",
        21,
    ),
    (Failure.USER_NOT_VERIFIED, None): CatalogueEntry(
        "We could not verify you",
        "We were unable to verify your biometric input. Try again or use another method to log in.",
        22,
    ),
}


def catalogue_entry(failure: Failure, operation: Operation) -> CatalogueEntry:
    """The article's entry for ``failure`` during ``operation``."""
    entry = _CATALOGUE.get((failure, operation)) or _CATALOGUE.get((failure, None))
    if entry is None:  # pragma: no cover - the table covers every Failure (pinned by a test)
        raise KeyError(f"no catalogue entry for {failure} during {operation}")
    return entry


def all_entries() -> list[CatalogueEntry]:
    """Every distinct entry of the table (for tests and documentation)."""
    return list(_CATALOGUE.values())


class PasskeyError(HybridError):
    """A user-facing passkey failure, worded exactly as the support article words it.

    ``str(err)`` is ``"<title>: <message>"``, followed by ``" (<detail>)"`` when a technical detail
    (for logs and engineers) is attached.
    """

    def __init__(self, failure: Failure, operation: Operation, detail: str = "") -> None:
        entry = catalogue_entry(failure, operation)
        self.failure = failure
        self.operation = operation
        self.title = entry.title
        self.message = entry.message
        self.detail = detail
        self.exit_code = entry.exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.title}: {self.message}"
        return f"{text} ({self.detail})" if self.detail else text

    def __reduce__(self):  # keeps the error picklable despite the custom __init__
        return (type(self), (self.failure, self.operation, self.detail))


def passkey_error(failure: Failure, operation: Operation, detail: str = "") -> PasskeyError:
    """Build the ``PasskeyError`` for ``failure`` during ``operation``."""
    return PasskeyError(failure, operation, detail)


# CTAP2 status bytes (CTAP 2.2 §8.2) that carry a user-facing meaning over hybrid.
CTAP2_ERR_CREDENTIAL_EXCLUDED = 0x19
CTAP2_ERR_UNSUPPORTED_ALGORITHM = 0x26
CTAP2_ERR_OPERATION_DENIED = 0x27
CTAP2_ERR_UNSUPPORTED_OPTION = 0x2B
CTAP2_ERR_INVALID_OPTION = 0x2C
CTAP2_ERR_KEEPALIVE_CANCEL = 0x2D
CTAP2_ERR_NO_CREDENTIALS = 0x2E
CTAP2_ERR_USER_ACTION_TIMEOUT = 0x2F
CTAP2_ERR_UV_INVALID = 0x3F

# status -> (failure, what it means, for the detail)
_CTAP_STATUS_FAILURES: dict[int, tuple[Failure, str]] = {
    CTAP2_ERR_OPERATION_DENIED: (Failure.USER_DECLINED, "the user declined on the phone"),
    CTAP2_ERR_KEEPALIVE_CANCEL: (Failure.USER_DECLINED, "the request was cancelled on the phone"),
    CTAP2_ERR_NO_CREDENTIALS: (Failure.NO_CREDENTIAL, "the phone has no passkey for this site"),
    CTAP2_ERR_CREDENTIAL_EXCLUDED: (
        Failure.EXCLUDED,
        "the phone already holds a passkey on the exclude list",
    ),
    CTAP2_ERR_USER_ACTION_TIMEOUT: (Failure.TIMEOUT, "nobody answered the prompt on the phone"),
    CTAP2_ERR_UNSUPPORTED_ALGORITHM: (
        Failure.NOT_SUPPORTED,
        "the phone supports none of the site's algorithms",
    ),
    # A phone with no way to verify its user refuses uv (CTAP 2.1: INVALID_OPTION; 2.0: 0x2B).
    CTAP2_ERR_INVALID_OPTION: (
        Failure.NOT_SUPPORTED,
        "the phone cannot do what the site asked (for example verify the user)",
    ),
    CTAP2_ERR_UNSUPPORTED_OPTION: (
        Failure.NOT_SUPPORTED,
        "the phone does not support an option the site asked for",
    ),
    CTAP2_ERR_UV_INVALID: (Failure.USER_NOT_VERIFIED, "the phone could not verify the user"),
}


def failure_for_ctap_status(status: int, operation: Operation) -> Failure:
    """The failure a non-zero CTAP status byte from the phone means to the user.

    ``operation`` is accepted so callers state the context; today no status maps differently per
    operation (the wording differs, which ``passkey_error`` handles).
    """
    del operation
    return _CTAP_STATUS_FAILURES.get(status, (Failure.PROTOCOL_ERROR, ""))[0]


def error_for_ctap_status(status: int, operation: Operation) -> PasskeyError:
    """Shortcut: the ``PasskeyError`` for a non-zero CTAP status; the detail says what the
    status means and gives it in hex."""
    failure, meaning = _CTAP_STATUS_FAILURES.get(
        status, (Failure.PROTOCOL_ERROR, "the phone answered with an error")
    )
    return PasskeyError(failure, operation, f"{meaning} (CTAP status 0x{status:02X})")
