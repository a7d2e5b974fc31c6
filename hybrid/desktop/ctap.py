"""CTAP2 requests a desktop sends over hybrid, and the WebAuthn responses built from the replies.

Pure functions, no I/O. Requests follow what deployed phones accept (protocol notes 11.1): CTAP2
canonical CBOR (``fido2.cbor``), complete ``rp`` and ``user`` entities, ES256 only, options
``{"rk": true, "uv": true}`` for makeCredential and ``{"uv": true}`` for getAssertion, and never a
PIN/UV auth parameter (the phone verifies the user itself). Replies are parsed with python-fido2's
``AttestationResponse`` / ``AssertionResponse`` and returned as its ``RegistrationResponse`` /
``AuthenticationResponse`` with ``authenticatorAttachment: "cross-platform"``, ready for any relying
party.

``error`` arguments build the catalogue error for the current ceremony, so these functions need not
know whether they run during registration or sign-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

from fido2 import cbor
from fido2.cose import ES256
from fido2.ctap2 import AssertionResponse, AttestationResponse
from fido2.webauthn import (
    AttestationObject,
    AuthenticationExtensionsClientOutputs,
    AuthenticationResponse,
    AuthenticatorAssertionResponse,
    AuthenticatorAttachment,
    AuthenticatorAttestationResponse,
    CollectedClientData,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialType,
    RegistrationResponse,
)

from hybrid import cbor as strict_cbor
from hybrid.catalogue import Failure, PasskeyError

MAKE_CREDENTIAL = 0x01
GET_ASSERTION = 0x02
PUBLIC_KEY = "public-key"

ErrorFactory = Callable[[Failure, str], PasskeyError]


def rp_id_for(options: PublicKeyCredentialCreationOptions | PublicKeyCredentialRequestOptions,
              origin: str) -> str:  # fmt: skip
    """The effective RP ID: the one in the options, else the origin's host (WebAuthn default)."""
    if isinstance(options, PublicKeyCredentialCreationOptions):
        rp_id = options.rp.id
    else:
        rp_id = options.rp_id
    return rp_id or (urlparse(origin).hostname or "")


def _descriptors(credentials: Any) -> list[dict[str, Any]]:
    return [{"id": bytes(c.id), "type": PUBLIC_KEY} for c in credentials or ()]


def make_credential_request(
    client_data_hash: bytes,
    options: PublicKeyCredentialCreationOptions,
    error: ErrorFactory,
    *,
    rp_id: str | None = None,
) -> bytes:
    """authenticatorMakeCredential: command byte 0x01 + canonical CBOR parameters."""
    offers_es256 = any(
        p.type == PUBLIC_KEY and p.alg == ES256.ALGORITHM for p in options.pub_key_cred_params
    )
    if not offers_es256:
        raise error(Failure.NOT_SUPPORTED, "the relying party does not accept ES256 (-7)")
    rp_id = rp_id or options.rp.id
    if not rp_id:
        raise error(Failure.PROTOCOL_ERROR, "the registration options have no RP ID")
    user = options.user
    user_name = user.name or ""
    params: dict[int, Any] = {
        1: bytes(client_data_hash),
        # At least one deployed phone requires every name field (protocol notes 11.1).
        2: {"id": rp_id, "name": options.rp.name or rp_id},
        3: {
            "id": bytes(user.id),
            "name": user_name,
            "displayName": user.display_name or user_name,
        },
        4: [{"alg": ES256.ALGORITHM, "type": PUBLIC_KEY}],
        7: {"rk": True, "uv": True},
    }
    exclude = _descriptors(options.exclude_credentials)
    if exclude:
        params[5] = exclude
    return bytes([MAKE_CREDENTIAL]) + cbor.encode(params)


def get_assertion_request(
    client_data_hash: bytes,
    options: PublicKeyCredentialRequestOptions,
    error: ErrorFactory,
    *,
    rp_id: str | None = None,
) -> bytes:
    """authenticatorGetAssertion: command byte 0x02 + canonical CBOR parameters."""
    rp_id = rp_id or options.rp_id
    if not rp_id:
        raise error(Failure.PROTOCOL_ERROR, "the sign-in options have no RP ID")
    params: dict[int, Any] = {1: rp_id, 2: bytes(client_data_hash), 5: {"uv": True}}
    allow = _descriptors(options.allow_credentials)
    if allow:
        params[3] = allow
    return bytes([GET_ASSERTION]) + cbor.encode(params)


def split_status(response: bytes, error: ErrorFactory) -> tuple[int, bytes]:
    """A CTAP response: status byte and the CBOR that follows it."""
    if not response:
        raise error(Failure.PROTOCOL_ERROR, "empty CTAP response")
    return response[0], bytes(response[1:])


def _decode_map(body: bytes, what: str, error: ErrorFactory) -> Mapping[int, Any]:
    try:
        decoded = strict_cbor.decode(body)  # the one strict decoder for peer input
    except strict_cbor.CborError as exc:
        raise error(Failure.PROTOCOL_ERROR, f"{what} is not valid CBOR: {exc}") from None
    if not isinstance(decoded, dict):
        raise error(Failure.PROTOCOL_ERROR, f"{what} is not a CBOR map")
    return decoded


def parse_attestation(
    body: bytes, client_data: CollectedClientData, error: ErrorFactory
) -> RegistrationResponse:
    """The phone's makeCredential reply as python-fido2's ``RegistrationResponse``."""
    fields = _decode_map(body, "makeCredential response", error)
    try:
        attestation = AttestationResponse.from_dict(fields)
        attestation_object = AttestationObject.create(
            attestation.fmt, attestation.auth_data, attestation.att_stmt
        )
        credential = attestation_object.auth_data.credential_data
    except Exception as exc:
        raise error(Failure.PROTOCOL_ERROR, f"malformed makeCredential response: {exc}") from None
    if credential is None:
        raise error(Failure.PROTOCOL_ERROR, "makeCredential response has no credential")
    return RegistrationResponse(
        raw_id=credential.credential_id,
        response=AuthenticatorAttestationResponse(
            client_data=client_data, attestation_object=attestation_object
        ),
        authenticator_attachment=AuthenticatorAttachment.CROSS_PLATFORM,
        client_extension_results=AuthenticationExtensionsClientOutputs({}),
        type=PublicKeyCredentialType.PUBLIC_KEY,
    )


def parse_assertion(
    body: bytes, error: ErrorFactory, options: PublicKeyCredentialRequestOptions | None = None
) -> AssertionResponse:
    """The phone's getAssertion reply as python-fido2's ``AssertionResponse``.

    CTAP lets the phone omit the credential (key 1) when the allow list had exactly one entry.
    """
    fields = dict(_decode_map(body, "getAssertion response", error))
    allow = (options.allow_credentials or ()) if options is not None else ()
    if 1 not in fields and len(allow) == 1:
        fields[1] = {"id": bytes(allow[0].id), "type": PUBLIC_KEY}
    try:
        return AssertionResponse.from_dict(fields)
    except Exception as exc:
        raise error(Failure.PROTOCOL_ERROR, f"malformed getAssertion response: {exc}") from None


def authentication_response(
    assertion: AssertionResponse, client_data: CollectedClientData, error: ErrorFactory
) -> AuthenticationResponse:
    """python-fido2's ``AuthenticationResponse`` for one assertion."""
    credential = assertion.credential
    if not (isinstance(credential, Mapping) and isinstance(credential.get("id"), bytes)):
        raise error(Failure.PROTOCOL_ERROR, "getAssertion response names no credential")
    raw_id = credential["id"]
    user_handle = None
    if assertion.user and isinstance(assertion.user.get("id"), bytes):
        user_handle = assertion.user["id"]
    return AuthenticationResponse(
        raw_id=raw_id,
        response=AuthenticatorAssertionResponse(
            client_data=client_data,
            authenticator_data=assertion.auth_data,
            signature=assertion.signature,
            user_handle=user_handle,
        ),
        authenticator_attachment=AuthenticatorAttachment.CROSS_PLATFORM,
        client_extension_results=AuthenticationExtensionsClientOutputs({}),
        type=PublicKeyCredentialType.PUBLIC_KEY,
    )
