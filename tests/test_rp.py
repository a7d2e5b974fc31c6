"""The relying party: fido2's Fido2Server verifying our authenticator, accounts kept on disk.

The tests play the browser: they turn the RP's options into CTAP2 requests for the software
authenticator and its CTAP2 answers into WebAuthn responses, as a client would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fido2 import cbor
from fido2.ctap2 import AssertionResponse, AttestationResponse
from fido2.webauthn import (
    AttestationObject,
    AuthenticationResponse,
    AuthenticatorAssertionResponse,
    AuthenticatorAttestationResponse,
    CollectedClientData,
    CredentialCreationOptions,
    CredentialRequestOptions,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from hybrid.catalogue import Failure, Operation, PasskeyError, failure_for_ctap_status
from hybrid.phone import (
    Approval,
    CredentialStore,
    SoftwareAuthenticator,
    auto_approver,
    declining_approver,
)
from hybrid.rp import ACCOUNTS_FILENAME, RelyingParty

RP_ID = "example.com"
ORIGIN = "https://example.com"


class CtapStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"CTAP status 0x{status:02x}")
        self.status = status


async def client_register(
    auth: SoftwareAuthenticator,
    options: CredentialCreationOptions,
    *,
    origin: str = ORIGIN,
    challenge: bytes | None = None,
) -> RegistrationResponse:
    pk = options.public_key
    client_data = CollectedClientData.create(
        type=CollectedClientData.TYPE.CREATE,
        challenge=pk.challenge if challenge is None else challenge,
        origin=origin,
    )
    params = {
        1: client_data.hash,
        2: {"id": pk.rp.id, "name": pk.rp.name},
        3: {"id": pk.user.id, "name": pk.user.name, "displayName": pk.user.display_name},
        4: [{"alg": p.alg, "type": p.type.value} for p in pk.pub_key_cred_params],
        7: {"rk": True, "uv": True},
    }
    if pk.exclude_credentials:
        params[5] = [{"id": d.id, "type": d.type.value} for d in pk.exclude_credentials]
    raw = await auth.handle(b"\x01" + cbor.encode(params))
    if raw[0] != 0:
        raise CtapStatusError(raw[0])
    att = AttestationResponse.from_dict(cbor.decode(raw[1:]))
    return RegistrationResponse(
        raw_id=att.auth_data.credential_data.credential_id,
        response=AuthenticatorAttestationResponse(
            client_data=client_data,
            attestation_object=AttestationObject.create(att.fmt, att.auth_data, att.att_stmt),
        ),
    )


async def client_authenticate(
    auth: SoftwareAuthenticator,
    options: CredentialRequestOptions,
    *,
    origin: str = ORIGIN,
    challenge: bytes | None = None,
) -> AuthenticationResponse:
    pk = options.public_key
    client_data = CollectedClientData.create(
        type=CollectedClientData.TYPE.GET,
        challenge=pk.challenge if challenge is None else challenge,
        origin=origin,
    )
    params: dict = {1: pk.rp_id, 2: client_data.hash}
    if pk.allow_credentials:
        params[3] = [{"id": d.id, "type": d.type.value} for d in pk.allow_credentials]
    raw = await auth.handle(b"\x02" + cbor.encode(params))
    if raw[0] != 0:
        raise CtapStatusError(raw[0])
    ga = AssertionResponse.from_dict(cbor.decode(raw[1:]))
    return AuthenticationResponse(
        raw_id=ga.credential["id"],
        response=AuthenticatorAssertionResponse(
            client_data=client_data,
            authenticator_data=ga.auth_data,
            signature=ga.signature,
            user_handle=(ga.user or {}).get("id"),
        ),
    )


def phone(path: Path, approver=None) -> SoftwareAuthenticator:
    return SoftwareAuthenticator(CredentialStore(path), approver or auto_approver())


async def register(rp: RelyingParty, auth: SoftwareAuthenticator, user: str) -> bytes:
    options, state = rp.begin_registration(user)
    response = await client_register(auth, options)
    rp.complete_registration(state, response)
    return response.raw_id


async def login(rp: RelyingParty, auth: SoftwareAuthenticator, user: str | None) -> str:
    options, state = rp.begin_authentication(user)
    return rp.complete_authentication(state, await client_authenticate(auth, options))


async def test_register_then_login_across_runs(tmp_path: Path) -> None:
    auth = phone(tmp_path / "phone")
    cred_id = await register(RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop"), auth, "alice")

    # A new RelyingParty object (a new run) reads the account file back.
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    assert rp.user_names() == ["alice"]
    assert [c.credential_id for c in rp.credentials_for("alice")] == [cred_id]
    assert await login(rp, auth, "alice") == "alice"
    assert rp.sign_count(cred_id) == 1
    assert await login(rp, phone(tmp_path / "phone"), None) == "alice"  # discoverable
    assert RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop").sign_count(cred_id) == 2

    saved = json.loads((tmp_path / "desktop" / ACCOUNTS_FILENAME).read_text())
    account = saved[RP_ID]["users"]["alice"]
    assert account["credentials"][0]["sign_count"] == 2
    assert [p.name for p in (tmp_path / "desktop").iterdir()] == [ACCOUNTS_FILENAME]


async def test_registration_options_ask_for_a_discoverable_credential(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path)
    options, _ = rp.begin_registration("alice")
    selection = options.public_key.authenticator_selection
    assert selection.resident_key == ResidentKeyRequirement.REQUIRED
    assert selection.user_verification == UserVerificationRequirement.PREFERRED
    assert options.public_key.rp.id == RP_ID
    assert options.public_key.user.name == "alice"
    assert -7 in [p.alg for p in options.public_key.pub_key_cred_params]
    assert not options.public_key.exclude_credentials


async def test_registering_the_same_phone_again_is_excluded(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone")
    cred_id = await register(rp, auth, "alice")
    options, _ = rp.begin_registration("alice")
    assert [d.id for d in options.public_key.exclude_credentials] == [cred_id]
    with pytest.raises(CtapStatusError) as info:
        await client_register(auth, options)
    failure = failure_for_ctap_status(info.value.status, Operation.REGISTER)
    assert failure is Failure.EXCLUDED
    # A second phone is welcome.
    await register(rp, phone(tmp_path / "phone2"), "alice")
    assert len(rp.credentials_for("alice")) == 2


async def test_a_credential_id_already_registered_elsewhere_is_excluded(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN)
    fixed = bytes(range(32))
    first = SoftwareAuthenticator(
        CredentialStore(tmp_path / "a"), auto_approver(), random_bytes=lambda n: fixed[:n]
    )
    second = SoftwareAuthenticator(
        CredentialStore(tmp_path / "b"), auto_approver(), random_bytes=lambda n: fixed[:n]
    )
    await register(rp, first, "alice")
    with pytest.raises(PasskeyError) as info:
        await register(rp, second, "bob")
    assert info.value.failure is Failure.EXCLUDED
    assert info.value.title == "Passkey already registered for this device"


async def test_sixth_passkey_reaches_the_limit(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    for n in range(5):
        await register(rp, phone(tmp_path / f"phone{n}"), "alice")
    with pytest.raises(PasskeyError) as info:
        rp.begin_registration("alice")
    assert info.value.failure is Failure.LIMIT_REACHED
    assert info.value.title == "Passkey Limit Reached"
    await register(rp, phone(tmp_path / "bob-phone"), "bob")  # the limit is per user


async def test_login_for_unknown_user_is_no_credential(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path)
    with pytest.raises(PasskeyError) as info:
        rp.begin_authentication("nobody")
    assert info.value.failure is Failure.NO_CREDENTIAL
    assert info.value.operation is Operation.SIGN_IN
    assert info.value.title == "Passkey is not found on this device"


async def test_tampered_signature_fails_verification(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone")
    await register(rp, auth, "alice")
    options, state = rp.begin_authentication("alice")
    good = await client_authenticate(auth, options)
    signature = bytearray(good.response.signature)
    signature[-1] ^= 0x01
    tampered = AuthenticationResponse(
        raw_id=good.raw_id,
        response=AuthenticatorAssertionResponse(
            client_data=good.response.client_data,
            authenticator_data=good.response.authenticator_data,
            signature=bytes(signature),
            user_handle=good.response.user_handle,
        ),
    )
    with pytest.raises(PasskeyError) as info:
        rp.complete_authentication(state, tampered)
    assert info.value.failure is Failure.VERIFICATION_FAILED
    assert str(info.value).startswith(
        "Verification failed: We could not verify your identity. Use another sign-in method"
    )
    assert rp.sign_count(good.raw_id) == 0  # nothing recorded for a failed attempt
    rp.complete_authentication(state, good)  # the untouched response still verifies
    assert rp.sign_count(good.raw_id) == 1


@pytest.mark.parametrize("what", ["origin", "challenge"])
async def test_wrong_origin_or_challenge_fails_verification(tmp_path: Path, what: str) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone")
    kwargs = {"origin": "https://evil.example"} if what == "origin" else {"challenge": bytes(32)}
    options, state = rp.begin_registration("alice")
    with pytest.raises(PasskeyError) as info:
        rp.complete_registration(state, await client_register(auth, options, **kwargs))
    assert info.value.failure is Failure.VERIFICATION_FAILED
    assert info.value.operation is Operation.REGISTER
    await register(rp, auth, "alice")
    options, state = rp.begin_authentication("alice")
    with pytest.raises(PasskeyError) as info:
        rp.complete_authentication(state, await client_authenticate(auth, options, **kwargs))
    assert info.value.failure is Failure.VERIFICATION_FAILED


async def test_credential_for_another_site_fails_verification(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone")
    options, state = rp.begin_registration("alice")
    # A phone answering for another rp id (right challenge, right origin) has the wrong rpIdHash.
    other, _ = RelyingParty("other.example", ORIGIN).begin_registration("alice")
    response = await client_register(auth, other, challenge=options.public_key.challenge)
    with pytest.raises(PasskeyError) as info:
        rp.complete_registration(state, response)
    assert "RP ID" in info.value.detail
    assert info.value.failure is Failure.VERIFICATION_FAILED


async def test_unknown_credential_fails_verification(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    await register(rp, phone(tmp_path / "phone"), "alice")
    stranger = phone(tmp_path / "stranger")
    await register(RelyingParty(RP_ID, ORIGIN), stranger, "alice")  # known elsewhere only
    options, state = rp.begin_authentication(None)
    with pytest.raises(PasskeyError) as info:
        rp.complete_authentication(state, await client_authenticate(stranger, options))
    assert info.value.failure is Failure.VERIFICATION_FAILED


async def test_cloned_phone_with_lower_counter_fails_verification(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    original = phone(tmp_path / "phone")
    await register(rp, original, "alice")
    original.store.close()
    shutil.copytree(tmp_path / "phone", tmp_path / "clone")
    original = phone(tmp_path / "phone")
    await login(rp, original, "alice")
    await login(rp, original, "alice")
    with pytest.raises(PasskeyError) as info:
        await login(rp, phone(tmp_path / "clone"), "alice")  # its counter says 1 after 2
    assert info.value.failure is Failure.VERIFICATION_FAILED
    assert "counter" in info.value.detail


async def test_user_not_verified_still_registers_and_signs_in_with_preferred_uv(
    tmp_path: Path,
) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone", auto_approver(user_verified=False))
    options, state = rp.begin_registration("alice")
    response = await client_register(auth, options)
    assert not response.response.attestation_object.auth_data.is_user_verified()
    rp.complete_registration(state, response)
    assert await login(rp, auth, "alice") == "alice"


async def test_declined_on_the_phone_maps_to_the_canceled_entries(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone", declining_approver())
    options, _ = rp.begin_registration("alice")
    with pytest.raises(CtapStatusError) as info:
        await client_register(auth, options)
    failure = failure_for_ctap_status(info.value.status, Operation.REGISTER)
    assert PasskeyError(failure, Operation.REGISTER).title == "Passkey Set Up Canceled"
    assert PasskeyError(failure, Operation.SIGN_IN).title == "Passkey Not Found or Canceled"


async def test_stale_state_is_session_expired(tmp_path: Path) -> None:
    now = [1000.0]
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path, session_lifetime=300, clock=lambda: now[0])
    auth = phone(tmp_path / "phone")
    options, state = rp.begin_registration("alice")
    response = await client_register(auth, options)
    now[0] += 301
    with pytest.raises(PasskeyError) as info:
        rp.complete_registration(state, response)
    assert info.value.failure is Failure.SESSION_EXPIRED
    assert rp.user_names() == []


async def test_malformed_response_fails_verification(tmp_path: Path) -> None:
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path)
    _, state = rp.begin_registration("alice")
    with pytest.raises(PasskeyError) as info:
        rp.complete_registration(state, {"id": "x", "rawId": "x", "response": {}})
    assert info.value.failure is Failure.VERIFICATION_FAILED
    _, state = rp.begin_authentication(None)
    with pytest.raises(PasskeyError) as info:
        rp.complete_authentication(state, {"rawId": "AAAA", "response": {"signature": 5}})
    assert info.value.failure is Failure.VERIFICATION_FAILED


async def test_json_round_trip_of_a_browser_style_response(tmp_path: Path) -> None:
    """Responses arriving as JSON (as a browser posts them) verify the same way."""
    rp = RelyingParty(RP_ID, ORIGIN, tmp_path / "desktop")
    auth = phone(tmp_path / "phone")
    options, state = rp.begin_registration("alice")
    response = await client_register(auth, options)
    rp.complete_registration(json.loads(json.dumps(state)), json.loads(json.dumps(dict(response))))
    options, state = rp.begin_authentication(None)
    assertion = await client_authenticate(auth, options)
    user = rp.complete_authentication(
        json.loads(json.dumps(state)), json.loads(json.dumps(dict(assertion)))
    )
    assert user == "alice"


def test_corrupt_account_file_is_a_typed_error(tmp_path: Path) -> None:
    from hybrid.errors import HybridError

    (tmp_path / ACCOUNTS_FILENAME).write_text("{not json")
    with pytest.raises(HybridError, match="not valid JSON"):
        RelyingParty(RP_ID, ORIGIN, tmp_path).begin_registration("alice")


def test_approval_dataclass_defaults() -> None:
    assert Approval(approved=True) == Approval(True, False)
