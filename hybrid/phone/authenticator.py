"""The phone's CTAP2 authenticator: request bytes in, response bytes out.

``SoftwareAuthenticator.handle`` takes what arrives in a hybrid CTAP message (command byte + CBOR
parameters, §11.1 of the protocol reference) and returns the answer (status byte + CBOR). It
implements authenticatorMakeCredential, authenticatorGetAssertion and authenticatorGetInfo for
discoverable ES256 credentials with "none" attestation, the profile deployed phones present over
hybrid: no PIN protocol, the phone verifies the user itself and sets UV.

Apart from the awaited approval and the credential store, the code does no I/O. Bad request bytes
never raise: every problem becomes a CTAP status byte, because the desktop on the other end of the
tunnel is a peer we do not trust to send well-formed requests.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any

import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

from hybrid.catalogue import Operation
from hybrid.phone.approval import Approval, ApprovalRequest, Approver
from hybrid.phone.store import CredentialStore, StoredCredential

logger = logging.getLogger(__name__)

# "none" attestation carries no model information, so the AAGUID is all zeros (WebAuthn §6.5.4).
AAGUID = bytes(16)
CREDENTIAL_ID_LEN = 32
MAX_USER_ID_LEN = 64  # CTAP2 §6.1: user handles are at most 64 bytes
CLIENT_DATA_HASH_LEN = 32
PUBLIC_KEY_TYPE = "public-key"


class Command(IntEnum):
    MAKE_CREDENTIAL = 0x01
    GET_ASSERTION = 0x02
    GET_INFO = 0x04


class Status(IntEnum):
    """CTAP status bytes this authenticator can answer with (CTAP 2.2 §8.2)."""

    OK = 0x00
    INVALID_COMMAND = 0x01
    INVALID_PARAMETER = 0x02
    INVALID_LENGTH = 0x03
    CBOR_UNEXPECTED_TYPE = 0x11
    INVALID_CBOR = 0x12
    MISSING_PARAMETER = 0x14
    CREDENTIAL_EXCLUDED = 0x19
    UNSUPPORTED_ALGORITHM = 0x26
    OPERATION_DENIED = 0x27
    UNSUPPORTED_OPTION = 0x2B
    INVALID_OPTION = 0x2C
    NO_CREDENTIALS = 0x2E
    USER_ACTION_TIMEOUT = 0x2F
    OTHER = 0x7F


class _Reject(Exception):
    """Internal: abort the current request with ``status``."""

    def __init__(self, status: Status, why: str) -> None:
        super().__init__(why)
        self.status = status


# makeCredential parameter keys (CTAP 2.2 §6.1)
_MC_CLIENT_DATA_HASH, _MC_RP, _MC_USER, _MC_PARAMS, _MC_EXCLUDE = 1, 2, 3, 4, 5
_MC_OPTIONS, _MC_PIN_UV_PARAM, _MC_PIN_UV_PROTOCOL = 7, 8, 9
# getAssertion parameter keys (CTAP 2.2 §6.2)
_GA_RP_ID, _GA_CLIENT_DATA_HASH, _GA_ALLOW = 1, 2, 3
_GA_OPTIONS, _GA_PIN_UV_PARAM, _GA_PIN_UV_PROTOCOL = 5, 6, 7


class SoftwareAuthenticator:
    """A CTAP2 authenticator backed by a ``CredentialStore`` and a user ``Approver``.

    ``approval_timeout`` (seconds) turns an unanswered prompt into CTAP2_ERR_USER_ACTION_TIMEOUT
    instead of waiting for the caller to cancel. ``new_private_key`` and ``random_bytes`` are
    injectable so tests can make credentials deterministic.
    """

    def __init__(
        self,
        store: CredentialStore,
        approver: Approver,
        *,
        approval_timeout: float | None = None,
        new_private_key: Callable[[], ec.EllipticCurvePrivateKey] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.approver = approver
        self.approval_timeout = approval_timeout
        self._new_private_key = new_private_key or (lambda: ec.generate_private_key(ec.SECP256R1()))
        self._random_bytes = random_bytes

    def get_info(self) -> bytes:
        """The CBOR getInfo map (no status byte), as the post-handshake message carries it."""
        return cbor.encode(
            {
                0x01: ["FIDO_2_0", "FIDO_2_1"],
                0x03: AAGUID,
                0x04: {"rk": True, "uv": True, "up": True, "plat": False},
                0x09: ["hybrid", "internal"],
                0x0A: [{"alg": ES256.ALGORITHM, "type": PUBLIC_KEY_TYPE}],
            }
        )

    async def handle(self, request: bytes) -> bytes:
        """Answer one CTAP2 request (command byte + CBOR) with status byte + CBOR."""
        try:
            if not request:
                raise _Reject(Status.INVALID_LENGTH, "empty request")
            command, payload = request[0], bytes(request[1:])
            if command == Command.GET_INFO:
                return bytes([Status.OK]) + self.get_info()
            if command == Command.MAKE_CREDENTIAL:
                return await self._make_credential(_decode_params(payload))
            if command == Command.GET_ASSERTION:
                return await self._get_assertion(_decode_params(payload))
            raise _Reject(Status.INVALID_COMMAND, f"unsupported command 0x{command:02x}")
        except _Reject as reject:
            logger.info("CTAP request rejected with 0x%02x: %s", reject.status, reject)
            return bytes([reject.status])
        except Exception:
            # A bug of ours must not take the tunnel down with a traceback: answer "other".
            logger.exception("CTAP request failed unexpectedly")
            return bytes([Status.OTHER])

    async def _make_credential(self, params: Mapping[Any, Any]) -> bytes:
        # "none" attestation signs nothing, but the hash is still a required, checked parameter.
        _client_data_hash(params, _MC_CLIENT_DATA_HASH)
        rp = _required(params, _MC_RP, dict)
        rp_id = _required(rp, "id", str)
        rp_name = _optional(rp, "name", str)
        user = _required(params, _MC_USER, dict)
        user_id = _required(user, "id", bytes)
        if not 0 < len(user_id) <= MAX_USER_ID_LEN:
            raise _Reject(Status.INVALID_PARAMETER, "user.id must be 1 to 64 bytes")
        user_name = _optional(user, "name", str)
        user_display_name = _optional(user, "displayName", str)
        cred_params = _required(params, _MC_PARAMS, list)
        exclude = _descriptor_ids(params, _MC_EXCLUDE)
        options = _options(params, _MC_OPTIONS)
        _refuse_pin_uv_auth(params, _MC_PIN_UV_PARAM, _MC_PIN_UV_PROTOCOL)

        if not _offers_es256(cred_params):
            raise _Reject(Status.UNSUPPORTED_ALGORITHM, "no ES256 in pubKeyCredParams")
        if options.get("up") is False:
            # CTAP 2.1 §6.1.2 step 7: makeCredential always needs user presence.
            raise _Reject(Status.INVALID_OPTION, "up=false is not allowed in makeCredential")

        request = ApprovalRequest(Operation.REGISTER, rp_id, rp_name, user_name, user_display_name)
        excluded = exclude and any(c.credential_id in exclude for c in self.store.for_rp(rp_id))
        approval = await self._ask(request)
        if excluded:
            # CTAP asks for presence before revealing that the credential exists.
            raise _Reject(Status.CREDENTIAL_EXCLUDED, "excludeList matched a stored credential")

        private_key = self._new_private_key()
        credential_id = self._random_bytes(CREDENTIAL_ID_LEN)
        self.store.add(
            credential_id=credential_id,
            rp_id=rp_id,
            rp_name=rp_name,
            user_id=user_id,
            user_name=user_name,
            user_display_name=user_display_name,
            private_key=private_key,
        )
        attested = AttestedCredentialData.create(
            AAGUID, credential_id, ES256.from_cryptography_key(private_key.public_key())
        )
        auth_data = AuthenticatorData.create(
            _rp_id_hash(rp_id),
            _flags(approval) | AuthenticatorData.FLAG.AT,
            0,
            attested,
        )
        return bytes([Status.OK]) + cbor.encode({1: "none", 2: auth_data, 3: {}})

    async def _get_assertion(self, params: Mapping[Any, Any]) -> bytes:
        rp_id = _required(params, _GA_RP_ID, str)
        client_data_hash = _client_data_hash(params, _GA_CLIENT_DATA_HASH)
        allow = _descriptor_ids(params, _GA_ALLOW)
        options = _options(params, _GA_OPTIONS)
        _refuse_pin_uv_auth(params, _GA_PIN_UV_PARAM, _GA_PIN_UV_PROTOCOL)
        if "rk" in options:
            raise _Reject(Status.UNSUPPORTED_OPTION, "rk is not a getAssertion option")

        candidates = self.store.for_rp(rp_id)
        discoverable = not allow
        if not discoverable:
            candidates = [c for c in candidates if c.credential_id in allow]
        if not candidates:
            raise _Reject(Status.NO_CREDENTIALS, f"no credential for {rp_id!r}")
        # Deployed phones let the user pick an account; with no UI, the newest one wins.
        credential = candidates[0]

        approval = await self._ask(
            ApprovalRequest(
                Operation.SIGN_IN,
                rp_id,
                credential.rp_name,
                credential.user_name,
                credential.user_display_name,
            )
        )
        counter = self.store.increment_counter(credential.credential_id)
        auth_data = AuthenticatorData.create(_rp_id_hash(rp_id), _flags(approval), counter)
        signature = credential.private_key().sign(
            auth_data + client_data_hash, ec.ECDSA(hashes.SHA256())
        )
        response: dict[int, Any] = {
            1: {"id": credential.credential_id, "type": PUBLIC_KEY_TYPE},
            2: auth_data,
            3: signature,
            4: _user_entity(credential, with_names=approval.user_verified),
        }
        if discoverable:
            response[6] = True
        return bytes([Status.OK]) + cbor.encode(response)

    async def _ask(self, request: ApprovalRequest) -> Approval:
        approval: Approval | None = None
        timeout = math.inf if self.approval_timeout is None else self.approval_timeout
        with trio.move_on_after(timeout):
            approval = await self.approver(request)
        if approval is None:
            raise _Reject(Status.USER_ACTION_TIMEOUT, "no answer from the user in time")
        if not approval.approved:
            raise _Reject(Status.OPERATION_DENIED, "the user declined")
        return approval


def _decode_params(payload: bytes) -> Mapping[Any, Any]:
    if not payload:
        raise _Reject(Status.MISSING_PARAMETER, "no CBOR parameters")
    try:
        params = cbor.decode(payload)
        # fido2's decoder is lenient (it reads null as False, ignores short strings); a
        # re-encoding that differs means the input was not valid CTAP2-canonical CBOR.
        canonical = cbor.encode(params) == payload
    except Exception as exc:
        raise _Reject(Status.INVALID_CBOR, f"undecodable CBOR: {exc!r}") from None
    if not canonical:
        raise _Reject(Status.INVALID_CBOR, "CBOR is not CTAP2-canonical")
    if not isinstance(params, dict):
        raise _Reject(Status.CBOR_UNEXPECTED_TYPE, "parameters are not a CBOR map")
    return params


def _required(container: Mapping[Any, Any], key: Any, kind: type) -> Any:
    if key not in container:
        raise _Reject(Status.MISSING_PARAMETER, f"missing parameter {key!r}")
    return _typed(container[key], key, kind)


def _optional(container: Mapping[Any, Any], key: Any, kind: type) -> Any:
    if key not in container:
        return None
    return _typed(container[key], key, kind)


def _typed(value: Any, key: Any, kind: type) -> Any:
    # bool is an int in Python, but never a valid CBOR integer parameter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Reject(Status.CBOR_UNEXPECTED_TYPE, f"parameter {key!r} is not {kind.__name__}")
    return value


def _client_data_hash(params: Mapping[Any, Any], key: int) -> bytes:
    value = _required(params, key, bytes)
    if len(value) != CLIENT_DATA_HASH_LEN:
        raise _Reject(Status.INVALID_PARAMETER, "clientDataHash must be 32 bytes")
    return value


def _descriptor_ids(params: Mapping[Any, Any], key: int) -> set[bytes]:
    """Credential ids of a PublicKeyCredentialDescriptor list; other key types are skipped."""
    ids: set[bytes] = set()
    for descriptor in _optional(params, key, list) or ():
        descriptor = _typed(descriptor, "credential descriptor", dict)
        kind = _required(descriptor, "type", str)
        credential_id = _required(descriptor, "id", bytes)
        if kind == PUBLIC_KEY_TYPE:
            ids.add(credential_id)
    return ids


def _offers_es256(cred_params: list) -> bool:
    offered = False
    for entry in cred_params:
        entry = _typed(entry, "pubKeyCredParams entry", dict)
        alg = _required(entry, "alg", int)
        kind = _required(entry, "type", str)
        offered = offered or (alg == ES256.ALGORITHM and kind == PUBLIC_KEY_TYPE)
    return offered


def _options(params: Mapping[Any, Any], key: int) -> dict[str, bool]:
    options = _optional(params, key, dict) or {}
    for name, value in options.items():
        _typed(name, "option name", str)
        _typed(value, f"option {name!r}", bool)
    return options


def _refuse_pin_uv_auth(params: Mapping[Any, Any], param_key: int, protocol_key: int) -> None:
    """We offer no PIN/UV auth protocol (like deployed phones), so any pinUvAuthParam is refused."""
    if param_key in params:
        if protocol_key not in params:
            raise _Reject(Status.MISSING_PARAMETER, "pinUvAuthParam without pinUvAuthProtocol")
        raise _Reject(Status.INVALID_PARAMETER, "no pinUvAuthProtocol is supported")


def _rp_id_hash(rp_id: str) -> bytes:
    return hashlib.sha256(rp_id.encode("utf-8")).digest()


def _flags(approval: Approval) -> AuthenticatorData.FLAG:
    flags = AuthenticatorData.FLAG.UP
    if approval.user_verified:
        flags |= AuthenticatorData.FLAG.UV
    return flags


def _user_entity(credential: StoredCredential, *, with_names: bool) -> dict[str, Any]:
    # CTAP2: identifying names only after user verification; the handle always.
    user: dict[str, Any] = {"id": credential.user_id}
    if with_names:
        user["name"] = credential.user_name or ""
        user["displayName"] = credential.user_display_name or ""
    return user
