"""The phone's CTAP2 authenticator: request bytes in, response bytes out.

``SoftwareAuthenticator.handle`` takes what arrives in a hybrid CTAP message (command byte + CBOR
parameters, §11.1 of the protocol reference) and returns the answer (status byte + CBOR). It
implements authenticatorMakeCredential, authenticatorGetAssertion and authenticatorGetInfo for
ES256 credentials with "none" attestation, the profile deployed phones present over hybrid: no PIN
protocol, the phone verifies the user itself. What the request asks for is honoured:

* ``rk: true`` makes a discoverable credential, otherwise it is stored but only found through an
  allow list;
* ``uv: true`` asks the approver to verify the user; UV is flagged only when asked and done. An
  approver with no way to verify (``can_verify_user = False``) gets ``uv`` absent from getInfo and
  ``uv: true`` refused with CTAP2_ERR_INVALID_OPTION (CTAP 2.1 §6.1.2); a verification that fails
  is CTAP2_ERR_UV_INVALID;
* the ``prf`` extension (listed in getInfo): every credential has its own 32-byte secret, and
  each already-hashed salt gives HMAC-SHA256(secret, salt), as hmac-secret computes it; results
  go in the unsigned extension outputs (makeCredential key 6: ``{"prf": {"enabled": true}}``,
  getAssertion key 8: ``{"prf": {"results": {"first", "second"}}}``), ``evalByCredential``
  taking precedence for the credential used;
* a discoverable sign-in with several accounts for the site lets the approver choose
  (``ApprovalRequest.accounts``), and only that choice sets ``userSelected``.

Apart from the awaited approval and the credential store, the code does no I/O. Bad request bytes
never raise: every problem becomes a CTAP status byte, because the desktop on the other end of the
tunnel is a peer we do not trust to send well-formed requests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

from hybrid.catalogue import Operation
from hybrid.phone.approval import Account, Approval, ApprovalRequest, Approver
from hybrid.phone.store import CredentialStore, StoredCredential

logger = logging.getLogger(__name__)

# "none" attestation carries no model information, so the AAGUID is all zeros (WebAuthn §6.5.4).
AAGUID = bytes(16)
CREDENTIAL_ID_LEN = 32
MAX_USER_ID_LEN = 64  # CTAP2 §6.1: user handles are at most 64 bytes
CLIENT_DATA_HASH_LEN = 32
PUBLIC_KEY_TYPE = "public-key"
PRF = "prf"
PRF_SALT_LEN = 32


# CTAP command and status numbers are python-fido2's (CTAP 2.2 sections 6 and 8.2), not ours.
CMD = Ctap2.CMD
ERR = CtapError.ERR


class _Reject(Exception):
    """Internal: abort the current request with ``status``."""

    def __init__(self, status: CtapError.ERR, why: str) -> None:
        super().__init__(why)
        self.status = status


# makeCredential parameter keys (CTAP 2.2 §6.1)
_MC_CLIENT_DATA_HASH, _MC_RP, _MC_USER, _MC_PARAMS, _MC_EXCLUDE = 1, 2, 3, 4, 5
_MC_EXTENSIONS, _MC_OPTIONS, _MC_PIN_UV_PARAM, _MC_PIN_UV_PROTOCOL = 6, 7, 8, 9
# getAssertion parameter keys (CTAP 2.2 §6.2)
_GA_RP_ID, _GA_CLIENT_DATA_HASH, _GA_ALLOW, _GA_EXTENSIONS = 1, 2, 3, 4
_GA_OPTIONS, _GA_PIN_UV_PARAM, _GA_PIN_UV_PROTOCOL = 5, 6, 7
# Response keys of the unsigned extension outputs (CTAP 2.2 §6.1.2, §6.2.2)
_MC_UNSIGNED_OUTPUTS, _GA_USER_SELECTED, _GA_UNSIGNED_OUTPUTS = 6, 6, 8


class SoftwareAuthenticator:
    """A CTAP2 authenticator backed by a ``CredentialStore`` and a user ``Approver``.

    ``approval_timeout`` (seconds) turns an unanswered prompt into CTAP2_ERR_USER_ACTION_TIMEOUT
    instead of waiting for the caller to cancel. ``can_verify_user`` says whether this phone has
    a way to verify its user (default: the approver's ``can_verify_user`` attribute, else True).
    ``new_private_key`` and ``random_bytes`` are injectable so tests can make credentials
    deterministic.
    """

    def __init__(
        self,
        store: CredentialStore,
        approver: Approver,
        *,
        approval_timeout: float | None = None,
        can_verify_user: bool | None = None,
        new_private_key: Callable[[], ec.EllipticCurvePrivateKey] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """Answer CTAP2 requests from the passkeys in ``store``, asking ``approver`` (for example
        ``auto_approver()`` or ``terminal_approver()``) before each one is used or created."""
        self.store = store
        self.approver = approver
        self.approval_timeout = approval_timeout
        if can_verify_user is None:
            can_verify_user = bool(getattr(approver, "can_verify_user", True))
        self.can_verify_user = can_verify_user
        self._new_private_key = new_private_key or (lambda: ec.generate_private_key(ec.SECP256R1()))
        self._random_bytes = random_bytes

    def get_info(self) -> bytes:
        """The CBOR getInfo map (no status byte), as the post-handshake message carries it."""
        return cbor.encode(
            {
                0x01: ["FIDO_2_0", "FIDO_2_1"],
                0x02: [PRF],
                0x03: AAGUID,
                0x04: {"rk": True, "uv": self.can_verify_user, "up": True, "plat": False},
                0x09: ["hybrid", "internal"],
                0x0A: [{"alg": ES256.ALGORITHM, "type": PUBLIC_KEY_TYPE}],
            }
        )

    async def handle(self, request: bytes) -> bytes:
        """Answer one CTAP2 request (command byte + CBOR) with status byte + CBOR."""
        try:
            if not request:
                raise _Reject(ERR.INVALID_LENGTH, "empty request")
            command, payload = request[0], bytes(request[1:])
            if command == CMD.GET_INFO:
                return bytes([ERR.SUCCESS]) + self.get_info()
            if command == CMD.MAKE_CREDENTIAL:
                return await self._make_credential(_decode_params(payload))
            if command == CMD.GET_ASSERTION:
                return await self._get_assertion(_decode_params(payload))
            raise _Reject(ERR.INVALID_COMMAND, f"unsupported command 0x{command:02x}")
        except _Reject as reject:
            logger.info("CTAP request rejected with 0x%02x: %s", reject.status, reject)
            return bytes([reject.status])
        except Exception:
            # A bug of ours must not take the tunnel down with a traceback: answer "other".
            logger.exception("CTAP request failed unexpectedly")
            return bytes([ERR.OTHER])

    async def _make_credential(self, params: Mapping[Any, Any]) -> bytes:
        # "none" attestation signs nothing, but the hash is still a required, checked parameter.
        _client_data_hash(params, _MC_CLIENT_DATA_HASH)
        rp = _required(params, _MC_RP, dict)
        rp_id = _required(rp, "id", str)
        rp_name = _optional(rp, "name", str)
        user = _required(params, _MC_USER, dict)
        user_id = _required(user, "id", bytes)
        if not 0 < len(user_id) <= MAX_USER_ID_LEN:
            raise _Reject(ERR.INVALID_PARAMETER, "user.id must be 1 to 64 bytes")
        user_name = _optional(user, "name", str)
        user_display_name = _optional(user, "displayName", str)
        cred_params = _required(params, _MC_PARAMS, list)
        exclude = _descriptor_ids(params, _MC_EXCLUDE)
        extensions = _extensions(params, _MC_EXTENSIONS)
        options = _options(params, _MC_OPTIONS)
        _refuse_pin_uv_auth(params, _MC_PIN_UV_PARAM, _MC_PIN_UV_PROTOCOL)

        if not _offers_es256(cred_params):
            raise _Reject(ERR.UNSUPPORTED_ALGORITHM, "no ES256 in pubKeyCredParams")
        if options.get("up") is False:
            # CTAP 2.1 §6.1.2 step 7: makeCredential always needs user presence.
            raise _Reject(ERR.INVALID_OPTION, "up=false is not allowed in makeCredential")
        uv = self._user_verification(options)
        prf = _prf_input(extensions, creation=True)

        request = ApprovalRequest(
            Operation.REGISTER, rp_id, rp_name, user_name, user_display_name, user_verification=uv
        )
        excluded = exclude and any(c.credential_id in exclude for c in self.store.for_rp(rp_id))
        approval = await self._ask(request)
        if excluded:
            # CTAP asks for presence before revealing that the credential exists.
            raise _Reject(ERR.CREDENTIAL_EXCLUDED, "excludeList matched a stored credential")

        private_key = self._new_private_key()
        credential_id = self._random_bytes(CREDENTIAL_ID_LEN)
        stored = self.store.add(
            credential_id=credential_id,
            rp_id=rp_id,
            rp_name=rp_name,
            user_id=user_id,
            user_name=user_name,
            user_display_name=user_display_name,
            private_key=private_key,
            discoverable=options.get("rk") is True,
            prf_secret=self._random_bytes(PRF_SALT_LEN),
        )
        attested = AttestedCredentialData.create(
            AAGUID, credential_id, ES256.from_cryptography_key(private_key.public_key())
        )
        auth_data = AuthenticatorData.create(
            _rp_id_hash(rp_id),
            _flags(approval, uv) | AuthenticatorData.FLAG.AT,
            0,
            attested,
        )
        response: dict[int, Any] = {1: "none", 2: auth_data, 3: {}}
        if prf is not None:
            output: dict[str, Any] = {"enabled": True}
            salts = prf.get("eval")
            if salts is not None:
                output["results"] = _prf_evaluate(
                    self.store.prf_secret(stored.credential_id), salts
                )
            response[_MC_UNSIGNED_OUTPUTS] = {PRF: output}
        return bytes([ERR.SUCCESS]) + cbor.encode(response)

    async def _get_assertion(self, params: Mapping[Any, Any]) -> bytes:
        rp_id = _required(params, _GA_RP_ID, str)
        client_data_hash = _client_data_hash(params, _GA_CLIENT_DATA_HASH)
        allow = _descriptor_ids(params, _GA_ALLOW)
        extensions = _extensions(params, _GA_EXTENSIONS)
        options = _options(params, _GA_OPTIONS)
        _refuse_pin_uv_auth(params, _GA_PIN_UV_PARAM, _GA_PIN_UV_PROTOCOL)
        if "rk" in options:
            raise _Reject(ERR.UNSUPPORTED_OPTION, "rk is not a getAssertion option")
        uv = self._user_verification(options)
        prf = _prf_input(extensions, creation=False)

        discoverable = not allow
        if discoverable:
            candidates = self.store.for_rp(rp_id, discoverable_only=True)
        else:
            candidates = [c for c in self.store.for_rp(rp_id) if c.credential_id in allow]
        if not candidates:
            raise _Reject(ERR.NO_CREDENTIALS, f"no credential for {rp_id!r}")

        newest = candidates[0]
        accounts: tuple[Account, ...] = ()
        if len(candidates) > 1:
            accounts = tuple(
                Account(c.user_name, c.user_display_name, c.user_id) for c in candidates
            )
        approval = await self._ask(
            ApprovalRequest(
                Operation.SIGN_IN,
                rp_id,
                newest.rp_name,
                None if accounts else newest.user_name,
                None if accounts else newest.user_display_name,
                user_verification=uv,
                accounts=accounts,
            )
        )
        chosen = approval.account if accounts else None
        user_selected = chosen is not None
        if chosen is not None:
            if not 0 <= chosen < len(candidates):
                raise _Reject(ERR.OPERATION_DENIED, "the approver chose no listed account")
            credential = candidates[chosen]
        else:
            # No choice made: the newest credential, and the response does not claim one.
            credential = newest
        counter = self.store.increment_counter(credential.credential_id)
        auth_data = AuthenticatorData.create(_rp_id_hash(rp_id), _flags(approval, uv), counter)
        signature = credential.private_key().sign(
            auth_data + client_data_hash, ec.ECDSA(hashes.SHA256())
        )
        response: dict[int, Any] = {
            1: {"id": credential.credential_id, "type": PUBLIC_KEY_TYPE},
            2: auth_data,
            3: signature,
            4: _user_entity(credential, with_names=uv and approval.user_verified),
        }
        if user_selected:
            response[_GA_USER_SELECTED] = True
        if prf is not None:
            by_credential = prf.get("evalByCredential") or {}
            salts = by_credential.get(credential.credential_id, prf.get("eval"))
            if salts is not None:
                secret = self.store.prf_secret(credential.credential_id)
                response[_GA_UNSIGNED_OUTPUTS] = {PRF: {"results": _prf_evaluate(secret, salts)}}
        return bytes([ERR.SUCCESS]) + cbor.encode(response)

    def _user_verification(self, options: Mapping[str, bool]) -> bool:
        """Whether the request asks for UV; refused up front if this phone cannot verify."""
        uv = options.get("uv") is True
        if uv and not self.can_verify_user:
            raise _Reject(ERR.INVALID_OPTION, "uv requested, but this phone cannot verify")
        return uv

    async def _ask(self, request: ApprovalRequest) -> Approval:
        approval: Approval | None = None
        timeout = math.inf if self.approval_timeout is None else self.approval_timeout
        with trio.move_on_after(timeout):
            approval = await self.approver(request)
        if approval is None:
            raise _Reject(ERR.USER_ACTION_TIMEOUT, "no answer from the user in time")
        if not approval.approved:
            raise _Reject(ERR.OPERATION_DENIED, "the user declined")
        if request.user_verification and not approval.user_verified:
            raise _Reject(ERR.UV_INVALID, "the user could not be verified")
        return approval


def _decode_params(payload: bytes) -> Mapping[Any, Any]:
    if not payload:
        raise _Reject(ERR.MISSING_PARAMETER, "no CBOR parameters")
    try:
        params = cbor.decode(payload)
        # fido2's decoder is lenient (it reads null as False, ignores short strings); a
        # re-encoding that differs means the input was not valid CTAP2-canonical CBOR.
        canonical = cbor.encode(params) == payload
    except Exception as exc:
        raise _Reject(ERR.INVALID_CBOR, f"undecodable CBOR: {exc!r}") from None
    if not canonical:
        raise _Reject(ERR.INVALID_CBOR, "CBOR is not CTAP2-canonical")
    if not isinstance(params, dict):
        raise _Reject(ERR.CBOR_UNEXPECTED_TYPE, "parameters are not a CBOR map")
    return params


def _required(container: Mapping[Any, Any], key: Any, kind: type) -> Any:
    if key not in container:
        raise _Reject(ERR.MISSING_PARAMETER, f"missing parameter {key!r}")
    return _typed(container[key], key, kind)


def _optional(container: Mapping[Any, Any], key: Any, kind: type) -> Any:
    if key not in container:
        return None
    return _typed(container[key], key, kind)


def _typed(value: Any, key: Any, kind: type) -> Any:
    # bool is an int in Python, but never a valid CBOR integer parameter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Reject(ERR.CBOR_UNEXPECTED_TYPE, f"parameter {key!r} is not {kind.__name__}")
    return value


def _client_data_hash(params: Mapping[Any, Any], key: int) -> bytes:
    value = _required(params, key, bytes)
    if len(value) != CLIENT_DATA_HASH_LEN:
        raise _Reject(ERR.INVALID_PARAMETER, "clientDataHash must be 32 bytes")
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
            raise _Reject(ERR.MISSING_PARAMETER, "pinUvAuthParam without pinUvAuthProtocol")
        raise _Reject(ERR.INVALID_PARAMETER, "no pinUvAuthProtocol is supported")


def _rp_id_hash(rp_id: str) -> bytes:
    return hashlib.sha256(rp_id.encode("utf-8")).digest()


def _flags(approval: Approval, uv_requested: bool) -> AuthenticatorData.FLAG:
    # UV is flagged only when the request asked for it and the approver verified.
    flags = AuthenticatorData.FLAG.UP
    if uv_requested and approval.user_verified:
        flags |= AuthenticatorData.FLAG.UV
    return flags


def _extensions(params: Mapping[Any, Any], key: int) -> dict[str, Any]:
    extensions = _optional(params, key, dict) or {}
    for name in extensions:
        _typed(name, "extension name", str)
    return extensions


def _salts(value: Any, what: str) -> dict[str, bytes]:
    value = _typed(value, what, dict)
    salts = {"first": _required(value, "first", bytes)}
    second = _optional(value, "second", bytes)
    if second is not None:
        salts["second"] = second
    for salt in salts.values():
        if len(salt) != PRF_SALT_LEN:
            raise _Reject(ERR.INVALID_PARAMETER, f"{what} salts must be {PRF_SALT_LEN} bytes")
    return salts


def _prf_input(extensions: Mapping[str, Any], *, creation: bool) -> dict[str, Any] | None:
    """The request's ``prf`` extension input, checked; ``None`` if not asked for."""
    if PRF not in extensions:
        return None
    raw = _typed(extensions[PRF], "prf", dict)
    checked: dict[str, Any] = {}
    if "eval" in raw:
        checked["eval"] = _salts(raw["eval"], "prf eval")
    if "evalByCredential" in raw and not creation:
        by_credential = _typed(raw["evalByCredential"], "prf evalByCredential", dict)
        checked["evalByCredential"] = {
            _typed(cid, "evalByCredential key", bytes): _salts(v, "prf evalByCredential")
            for cid, v in by_credential.items()
        }
    return checked


def _prf_evaluate(secret: bytes, salts: Mapping[str, bytes]) -> dict[str, bytes]:
    # The salts arrive already hashed by the client; hmac-secret's output is HMAC(secret, salt).
    return {name: hmac.digest(secret, salt, "sha256") for name, salt in salts.items()}


def _user_entity(credential: StoredCredential, *, with_names: bool) -> dict[str, Any]:
    # CTAP2: identifying names only after user verification; the handle always.
    user: dict[str, Any] = {"id": credential.user_id}
    if with_names:
        user["name"] = credential.user_name or ""
        user["displayName"] = credential.user_display_name or ""
    return user
