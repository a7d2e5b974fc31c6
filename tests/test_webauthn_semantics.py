"""What the RP asks for reaches the phone, and comes back verifiable by two independent servers.

``HybridWebAuthnClient`` is driven with python-fido2's ``Fido2Server`` options through a real relay
on 127.0.0.1 and our phone (``tests.phone_thread``), for residentKey discouraged/required,
userVerification required/discouraged, credProps and prf (eval, second salt, evalByCredential).
Every registration and assertion is verified by python-fido2's server *and* by py_webauthn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webauthn
from fido2.client import ClientError
from fido2.server import Fido2Server
from fido2.utils import websafe_encode
from fido2.webauthn import AttestedCredentialData, AuthenticatorData
from webauthn.helpers import base64url_to_bytes

from hybrid.ble.loopback import LoopbackMedium
from hybrid.catalogue import Failure
from hybrid.phone import auto_approver
from tests.phone_thread import PhoneThread, hybrid_client

ORIGIN = "https://example.com"
RP = {"id": "example.com", "name": "Example RP"}
USER = {"id": b"user-handle-1", "name": "alice", "displayName": "Alice"}


@pytest.fixture
def phone(ble_port: int, phone_dir: Path) -> Iterator[PhoneThread]:
    with PhoneThread(LoopbackMedium(ble_port), phone_dir) as running:
        yield running


def as_json(response: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dict(response)))


class Site:
    """One relying party verified twice: python-fido2's server and py_webauthn."""

    def __init__(self, phone: PhoneThread) -> None:
        self.client = hybrid_client(phone)
        self.server = Fido2Server(RP, attestation="none")
        self.credentials: list[AttestedCredentialData] = []
        self.sign_count = 0

    def register(self, uv_required: bool = False, **kwargs: Any):
        options, state = self.server.register_begin(USER, **kwargs)
        response = self.client.make_credential(options["publicKey"])
        auth_data = self.server.register_complete(state, response)
        verified = webauthn.verify_registration_response(
            credential=as_json(response),
            expected_challenge=options.public_key.challenge,
            expected_rp_id=RP["id"],
            expected_origin=ORIGIN,
            require_user_verification=uv_required,
        )
        assert verified.credential_id == auth_data.credential_data.credential_id
        assert response.authenticator_attachment == "cross-platform"
        self.credentials.append(auth_data.credential_data)
        self.public_key = verified.credential_public_key
        return response, auth_data

    def authenticate(self, uv_required: bool = False, allow: bool = True, **kwargs: Any):
        options, state = self.server.authenticate_begin(
            self.credentials if allow else None, **kwargs
        )
        selection = self.client.get_assertion(options["publicKey"])
        response = selection.get_response(0)
        self.server.authenticate_complete(state, self.credentials, response)
        verified = webauthn.verify_authentication_response(
            credential=as_json(response),
            expected_challenge=options.public_key.challenge,
            expected_rp_id=RP["id"],
            expected_origin=ORIGIN,
            credential_public_key=self.public_key,
            credential_current_sign_count=self.sign_count,
            require_user_verification=uv_required,
        )
        self.sign_count = verified.new_sign_count
        return response


def test_resident_key_discouraged_makes_a_non_discoverable_credential(phone: PhoneThread) -> None:
    site = Site(phone)
    response, _ = site.register(
        resident_key_requirement="discouraged", extensions={"credProps": True}
    )
    assert response.client_extension_results.cred_props.rk is False
    assert as_json(response)["clientExtensionResults"] == {"credProps": {"rk": False}}
    stored = phone.store_snapshot()
    assert [c.discoverable for c in stored] == [False]
    assert site.authenticate().raw_id == response.raw_id  # found through the allow list
    # ... and not by a discoverable request
    options, _ = site.server.authenticate_begin()
    with pytest.raises(ClientError) as caught:
        site.client.get_assertion(options["publicKey"])
    assert caught.value.cause.failure is Failure.NO_CREDENTIAL


def test_resident_key_required_is_discoverable_and_signs_in_without_allow_list(
    phone: PhoneThread,
) -> None:
    site = Site(phone)
    response, _ = site.register(resident_key_requirement="required", extensions={"credProps": True})
    assert response.client_extension_results["credProps"] == {"rk": True}
    assert [c.discoverable for c in phone.store_snapshot()] == [True]
    assertion = site.authenticate(allow=False)
    assert assertion.raw_id == response.raw_id
    assert assertion.response.user_handle == USER["id"]


def test_resident_key_preferred_follows_the_phone(phone: PhoneThread) -> None:
    site = Site(phone)
    response, _ = site.register(
        resident_key_requirement="preferred", extensions={"credProps": True}
    )
    assert response.client_extension_results.cred_props.rk is True  # our phone says rk


def test_user_verification_required_and_discouraged(phone: PhoneThread) -> None:
    site = Site(phone)
    _, auth_data = site.register(user_verification="required", uv_required=True)
    assert auth_data.is_user_verified()
    assertion = site.authenticate(user_verification="required", uv_required=True)
    assert AuthenticatorData(assertion.response.authenticator_data).is_user_verified()
    assertion = site.authenticate(user_verification="discouraged")
    flags = AuthenticatorData(assertion.response.authenticator_data)
    assert flags.is_user_present() and not flags.is_user_verified()

    other = Site(phone)
    _, auth_data = other.register(user_verification="discouraged")
    assert auth_data.is_user_present() and not auth_data.is_user_verified()


def test_phone_that_cannot_verify_refuses_required_user_verification(phone: PhoneThread) -> None:
    phone.approver = auto_approver(user_verified=False)
    site = Site(phone)
    options, _ = site.server.register_begin(USER, user_verification="required")
    with pytest.raises(ClientError) as caught:
        site.client.make_credential(options["publicKey"])
    assert caught.value.cause.failure is Failure.NOT_SUPPORTED
    assert "0x2C" in caught.value.cause.detail
    # preferred resolves to "not required" for a phone without uv: it works, unverified
    _, auth_data = site.register(user_verification="preferred")
    assert not auth_data.is_user_verified()


def prf_first(response: Any) -> bytes:
    return response.client_extension_results.prf.results.first


def test_prf_same_salt_same_output_other_salt_other_output(phone: PhoneThread) -> None:
    site = Site(phone)
    response, _ = site.register(resident_key_requirement="required", extensions={"prf": {}})
    assert response.client_extension_results.prf.enabled is True
    assert as_json(response)["clientExtensionResults"] == {"prf": {"enabled": True}}

    salt_a, salt_b = b"salt A" * 6, b"salt B"
    one = site.authenticate(extensions={"prf": {"eval": {"first": salt_a}}})
    two = site.authenticate(extensions={"prf": {"eval": {"first": salt_a}}})
    three = site.authenticate(extensions={"prf": {"eval": {"first": salt_b}}})
    assert len(prf_first(one)) == 32
    assert prf_first(one) == prf_first(two)
    assert prf_first(one) != prf_first(three)
    results = as_json(one)["clientExtensionResults"]["prf"]["results"]
    assert base64url_to_bytes(results["first"]) == prf_first(one)
    assert "second" not in results

    both = site.authenticate(
        extensions={"prf": {"eval": {"first": salt_a, "second": websafe_encode(salt_b)}}}
    )
    assert prf_first(both) == prf_first(one)
    assert both.client_extension_results.prf.results.second == prf_first(three)

    # evalByCredential wins over eval for the credential used
    by_credential = site.authenticate(
        extensions={
            "prf": {
                "eval": {"first": salt_a},
                "evalByCredential": {websafe_encode(response.raw_id): {"first": salt_b}},
            }
        }
    )
    assert prf_first(by_credential) == prf_first(three)

    # the secret is per credential: another credential gives other outputs for the same salt
    other = Site(phone)
    other.register(extensions={"prf": {}})
    assert prf_first(other.authenticate(extensions={"prf": {"eval": {"first": salt_a}}})) != (
        prf_first(one)
    )


def test_eval_by_credential_outside_the_allow_list_is_refused_before_any_qr(
    phone: PhoneThread,
) -> None:
    site = Site(phone)
    site.register()
    options, _ = site.server.authenticate_begin(
        site.credentials,
        extensions={"prf": {"evalByCredential": {websafe_encode(b"elsewhere"): {"first": b"x"}}}},
    )
    shown: list[str] = []
    site.client._on_url = shown.append
    with pytest.raises(ClientError):
        site.client.get_assertion(options["publicKey"])
    assert shown == []


def test_unknown_extensions_are_dropped(phone: PhoneThread) -> None:
    site = Site(phone)
    response, _ = site.register(extensions={"largeBlob": {"support": "preferred"}, "x-y": 1})
    assert dict(response.client_extension_results) == {}
    assertion = site.authenticate(extensions={"appid": "https://example.com", "zzz": True})
    assert dict(assertion.client_extension_results) == {}


def test_phone_chooses_among_accounts_through_the_callback(phone: PhoneThread) -> None:
    chosen: list[list[str | None]] = []

    def choose(accounts) -> int:
        chosen.append([a.user_name for a in accounts])
        return [a.user_name for a in accounts].index("alice")

    site = Site(phone)
    first, _ = site.register(resident_key_requirement="required")
    bob = dict(USER, id=b"user-handle-2", name="bob", displayName="Bob")
    options, state = site.server.register_begin(bob, resident_key_requirement="required")
    site.server.register_complete(state, site.client.make_credential(options["publicKey"]))
    phone.approver = auto_approver(choose_account=choose)
    options, _ = site.server.authenticate_begin()
    selection = site.client.get_assertion(options["publicKey"])
    assert chosen == [["bob", "alice"]]
    assert selection.get_assertions()[0].user_selected is True
    assert selection.get_response(0).raw_id == first.raw_id
