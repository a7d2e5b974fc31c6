"""The portal as a WebAuthn relying party: python-fido2's ``Fido2Server`` over the portal's store.

The same checks serve both ways a passkey reaches the portal: the phone over hybrid (the portal
process is the desktop and builds the client data itself) and the browser's own
``navigator.credentials`` (the browser builds it). Every failure is the article's entry for it:

* a sixth passkey is "Passkey Limit Reached", before any prompt and again when saving;
* a credential id already stored is "Passkey already registered for this device";
* a response without the user-verified flag is "We could not verify you" (user verification is
  required: the article's passkeys are verified with a fingerprint, face or PIN);
* any other response that does not verify (signature, challenge, origin, RP id hash, a credential
  of another account, a signature counter going back) is "Verification failed";
* a ceremony state older than ``CEREMONY_LIFETIME`` is "Session Expired";
* the database failing while the passkey is saved is "Failed to register the device for passkey".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorAttachment,
    CredentialCreationOptions,
    CredentialRequestOptions,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.portal.security import Clock
from hybrid.portal.store import (
    DuplicateCredentialError,
    Passkey,
    PasskeyLimitError,
    StorageError,
    Store,
    User,
)

logger = logging.getLogger(__name__)

MAX_PASSKEYS = 5  # the article: "There is a limit of five passkeys per user."
CEREMONY_LIFETIME = 120.0  # seconds between options and response (the options ask for 60)
TIMEOUT_MS = 60_000


class PasskeyKind:
    """How a passkey was made, as the Security tab names it."""

    PHONE = "Phone via QR"
    THIS_DEVICE = "This device"
    SECURITY_KEY = "Security key"


@dataclass
class Ceremony:
    """What ``begin_*`` hands out and ``complete_*`` needs back: python-fido2's state + ours."""

    operation: Operation
    user_id: int
    state: dict[str, Any]
    issued_at: float
    options: CredentialCreationOptions | CredentialRequestOptions


def _why(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]


class PortalRelyingParty:
    """Registration and authentication for the portal's accounts (see the module docstring)."""

    def __init__(self, store: Store, rp_id: str, origin: str, clock: Clock, name: str) -> None:
        self.store = store
        self.rp_id = rp_id
        self.origin = origin
        self.clock = clock
        self.server = Fido2Server(
            PublicKeyCredentialRpEntity(name=name, id=rp_id),
            verify_origin=lambda candidate: candidate == origin,
        )
        # python-fido2 declares the attribute as None; it accepts milliseconds.
        self.server.timeout = TIMEOUT_MS  # type: ignore[assignment]

    # ---- registration -----------------------------------------------------------------------

    def begin_registration(
        self, user: User, *, attachment: AuthenticatorAttachment | None = None
    ) -> Ceremony:
        op = Operation.REGISTER
        try:
            existing = self.store.passkeys_for(user.id)
        except StorageError as exc:
            raise PasskeyError(Failure.RELAY_UNREACHABLE, op, str(exc)) from None
        if len(existing) >= MAX_PASSKEYS:
            raise PasskeyError(
                Failure.LIMIT_REACHED, op, f"{user.name} already has {len(existing)} passkeys"
            )
        options, state = self.server.register_begin(
            PublicKeyCredentialUserEntity(
                name=user.name, id=user.user_handle, display_name=user.name
            ),  # fmt: skip
            # A phone or key that already holds one of these answers "credential excluded".
            credentials=[AttestedCredentialData(p.credential_data) for p in existing],
            resident_key_requirement=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
            authenticator_attachment=attachment,
        )
        return Ceremony(op, user.id, state, self.clock(), options)

    def complete_registration(
        self, ceremony: Ceremony, response: RegistrationResponse | dict[str, Any], *,
        kind: str, actor: str, subject: str,
    ) -> Passkey:  # fmt: skip
        op = Operation.REGISTER
        self._check(ceremony, op)
        try:
            auth_data = self.server.register_complete(ceremony.state, response)
        except Exception as exc:
            raise self._verification_error(exc, op) from None
        credential = auth_data.credential_data
        if credential is None:
            raise PasskeyError(Failure.VERIFICATION_FAILED, op, "no attested credential data")
        try:
            return self.store.add_passkey(
                ceremony.user_id,
                credential_id=bytes(credential.credential_id),
                credential_data=bytes(credential),
                sign_count=auth_data.counter,
                kind=kind,
                name=None,
                now=self.clock(),
                limit=MAX_PASSKEYS,
                actor=actor,
                subject=subject,
            )
        except PasskeyLimitError as exc:
            raise PasskeyError(Failure.LIMIT_REACHED, op, str(exc)) from None
        except DuplicateCredentialError as exc:
            raise PasskeyError(Failure.EXCLUDED, op, str(exc)) from None
        except StorageError as exc:
            logger.error("saving a passkey failed: %s", exc)
            raise PasskeyError(Failure.REGISTRATION_FAILED, op, str(exc)) from None

    # ---- authentication ---------------------------------------------------------------------

    def begin_authentication(self, user: User) -> Ceremony:
        op = Operation.SIGN_IN
        try:
            passkeys = self.store.passkeys_for(user.id)
        except StorageError as exc:
            raise PasskeyError(Failure.RELAY_UNREACHABLE, op, str(exc)) from None
        if not passkeys:
            raise PasskeyError(Failure.NO_CREDENTIAL, op, f"{user.name} has no passkey")
        options, state = self.server.authenticate_begin(
            credentials=[AttestedCredentialData(p.credential_data) for p in passkeys],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return Ceremony(op, user.id, state, self.clock(), options)

    def complete_authentication(
        self, ceremony: Ceremony, response: AuthenticationResponse | dict[str, Any]
    ) -> Passkey:
        """Verify an assertion for the ceremony's account; return the passkey it used."""
        op = Operation.SIGN_IN
        self._check(ceremony, op)
        try:
            parsed = AuthenticationResponse.from_dict(response)
        except Exception as exc:
            raise PasskeyError(Failure.VERIFICATION_FAILED, op, _why(exc)) from None
        try:
            passkey = self.store.passkey_by_credential_id(bytes(parsed.raw_id))
            user = self.store.get_user_by_id(ceremony.user_id)
        except StorageError as exc:
            raise PasskeyError(Failure.RELAY_UNREACHABLE, op, str(exc)) from None
        if passkey is None or user is None or passkey.user_id != ceremony.user_id:
            raise PasskeyError(
                Failure.VERIFICATION_FAILED, op, "the credential is not one of this account's"
            )
        handle = parsed.response.user_handle
        if handle is not None and bytes(handle) != user.user_handle:
            raise PasskeyError(Failure.VERIFICATION_FAILED, op, "the user handle does not match")
        try:
            self.server.authenticate_complete(
                ceremony.state, [AttestedCredentialData(passkey.credential_data)], parsed
            )
        except Exception as exc:
            raise self._verification_error(exc, op) from None
        counter = parsed.response.authenticator_data.counter
        if counter and passkey.sign_count and counter <= passkey.sign_count:
            raise PasskeyError(
                Failure.VERIFICATION_FAILED,
                op,
                f"signature counter went from {passkey.sign_count} to {counter}",
            )
        try:
            self.store.record_passkey_use(passkey.id, counter, self.clock())
        except StorageError as exc:
            raise PasskeyError(Failure.RELAY_UNREACHABLE, op, str(exc)) from None
        return passkey

    # ---- shared -----------------------------------------------------------------------------

    def _check(self, ceremony: Ceremony, op: Operation) -> None:
        if ceremony.operation is not op:
            raise PasskeyError(Failure.SESSION_EXPIRED, op, "state of another ceremony")
        age = self.clock() - ceremony.issued_at
        if not 0 <= age <= CEREMONY_LIFETIME:
            raise PasskeyError(Failure.SESSION_EXPIRED, op, f"the challenge is {age:.0f} s old")

    @staticmethod
    def _verification_error(exc: BaseException, op: Operation) -> PasskeyError:
        text = _why(exc)
        if "User verification required" in text:
            return PasskeyError(Failure.USER_NOT_VERIFIED, op, text)
        return PasskeyError(Failure.VERIFICATION_FAILED, op, text)
