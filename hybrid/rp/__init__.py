"""The relying party the desktop signs in to: python-fido2's ``Fido2Server`` plus an account file.

``RelyingParty`` issues WebAuthn creation/request options and verifies what comes back, exactly as
a website's server would; the verification itself is ``fido2.server.Fido2Server``. Accounts (user
name, user handle) and their credentials (``AttestedCredentialData``, base64url) with their
signature counters live in one JSON file in the data directory, rewritten atomically, so a
``login`` after a ``register`` works across runs. Without a data directory everything stays in
memory.

Every failure is a ``PasskeyError`` from the catalogue: a response that does not verify (bad
signature, wrong challenge or origin, unknown credential, non-increasing counter) is
"Verification failed"; an unknown account at sign-in is "Passkey is not found on this device"; a
sixth passkey is "Passkey Limit Reached"; a state older than the session lifetime is "Session
Expired".
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    CredentialCreationOptions,
    CredentialRequestOptions,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from hybrid.catalogue import Failure, Operation, PasskeyError, passkey_error
from hybrid.errors import HybridError

ACCOUNTS_FILENAME = "relying-party.json"
MAX_PASSKEYS_PER_USER = 5  # the support article: "a limit of five passkeys per user"
USER_HANDLE_LEN = 32
DEFAULT_TIMEOUT_MS = 60_000  # what the options ask the client to wait for the user
DEFAULT_SESSION_LIFETIME = 600.0  # seconds a begin/complete pair may be apart ("5-15 minutes")


class AccountStoreError(HybridError):
    """The relying party's account file cannot be read or written."""


class RelyingParty:
    """A WebAuthn relying party for ``rp_id`` that accepts responses from ``origin`` only."""

    def __init__(
        self,
        rp_id: str,
        origin: str,
        data_dir: Path | None = None,
        *,
        rp_name: str | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        session_lifetime: float = DEFAULT_SESSION_LIFETIME,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.rp_id = rp_id
        self.origin = origin
        self.server = Fido2Server(
            PublicKeyCredentialRpEntity(name=rp_name or rp_id, id=rp_id),
            verify_origin=lambda candidate: candidate == origin,
        )
        self.server.timeout = timeout_ms
        self.session_lifetime = session_lifetime
        self._clock = clock
        self._random_bytes = random_bytes
        self._path = Path(data_dir) / ACCOUNTS_FILENAME if data_dir is not None else None
        self._memory: dict[str, Any] = {}

    # -- registration -------------------------------------------------------------------------

    def begin_registration(self, user_name: str) -> tuple[CredentialCreationOptions, dict]:
        """Creation options for a new passkey of ``user_name``, and the state to complete it."""
        op = Operation.REGISTER
        if not user_name:
            raise passkey_error(Failure.REGISTRATION_FAILED, op, "empty user name")
        account = self._users().get(user_name)
        if account is not None:
            handle = websafe_decode(account["user_handle"])
            existing = _credentials(account)
        else:
            handle = self._random_bytes(USER_HANDLE_LEN)
            existing = []
        if len(existing) >= MAX_PASSKEYS_PER_USER:
            raise passkey_error(
                Failure.LIMIT_REACHED, op, f"{user_name} already has {len(existing)} passkeys"
            )
        options, server_state = self.server.register_begin(
            PublicKeyCredentialUserEntity(name=user_name, id=handle, display_name=user_name),
            # An authenticator that already holds one of these answers CREDENTIAL_EXCLUDED.
            credentials=existing,
            resident_key_requirement=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        state = dict(
            server_state,
            user_name=user_name,
            user_handle=websafe_encode(handle),
            issued_at=self._clock(),
        )
        return options, state

    def complete_registration(
        self, state: dict, response: RegistrationResponse | Mapping[str, Any]
    ) -> None:
        """Verify a registration response and store the new credential for the state's user."""
        op = Operation.REGISTER
        self._check_fresh(state, op)
        try:
            auth_data = self.server.register_complete(state, response)
        except Exception as exc:
            raise passkey_error(Failure.VERIFICATION_FAILED, op, _why(exc)) from None
        credential = auth_data.credential_data
        if credential is None:
            raise passkey_error(Failure.VERIFICATION_FAILED, op, "no attested credential data")

        data = self._load()
        users = data.setdefault(self.rp_id, {}).setdefault("users", {})
        for other in users.values():
            if any(c.credential_id == credential.credential_id for c in _credentials(other)):
                raise passkey_error(Failure.EXCLUDED, op, "credential id already registered")
        user_name = state["user_name"]
        account = users.setdefault(
            user_name, {"user_handle": state["user_handle"], "credentials": []}
        )
        if account["user_handle"] != state["user_handle"]:
            raise passkey_error(Failure.SESSION_EXPIRED, op, "the account changed meanwhile")
        if len(account["credentials"]) >= MAX_PASSKEYS_PER_USER:
            raise passkey_error(Failure.LIMIT_REACHED, op, f"{user_name} has five passkeys")
        account["credentials"].append(
            {"credential_data": websafe_encode(credential), "sign_count": auth_data.counter}
        )
        self._save(data)

    # -- authentication -----------------------------------------------------------------------

    def begin_authentication(self, user_name: str | None) -> tuple[CredentialRequestOptions, dict]:
        """Request options; with a user name only that user's passkeys are allowed.

        Without a user name the request is discoverable: the authenticator picks the account and
        the response's user handle names it.
        """
        op = Operation.SIGN_IN
        allowed: list[AttestedCredentialData] | None = None
        if user_name is not None:
            account = self._users().get(user_name)
            allowed = _credentials(account) if account else []
            if not allowed:
                raise passkey_error(Failure.NO_CREDENTIAL, op, f"no passkey for {user_name!r}")
        options, server_state = self.server.authenticate_begin(
            credentials=allowed, user_verification=UserVerificationRequirement.PREFERRED
        )
        state = dict(server_state, user_name=user_name, issued_at=self._clock())
        return options, state

    def complete_authentication(
        self, state: dict, response: AuthenticationResponse | Mapping[str, Any]
    ) -> str:
        """Verify an assertion; return the signed-in user's name.

        The signature counter must grow when both the stored and the new value are non-zero
        (a counter that goes back suggests a cloned authenticator).
        """
        op = Operation.SIGN_IN
        self._check_fresh(state, op)
        try:
            parsed = AuthenticationResponse.from_dict(response)
        except Exception as exc:
            raise passkey_error(Failure.VERIFICATION_FAILED, op, _why(exc)) from None

        data = self._load()
        users = data.get(self.rp_id, {}).get("users", {})
        owner = _owner_of(users, parsed.raw_id)
        if owner is None:
            raise passkey_error(Failure.VERIFICATION_FAILED, op, "unknown credential")
        user_name, account = owner
        if state.get("user_name") not in (None, user_name):
            raise passkey_error(Failure.VERIFICATION_FAILED, op, "credential of another user")
        user_handle = parsed.response.user_handle
        if user_handle is not None and user_handle != websafe_decode(account["user_handle"]):
            raise passkey_error(Failure.VERIFICATION_FAILED, op, "user handle does not match")
        try:
            self.server.authenticate_complete(state, _credentials(account), parsed)
        except Exception as exc:
            raise passkey_error(Failure.VERIFICATION_FAILED, op, _why(exc)) from None

        new_count = parsed.response.authenticator_data.counter
        for entry in account["credentials"]:
            if AttestedCredentialData(websafe_decode(entry["credential_data"])).credential_id == (
                parsed.raw_id
            ):
                old_count = int(entry["sign_count"])
                if new_count and old_count and new_count <= old_count:
                    raise passkey_error(
                        Failure.VERIFICATION_FAILED,
                        op,
                        f"signature counter went from {old_count} to {new_count}",
                    )
                entry["sign_count"] = new_count
        self._save(data)
        return user_name

    # -- accounts -----------------------------------------------------------------------------

    def user_names(self) -> list[str]:
        return sorted(self._users())

    def credentials_for(self, user_name: str) -> list[AttestedCredentialData]:
        account = self._users().get(user_name)
        return _credentials(account) if account else []

    def sign_count(self, credential_id: bytes) -> int | None:
        for account in self._users().values():
            for entry in account["credentials"]:
                data = AttestedCredentialData(websafe_decode(entry["credential_data"]))
                if data.credential_id == credential_id:
                    return int(entry["sign_count"])
        return None

    def _check_fresh(self, state: Mapping[str, Any], op: Operation) -> None:
        issued = state.get("issued_at")
        if not isinstance(issued, int | float) or not (
            0 <= self._clock() - issued <= self.session_lifetime
        ):
            raise passkey_error(Failure.SESSION_EXPIRED, op, "the ceremony state is too old")

    def _users(self) -> dict[str, Any]:
        return self._load().get(self.rp_id, {}).get("users", {})

    def _load(self) -> dict[str, Any]:
        # Re-read on every call: another process (a second `hybrid desktop`) may have written.
        if self._path is None:
            return json.loads(json.dumps(self._memory))
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise AccountStoreError(f"cannot read {self._path}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AccountStoreError(f"{self._path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise AccountStoreError(f"{self._path} does not hold a JSON object")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        if self._path is None:
            self._memory = data
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".relying-party-", dir=self._path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise AccountStoreError(f"cannot write {self._path}: {exc}") from exc


def _credentials(account: Mapping[str, Any]) -> list[AttestedCredentialData]:
    return [
        AttestedCredentialData(websafe_decode(entry["credential_data"]))
        for entry in account.get("credentials", [])
    ]


def _owner_of(users: Mapping[str, Any], credential_id: bytes) -> tuple[str, dict[str, Any]] | None:
    for user_name, account in users.items():
        if any(c.credential_id == credential_id for c in _credentials(account)):
            return user_name, account
    return None


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


__all__ = ["AccountStoreError", "PasskeyError", "RelyingParty"]
