"""The error catalogue: exact article wording, per-operation variants, CTAP status mapping."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest

from hybrid.catalogue import (
    Failure,
    Operation,
    PasskeyError,
    all_entries,
    catalogue_entry,
    error_for_ctap_status,
    failure_for_ctap_status,
    passkey_error,
)
from hybrid.cli.exit_codes import GENERIC, INTERRUPTED, OK, USAGE, exit_code_for
from hybrid.errors import EnvironmentalError, HybridError, ProtocolError, UsageError
from tests.conftest import skip_unless_ci_must_have

# The support article sits in ../shared/seed/ next to the checkout (so in CI); a worktree elsewhere
# can point HYBRID_ARTICLE_DIR at it.
ARTICLE_DIR = Path(
    os.environ.get("HYBRID_ARTICLE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "seed"
)


def _article_text() -> str | None:
    files = sorted(ARTICLE_DIR.glob("*.txt")) if ARTICLE_DIR.is_dir() else []
    if not files:
        return None
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def _troubleshooting_section(text: str) -> str:
    start = text.index("Troubleshoot Issues")
    return text[start:]


@pytest.mark.parametrize("failure", list(Failure))
@pytest.mark.parametrize("operation", list(Operation))
def test_every_failure_has_an_entry_for_both_operations(
    failure: Failure, operation: Operation
) -> None:
    entry = catalogue_entry(failure, operation)
    assert entry.title and entry.message
    code = exit_code_for(PasskeyError(failure, operation))
    assert code not in (OK, GENERIC, USAGE, INTERRUPTED)


def test_exit_codes_are_distinct_per_failure_and_the_same_for_both_operations() -> None:
    codes = {f: exit_code_for(PasskeyError(f, Operation.SIGN_IN)) for f in Failure}
    assert len(set(codes.values())) == len(Failure)
    for failure in Failure:
        assert exit_code_for(PasskeyError(failure, Operation.REGISTER)) == codes[failure]


def test_other_errors_exit_1_and_usage_errors_exit_2() -> None:
    assert exit_code_for(ProtocolError("bad bytes")) == 1
    assert exit_code_for(EnvironmentalError("no such file")) == 1
    assert exit_code_for(UsageError("bad option")) == 2


@pytest.mark.parametrize(
    ("failure", "operation", "title"),
    [
        (Failure.RELAY_UNREACHABLE, Operation.SIGN_IN, "Passkey Unavailable"),
        (Failure.RELAY_UNREACHABLE, Operation.REGISTER, "Passkey Unavailable"),
        (Failure.USER_DECLINED, Operation.SIGN_IN, "Passkey Not Found or Canceled"),
        (Failure.USER_DECLINED, Operation.REGISTER, "Passkey Set Up Canceled"),
        (Failure.TIMEOUT, Operation.SIGN_IN, "Passkey Request Timed Out"),
        (Failure.TIMEOUT, Operation.REGISTER, "Passkey Request Timed Out"),
        (Failure.NO_CREDENTIAL, Operation.SIGN_IN, "Passkey is not found on this device"),
        (Failure.EXCLUDED, Operation.REGISTER, "Passkey already registered for this device"),
        (Failure.VERIFICATION_FAILED, Operation.SIGN_IN, "Verification failed"),
        (Failure.NO_BLE_ADAPTER, Operation.SIGN_IN, "No compatible device found"),
        (Failure.PROTOCOL_ERROR, Operation.SIGN_IN, "Verification couldn\u2019t be completed"),
        (Failure.NOT_SUPPORTED, Operation.REGISTER, "Passkeys Not Supported"),
        (Failure.SESSION_EXPIRED, Operation.SIGN_IN, "Session Expired"),
        (Failure.LIMIT_REACHED, Operation.REGISTER, "Passkey Limit Reached"),
        (
            Failure.REGISTRATION_FAILED,
            Operation.REGISTER,
            "Failed to register the device for passkey",
        ),
        (Failure.USER_NOT_VERIFIED, Operation.SIGN_IN, "We could not verify you"),
    ],
)
def test_failure_maps_to_the_article_title(
    failure: Failure, operation: Operation, title: str
) -> None:
    assert catalogue_entry(failure, operation).title == title


def test_per_operation_messages_differ_where_the_article_has_two_tables() -> None:
    for failure in (Failure.RELAY_UNREACHABLE, Failure.TIMEOUT, Failure.USER_DECLINED):
        sign_in = catalogue_entry(failure, Operation.SIGN_IN)
        register = catalogue_entry(failure, Operation.REGISTER)
        assert sign_in.message != register.message


def test_titles_and_messages_match_the_support_article_exactly() -> None:
    text = _article_text()
    skip_unless_ci_must_have(text is not None, f"the support article (*.txt in {ARTICLE_DIR})")
    assert text is not None
    section = _troubleshooting_section(text)
    for entry in all_entries():
        if entry.title == "Verification couldn\u2019t be completed":
            # The article gives this entry a title and a cause but no user message.
            assert entry.title in section
            continue
        # The article writes "Title-" then a space or a no-break space, then the message.
        pattern = re.escape(entry.title) + r"-[ \u00a0]*" + re.escape(entry.message)
        assert re.search(pattern, section), f"not in the article: {entry.title!r}"


def test_passkey_error_text_and_attributes() -> None:
    err = passkey_error(Failure.TIMEOUT, Operation.REGISTER, "no CTAP response after 60 s")
    assert isinstance(err, HybridError)
    assert err.failure is Failure.TIMEOUT
    assert err.operation is Operation.REGISTER
    assert err.title == "Passkey Request Timed Out"
    assert (
        err.message
        == "You did not respond to the passkey prompt in time. Try again or set it up later."
    )
    assert err.detail == "no CTAP response after 60 s"
    assert exit_code_for(err) == 12
    assert str(err) == f"{err.title}: {err.message} (no CTAP response after 60 s)"
    plain = passkey_error(Failure.EXCLUDED, Operation.REGISTER)
    assert str(plain) == f"{plain.title}: {plain.message}"
    assert "\n" not in str(err)


def test_passkey_error_survives_pickling() -> None:
    err = PasskeyError(Failure.NO_CREDENTIAL, Operation.SIGN_IN, "x")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.failure, copy.operation, copy.detail, str(copy)) == (
        err.failure,
        err.operation,
        err.detail,
        str(err),
    )


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (0x27, Failure.USER_DECLINED),
        (0x2D, Failure.USER_DECLINED),
        (0x2E, Failure.NO_CREDENTIAL),
        (0x19, Failure.EXCLUDED),
        (0x2F, Failure.TIMEOUT),
        (0x26, Failure.NOT_SUPPORTED),
        (0x01, Failure.PROTOCOL_ERROR),
        (0x12, Failure.PROTOCOL_ERROR),
        (0x7F, Failure.PROTOCOL_ERROR),
    ],
)
def test_ctap_status_mapping(status: int, failure: Failure) -> None:
    assert failure_for_ctap_status(status, Operation.SIGN_IN) is failure
    assert failure_for_ctap_status(status, Operation.REGISTER) is failure
    err = error_for_ctap_status(status, Operation.SIGN_IN)
    assert err.failure is failure
    assert f"0x{status:02X}" in err.detail
