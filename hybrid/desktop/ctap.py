"""CTAP2 requests a desktop sends over hybrid, and the WebAuthn responses built from the replies.

Pure functions, no I/O. Requests carry what the relying party asked for, the way browsers build
them for a phone (protocol notes 11.1):

* the RP's whole ``pubKeyCredParams`` list (WebAuthn's default ES256 + RS256 when it is empty),
  allow and exclude lists as given;
* ``rk: true`` only when ``residentKey`` is ``required``, or ``preferred`` and the phone's getInfo
  says ``rk``; ``uv: true`` only when ``userVerification`` resolves to required (``preferred``
  counts when the phone's getInfo says ``uv``);
* extensions: ``credProps`` is computed here and never sent; ``prf`` inputs are hashed here
  (``SHA-256("WebAuthn PRF" || 0x00 || input)``) and sent as the CTAP extension ``"prf"``, and its
  outputs are read from the unsigned extension outputs (makeCredential key 6, getAssertion key 8);
  every other extension is dropped, as browsers drop the ones they do not implement;
* CTAP2 canonical CBOR (``fido2.cbor``), complete ``rp`` and ``user`` entities, and never a PIN/UV
  auth parameter (the phone verifies the user itself).

Replies become python-fido2's ``RegistrationResponse`` / ``AuthenticationResponse`` with
``authenticatorAttachment: "cross-platform"`` and ``client_extension_results`` holding
python-fido2's own output types (``CredentialPropertiesOutput``,
``AuthenticatorExtensionsPRFOutputs``), so code written for ``Fido2Client`` reads them the same way
(``result.client_extension_results.prf.results.first``, or ``dict(...)`` for the JSON form).

``error`` arguments build the catalogue error for the current ceremony, so these functions need not
know whether they run during registration or sign-in. ``info`` is the phone's getInfo (python-fido2
``Info``) from the post-handshake message; ``None`` means "unknown" (nothing optional assumed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from fido2 import cbor
from fido2.cose import ES256, RS256
from fido2.ctap2 import AssertionResponse, AttestationResponse, Info
from fido2.ctap2.extensions import (
    AuthenticatorExtensionsPRFInputs,
    AuthenticatorExtensionsPRFOutputs,
    AuthenticatorExtensionsPRFValues,
    CredentialPropertiesOutput,
)
from fido2.utils import websafe_decode
from fido2.webauthn import (
    AttestationObject,
    AuthenticationExtensionsClientOutputs,
    AuthenticationResponse,
    AuthenticatorAssertionResponse,
    AuthenticatorAttachment,
    AuthenticatorAttestationResponse,
    AuthenticatorSelectionCriteria,
    CollectedClientData,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialType,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from hybrid.catalogue import Failure, PasskeyError

MAKE_CREDENTIAL = 0x01
GET_ASSERTION = 0x02
PUBLIC_KEY = "public-key"
PRF = "prf"
CRED_PROPS = "credProps"
PRF_CONTEXT = b"WebAuthn PRF\x00"
PRF_OUTPUT_LEN = 32
# WebAuthn §5.4: an empty pubKeyCredParams means ES256 and RS256.
DEFAULT_ALGORITHMS = (ES256.ALGORITHM, RS256.ALGORITHM)
# Unsigned extension outputs (CTAP 2.2): makeCredential response key 6, getAssertion key 8.
MC_UNSIGNED_OUTPUTS = 6
GA_UNSIGNED_OUTPUTS = 8

ErrorFactory = Callable[[Failure, str], PasskeyError]
Options = PublicKeyCredentialCreationOptions | PublicKeyCredentialRequestOptions


def rp_id_for(options: Options, origin: str) -> str:
    """The effective RP ID: the one in the options, else the origin's host (WebAuthn default)."""
    if isinstance(options, PublicKeyCredentialCreationOptions):
        rp_id = options.rp.id
    else:
        rp_id = options.rp_id
    return rp_id or (urlparse(origin).hostname or "")


def parse_info(get_info: bytes | None, error: ErrorFactory) -> Info | None:
    """The phone's getInfo map as python-fido2's ``Info`` (``None`` when the phone sent none)."""
    if get_info is None:
        return None
    try:
        decoded = cbor.decode(get_info)
        if not isinstance(decoded, dict):
            raise TypeError("not a CBOR map")
        return Info.from_dict(decoded)
    except Exception as exc:  # fido2 raises assorted errors on malformed input
        raise error(Failure.PROTOCOL_ERROR, f"the phone's getInfo is malformed: {exc}") from None


def prf_salt(value: bytes) -> bytes:
    """A WebAuthn PRF input as the CTAP ``prf`` extension expects it: already hashed."""
    return hashlib.sha256(PRF_CONTEXT + bytes(value)).digest()


def _option(info: Info | None, name: str) -> bool:
    return bool(info is not None and info.options.get(name))


def _phone_extensions(info: Info | None) -> Sequence[str]:
    return info.extensions if info is not None else ()


def resident_key_requested(options: PublicKeyCredentialCreationOptions, info: Info | None) -> bool:
    """Whether to send ``rk: true``: required, or preferred and the phone supports it."""
    selection = options.authenticator_selection or AuthenticatorSelectionCriteria()
    if selection.resident_key == ResidentKeyRequirement.REQUIRED:
        return True
    return selection.resident_key == ResidentKeyRequirement.PREFERRED and _option(info, "rk")


def user_verification_requested(
    requirement: UserVerificationRequirement | str | None, info: Info | None
) -> bool:
    """Whether to send ``uv: true``; WebAuthn's default requirement is ``preferred``."""
    resolved = UserVerificationRequirement(requirement or UserVerificationRequirement.PREFERRED)
    if resolved == UserVerificationRequirement.REQUIRED:
        return True
    return resolved == UserVerificationRequirement.PREFERRED and _option(info, "uv")


def _descriptors(credentials: Any) -> list[dict[str, Any]]:
    return [
        {"id": bytes(c.id), "type": PUBLIC_KEY} for c in credentials or () if c.type == PUBLIC_KEY
    ]


def _algorithms(options: PublicKeyCredentialCreationOptions) -> list[dict[str, Any]]:
    params = [
        {"alg": int(p.alg), "type": PUBLIC_KEY}
        for p in options.pub_key_cred_params or ()
        if p.type == PUBLIC_KEY
    ]
    if not options.pub_key_cred_params:
        params = [{"alg": alg, "type": PUBLIC_KEY} for alg in DEFAULT_ALGORITHMS]
    return params


def _prf_inputs(extensions: Mapping[str, Any] | None) -> AuthenticatorExtensionsPRFInputs | None:
    raw = (extensions or {}).get(PRF)
    if raw is None:
        return None
    return AuthenticatorExtensionsPRFInputs.from_dict(raw)


def _hashed(values: AuthenticatorExtensionsPRFValues) -> dict[str, bytes]:
    hashed = {"first": prf_salt(values.first)}
    if values.second is not None:
        hashed["second"] = prf_salt(values.second)
    return hashed


def _wants(extensions: Mapping[str, Any] | None, name: str) -> bool:
    return extensions is not None and extensions.get(name) is not None


def make_credential_request(
    client_data_hash: bytes,
    options: PublicKeyCredentialCreationOptions,
    error: ErrorFactory,
    *,
    rp_id: str | None = None,
    info: Info | None = None,
) -> bytes:
    """authenticatorMakeCredential: command byte 0x01 + canonical CBOR parameters."""
    rp_id = rp_id or options.rp.id
    if not rp_id:
        raise error(Failure.PROTOCOL_ERROR, "the registration options have no RP ID")
    params_list = _algorithms(options)
    if not params_list:
        raise error(Failure.NOT_SUPPORTED, "pubKeyCredParams names no public-key algorithm")
    user = options.user
    user_name = user.name or ""
    selection = options.authenticator_selection or AuthenticatorSelectionCriteria()
    ctap_options: dict[str, bool] = {"rk": resident_key_requested(options, info)}
    if user_verification_requested(selection.user_verification, info):
        ctap_options["uv"] = True
    params: dict[int, Any] = {
        1: bytes(client_data_hash),
        # At least one deployed phone requires every name field (protocol notes 11.1).
        2: {"id": rp_id, "name": options.rp.name or rp_id},
        3: {
            "id": bytes(user.id),
            "name": user_name,
            "displayName": user.display_name or user_name,
        },
        4: params_list,
        7: ctap_options,
    }
    exclude = _descriptors(options.exclude_credentials)
    if exclude:
        params[5] = exclude
    try:
        prf = _prf_inputs(options.extensions)
    except Exception as exc:
        raise error(Failure.PROTOCOL_ERROR, f"malformed prf extension input: {exc}") from None
    if prf is not None and PRF in _phone_extensions(info):
        if prf.eval_by_credential:
            # WebAuthn: evalByCredential is meaningless at creation (no credential ids yet).
            raise error(Failure.NOT_SUPPORTED, "prf evalByCredential is not allowed at creation")
        params[6] = {PRF: {"eval": _hashed(prf.eval)} if prf.eval else {}}
    return bytes([MAKE_CREDENTIAL]) + cbor.encode(params)


def _prf_for_assertion(
    prf: AuthenticatorExtensionsPRFInputs, allowed: list[dict[str, Any]], error: ErrorFactory
) -> dict[str, Any]:
    ctap: dict[str, Any] = {}
    if prf.eval:
        ctap["eval"] = _hashed(prf.eval)
    if prf.eval_by_credential:
        allowed_ids = {d["id"] for d in allowed}
        if not allowed_ids:
            raise error(Failure.NOT_SUPPORTED, "prf evalByCredential needs allowCredentials")
        by_credential: dict[bytes, dict[str, bytes]] = {}
        for key, values in prf.eval_by_credential.items():
            try:
                credential_id = websafe_decode(key)
            except Exception:
                raise error(
                    Failure.NOT_SUPPORTED, f"prf evalByCredential key {key!r} is not base64url"
                ) from None
            if credential_id not in allowed_ids:
                raise error(
                    Failure.NOT_SUPPORTED,
                    f"prf evalByCredential names {key}, which is not in allowCredentials",
                )
            by_credential[credential_id] = _hashed(
                AuthenticatorExtensionsPRFValues.from_dict(values)
            )
        ctap["evalByCredential"] = by_credential
    return ctap


def get_assertion_request(
    client_data_hash: bytes,
    options: PublicKeyCredentialRequestOptions,
    error: ErrorFactory,
    *,
    rp_id: str | None = None,
    info: Info | None = None,
) -> bytes:
    """authenticatorGetAssertion: command byte 0x02 + canonical CBOR parameters."""
    rp_id = rp_id or options.rp_id
    if not rp_id:
        raise error(Failure.PROTOCOL_ERROR, "the sign-in options have no RP ID")
    params: dict[int, Any] = {1: rp_id, 2: bytes(client_data_hash)}
    allow = _descriptors(options.allow_credentials)
    if allow:
        params[3] = allow
    try:
        prf = _prf_inputs(options.extensions)
    except Exception as exc:
        raise error(Failure.PROTOCOL_ERROR, f"malformed prf extension input: {exc}") from None
    if prf is not None and PRF in _phone_extensions(info):
        ctap_prf = _prf_for_assertion(prf, allow, error)
        if ctap_prf:
            params[4] = {PRF: ctap_prf}
    if user_verification_requested(options.user_verification, info):
        params[5] = {"uv": True}
    return bytes([GET_ASSERTION]) + cbor.encode(params)


def split_status(response: bytes, error: ErrorFactory) -> tuple[int, bytes]:
    """A CTAP response: status byte and the CBOR that follows it."""
    if not response:
        raise error(Failure.PROTOCOL_ERROR, "empty CTAP response")
    return response[0], bytes(response[1:])


def _decode_map(body: bytes, what: str, error: ErrorFactory) -> Mapping[int, Any]:
    try:
        decoded = cbor.decode(body)
    except Exception as exc:  # fido2.cbor raises assorted errors on malformed input
        raise error(Failure.PROTOCOL_ERROR, f"{what} is not valid CBOR: {exc}") from None
    if not isinstance(decoded, dict):
        raise error(Failure.PROTOCOL_ERROR, f"{what} is not a CBOR map")
    return decoded


def _prf_results(
    unsigned: Any, what: str, error: ErrorFactory
) -> tuple[bool | None, AuthenticatorExtensionsPRFValues | None]:
    """``(enabled, results)`` from the phone's unsigned extension outputs."""
    if unsigned is None:
        return None, None
    if not isinstance(unsigned, dict):
        raise error(Failure.PROTOCOL_ERROR, f"{what} unsigned extension outputs are not a map")
    prf = unsigned.get(PRF)
    if prf is None:
        return None, None
    if not isinstance(prf, dict):
        raise error(Failure.PROTOCOL_ERROR, f"{what} prf output is not a map")
    enabled = prf.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise error(Failure.PROTOCOL_ERROR, f"{what} prf.enabled is not a boolean")
    results = prf.get("results")
    if results is None:
        return enabled, None
    if not isinstance(results, dict):
        raise error(Failure.PROTOCOL_ERROR, f"{what} prf.results is not a map")
    first, second = results.get("first"), results.get("second")
    for name, value in (("first", first), ("second", second)):
        if value is not None and not (isinstance(value, bytes) and len(value) == PRF_OUTPUT_LEN):
            raise error(Failure.PROTOCOL_ERROR, f"{what} prf.results.{name} is not 32 bytes")
    if first is None:
        raise error(Failure.PROTOCOL_ERROR, f"{what} prf.results has no first output")
    return enabled, AuthenticatorExtensionsPRFValues(first=first, second=second)


def registration_extension_results(
    options: PublicKeyCredentialCreationOptions,
    info: Info | None,
    unsigned: Any,
    error: ErrorFactory,
) -> dict[str, Any]:
    """clientExtensionResults of a registration: credProps and prf, if the RP asked for them."""
    results: dict[str, Any] = {}
    extensions = options.extensions
    if extensions and extensions.get(CRED_PROPS) is True:
        # The phone was asked for rk exactly when this is true, and honours it.
        results[CRED_PROPS] = CredentialPropertiesOutput(rk=resident_key_requested(options, info))
    if _wants(extensions, PRF):
        enabled, values = _prf_results(unsigned, "makeCredential", error)
        results[PRF] = AuthenticatorExtensionsPRFOutputs(enabled=bool(enabled), results=values)
    return results


def assertion_extension_results(
    options: PublicKeyCredentialRequestOptions, unsigned: Any, error: ErrorFactory
) -> dict[str, Any]:
    """clientExtensionResults of a sign-in: prf results when the phone returned some."""
    results: dict[str, Any] = {}
    if _wants(options.extensions, PRF):
        _, values = _prf_results(unsigned, "getAssertion", error)
        if values is not None:
            results[PRF] = AuthenticatorExtensionsPRFOutputs(results=values)
    return results


def parse_attestation(
    body: bytes,
    client_data: CollectedClientData,
    error: ErrorFactory,
    *,
    options: PublicKeyCredentialCreationOptions | None = None,
    info: Info | None = None,
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
    extension_results: dict[str, Any] = {}
    if options is not None:
        extension_results = registration_extension_results(
            options, info, fields.get(MC_UNSIGNED_OUTPUTS), error
        )
    return RegistrationResponse(
        raw_id=credential.credential_id,
        response=AuthenticatorAttestationResponse(
            client_data=client_data, attestation_object=attestation_object
        ),
        authenticator_attachment=AuthenticatorAttachment.CROSS_PLATFORM,
        client_extension_results=AuthenticationExtensionsClientOutputs(extension_results),
        type=PublicKeyCredentialType.PUBLIC_KEY,
    )


def unsigned_assertion_outputs(body: bytes, error: ErrorFactory) -> Any:
    """getAssertion response key 8, which python-fido2's ``AssertionResponse`` does not keep."""
    return _decode_map(body, "getAssertion response", error).get(GA_UNSIGNED_OUTPUTS)


def parse_assertion(
    body: bytes, error: ErrorFactory, options: PublicKeyCredentialRequestOptions | None = None
) -> AssertionResponse:
    """The phone's getAssertion reply as python-fido2's ``AssertionResponse``.

    CTAP lets the phone omit the credential (key 1) when the allow list had exactly one entry.
    Key 8 (unsigned extension outputs) has no field there: read it with
    ``unsigned_assertion_outputs``.
    """
    fields = dict(_decode_map(body, "getAssertion response", error))
    fields.pop(GA_UNSIGNED_OUTPUTS, None)
    allow = (options.allow_credentials or ()) if options is not None else ()
    if 1 not in fields and len(allow) == 1:
        fields[1] = {"id": bytes(allow[0].id), "type": PUBLIC_KEY}
    try:
        return AssertionResponse.from_dict(fields)
    except Exception as exc:
        raise error(Failure.PROTOCOL_ERROR, f"malformed getAssertion response: {exc}") from None


def authentication_response(
    assertion: AssertionResponse,
    client_data: CollectedClientData,
    error: ErrorFactory,
    extension_results: Mapping[str, Any] | None = None,
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
        client_extension_results=AuthenticationExtensionsClientOutputs(extension_results or {}),
        type=PublicKeyCredentialType.PUBLIC_KEY,
    )


__all__ = [
    "assertion_extension_results",
    "authentication_response",
    "get_assertion_request",
    "make_credential_request",
    "parse_assertion",
    "parse_attestation",
    "parse_info",
    "prf_salt",
    "registration_extension_results",
    "resident_key_requested",
    "rp_id_for",
    "split_status",
    "unsigned_assertion_outputs",
    "user_verification_requested",
]
