"""WebAuthn options for the test page and checks of what came back, with python-fido2's server.

Options are built by ``fido2.server.Fido2Server`` (the relying party's side), turned into the
WebAuthn JSON form the page parses with ``PublicKeyCredential.parse*OptionsFromJSON``, plus
``hints: ["hybrid"]`` (Chromium then shows its QR dialog at once) and any extensions.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticatorData,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

RP_ID = "localhost"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def server_for(origin: str) -> Fido2Server:
    return Fido2Server(
        PublicKeyCredentialRpEntity(name="hybrid test", id=RP_ID),
        verify_origin=lambda candidate: candidate == origin,
    )


def _json(options: Any, extensions: dict[str, Any] | None) -> dict[str, Any]:
    public_key = json.loads(json.dumps(dict(options)["publicKey"]))
    public_key["hints"] = ["hybrid"]
    if extensions:
        public_key.setdefault("extensions", {}).update(extensions)
    return public_key


def creation(
    server: Fido2Server,
    *,
    user: str = "alice",
    resident_key: str = "required",
    user_verification: str = "preferred",
    exclude: list[AttestedCredentialData] | None = None,
    extensions: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Creation options (JSON form) and the server state to verify the answer with."""
    options, state = server.register_begin(
        PublicKeyCredentialUserEntity(name=user, id=os.urandom(16), display_name=user.title()),
        credentials=exclude,
        resident_key_requirement=ResidentKeyRequirement(resident_key),
        user_verification=UserVerificationRequirement(user_verification),
    )
    return _json(options, extensions), state


def request(
    server: Fido2Server,
    *,
    allow: list[AttestedCredentialData] | None = None,
    user_verification: str = "preferred",
    extensions: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    options, state = server.authenticate_begin(
        credentials=allow, user_verification=UserVerificationRequirement(user_verification)
    )
    return _json(options, extensions), state


def registered(
    server: Fido2Server, state: dict[str, Any], result: dict[str, Any]
) -> AttestedCredentialData:
    """Verify a page's registration result; the new credential (for allow and exclude lists)."""
    credential = server.register_complete(state, result["credential"]).credential_data
    assert credential is not None, "no attested credential data"
    return credential


def authenticator_data(result: dict[str, Any]) -> AuthenticatorData:
    """The authenticator data of a page result (registration or assertion)."""
    return AuthenticatorData(unb64url(result["credential"]["response"]["authenticatorData"]))


def user_verified(result: dict[str, Any]) -> bool:
    return bool(authenticator_data(result).flags & AuthenticatorData.FLAG.UV)
