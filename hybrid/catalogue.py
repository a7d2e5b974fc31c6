"""The user-facing error catalogue: every passkey failure maps to one entry of the support article.

The support article ("Passkeys: Use and Setup", section "Troubleshoot Issues") lists the errors a
user may see, each as a title and a user message, split into sign-in, registration and "both"
tables. This module is the single place where those strings live: the desktop, the phone, the
relying party and the command line all raise ``PasskeyError`` built by ``passkey_error`` and never
spell a message themselves. The titles and messages are copied byte for byte from the article
(including its curly apostrophes and its one message without a final full stop).

How a failure becomes a process exit status is the command line's business
(``hybrid.cli.exit_codes``), not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from fido2.ctap import CtapError

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
    """One row of the article: a title and its user message."""

    title: str
    message: str


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
    ),
    (Failure.RELAY_UNREACHABLE, Operation.REGISTER): CatalogueEntry(
        "Passkey Unavailable",
        "We could not complete the passkey setup right now. You can try again or set it up later.",
    ),
    (Failure.USER_DECLINED, Operation.SIGN_IN): CatalogueEntry(
        "Passkey Not Found or Canceled",
        "No passkey was detected for this device, or the operation was canceled. Log in with your "
        "password and two-factor authentication (2FA) to proceed. After you are verified, you can "
        "set up a new passkey.",
    ),
    (Failure.USER_DECLINED, Operation.REGISTER): CatalogueEntry(
        "Passkey Set Up Canceled",
        "Your passkey setup was canceled. Retry or continue with your password.",
    ),
    (Failure.TIMEOUT, Operation.SIGN_IN): CatalogueEntry(
        "Passkey Request Timed Out",
        "You did not respond to the passkey prompt in time. Please try again.",
    ),
    (Failure.TIMEOUT, Operation.REGISTER): CatalogueEntry(
        "Passkey Request Timed Out",
        "You did not respond to the passkey prompt in time. Try again or set it up later.",
    ),
    (Failure.NO_CREDENTIAL, None): CatalogueEntry(
        "Passkey is not found on this device",
        "No Passkey is set up for this device. To create one, log in with your password and 2FA. "
        "After verification, you can set up a passkey for this device. You can also choose to "
        "sign in with your password for now.",
    ),
    (Failure.EXCLUDED, None): CatalogueEntry(
        "Passkey already registered for this device",
        "The passkey already exists for this device. You cannot register the same device twice.",
    ),
    (Failure.VERIFICATION_FAILED, None): CatalogueEntry(
        "Verification failed",
        "We could not verify your identity. Use another sign-in method to access your account.",
    ),
    (Failure.NO_BLE_ADAPTER, None): CatalogueEntry(
        "No compatible device found",
        "We could not find a compatible device for this action. Connect a supported device or "
        "use another login method.",
    ),
    (Failure.PROTOCOL_ERROR, None): CatalogueEntry(
        "Verification couldn’t be completed", _PROTOCOL_ERROR_MESSAGE
    ),
    # The article's message has no final full stop; kept as written.
    (Failure.NOT_SUPPORTED, None): CatalogueEntry(
        "Passkeys Not Supported",
        "Your browser or device does not support passkeys. You can continue with your password "
        "or use a different device",
    ),
    (Failure.SESSION_EXPIRED, None): CatalogueEntry(
        "Session Expired", "Your session has expired; restart to continue."
    ),
    (Failure.LIMIT_REACHED, None): CatalogueEntry(
        "Passkey Limit Reached",
        "You have reached the maximum number of passkeys. Use your password or remove an "
        "existing passkey to add a new one.",
    ),
    (Failure.REGISTRATION_FAILED, None): CatalogueEntry(
        "Failed to register the device for passkey",
        "We were unable to activate this device for passkeys. You can also choose to log in with "
        "your password for now.",
    ),
    (Failure.USER_NOT_VERIFIED, None): CatalogueEntry(
        "We could not verify you",
        "We were unable to verify your biometric input. Try again or use another method to log in.",
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
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.title}: {self.message}"
        return f"{text} ({self.detail})" if self.detail else text

    def __reduce__(self):  # keeps the error picklable despite the custom __init__
        return (type(self), (self.failure, self.operation, self.detail))


def passkey_error(failure: Failure, operation: Operation, detail: str = "") -> PasskeyError:
    """Build the ``PasskeyError`` for ``failure`` during ``operation``."""
    return PasskeyError(failure, operation, detail)


# CTAP2 status bytes (python-fido2's names, CTAP 2.2 section 8.2) with a user-facing meaning:
# status -> (failure, what it means, for the detail)
_CTAP_STATUS_FAILURES: dict[int, tuple[Failure, str]] = {
    CtapError.ERR.OPERATION_DENIED: (Failure.USER_DECLINED, "the user declined on the phone"),
    CtapError.ERR.KEEPALIVE_CANCEL: (
        Failure.USER_DECLINED,
        "the request was cancelled on the phone",
    ),
    CtapError.ERR.NO_CREDENTIALS: (Failure.NO_CREDENTIAL, "the phone has no passkey for this site"),
    CtapError.ERR.CREDENTIAL_EXCLUDED: (
        Failure.EXCLUDED,
        "the phone already holds a passkey on the exclude list",
    ),
    CtapError.ERR.USER_ACTION_TIMEOUT: (Failure.TIMEOUT, "nobody answered the prompt on the phone"),
    CtapError.ERR.UNSUPPORTED_ALGORITHM: (
        Failure.NOT_SUPPORTED,
        "the phone supports none of the site's algorithms",
    ),
    # A phone with no way to verify its user refuses uv (CTAP 2.1: INVALID_OPTION; 2.0: 0x2B).
    CtapError.ERR.INVALID_OPTION: (
        Failure.NOT_SUPPORTED,
        "the phone cannot do what the site asked (for example verify the user)",
    ),
    CtapError.ERR.UNSUPPORTED_OPTION: (
        Failure.NOT_SUPPORTED,
        "the phone does not support an option the site asked for",
    ),
    CtapError.ERR.UV_INVALID: (Failure.USER_NOT_VERIFIED, "the phone could not verify the user"),
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
