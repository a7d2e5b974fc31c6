"""The desktop's CTAP2 requests and the WebAuthn responses built from phone replies (pure code)."""

from __future__ import annotations

import hashlib

import pytest
from fido2 import cbor
from fido2.ctap2 import Info
from fido2.utils import websafe_encode
from fido2.webauthn import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
)

from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop.ctap import (
    assertion_extension_results,
    get_assertion_request,
    make_credential_request,
    parse_assertion,
    registration_extension_results,
    rp_id_for,
)

HASH = bytes(range(32))
AUTH_DATA = bytes(32) + b"\x05" + bytes(4)  # rpIdHash, flags UP+UV, counter


def error(failure: Failure, detail: str = "") -> PasskeyError:
    return PasskeyError(failure, Operation.REGISTER, detail)


def creation(
    algs=(-8, -7, -257), exclude=(), selection=None, extensions=None
) -> PublicKeyCredentialCreationOptions:
    return PublicKeyCredentialCreationOptions(
        rp=PublicKeyCredentialRpEntity(name="Example", id="example.com"),
        user=PublicKeyCredentialUserEntity(name="alice", id=b"\x01\x02"),
        challenge=b"c" * 32,
        pub_key_cred_params=[PublicKeyCredentialParameters(type="public-key", alg=a) for a in algs],
        exclude_credentials=[
            PublicKeyCredentialDescriptor(type="public-key", id=i) for i in exclude
        ],
        authenticator_selection=selection,
        extensions=extensions,
    )


PHONE_INFO = Info.from_dict(
    {1: ["FIDO_2_0"], 2: ["prf"], 3: bytes(16), 4: {"rk": True, "uv": True}}
)
BARE_INFO = Info.from_dict({1: ["FIDO_2_0"], 3: bytes(16), 4: {}})


def test_make_credential_is_canonical_complete_and_sends_the_whole_algorithm_list() -> None:
    request = make_credential_request(HASH, creation(exclude=[b"old"]), error, info=PHONE_INFO)
    assert request[0] == 0x01
    assert cbor.encode(cbor.decode(request[1:])) == request[1:]
    assert cbor.decode(request[1:]) == {
        1: HASH,
        2: {"id": "example.com", "name": "Example"},
        3: {"id": b"\x01\x02", "name": "alice", "displayName": "alice"},
        4: [
            {"alg": -8, "type": "public-key"},
            {"alg": -7, "type": "public-key"},
            {"alg": -257, "type": "public-key"},
        ],
        5: [{"id": b"old", "type": "public-key"}],
        # no residentKey -> discouraged; no userVerification -> preferred, and the phone has uv
        7: {"rk": False, "uv": True},
    }
    # canonical order puts "alg" before "type" (Android rejects the other order)
    assert b"\xa2\x63alg\x26\x64type" in request


def test_empty_algorithm_list_means_es256_and_rs256() -> None:
    params = cbor.decode(make_credential_request(HASH, creation(algs=()), error)[1:])
    assert params[4] == [{"alg": -7, "type": "public-key"}, {"alg": -257, "type": "public-key"}]


@pytest.mark.parametrize(
    ("resident_key", "info", "rk"),
    [
        ("required", None, True),
        ("required", BARE_INFO, True),
        ("preferred", PHONE_INFO, True),
        ("preferred", BARE_INFO, False),
        ("preferred", None, False),
        ("discouraged", PHONE_INFO, False),
    ],
)
def test_rk_only_when_required_or_preferred_and_supported(resident_key, info, rk) -> None:
    options = creation(selection=AuthenticatorSelectionCriteria(resident_key=resident_key))
    params = cbor.decode(make_credential_request(HASH, options, error, info=info)[1:])
    assert params[7]["rk"] is rk


@pytest.mark.parametrize(
    ("requirement", "info", "uv"),
    [
        ("required", BARE_INFO, True),
        ("required", PHONE_INFO, True),
        ("preferred", PHONE_INFO, True),
        ("preferred", BARE_INFO, False),
        ("discouraged", PHONE_INFO, False),
        (None, PHONE_INFO, True),
    ],
)
def test_uv_only_when_user_verification_resolves_to_required(requirement, info, uv) -> None:
    options = creation(selection=AuthenticatorSelectionCriteria(user_verification=requirement))
    params = cbor.decode(make_credential_request(HASH, options, error, info=info)[1:])
    assert params[7].get("uv", False) is uv
    request = PublicKeyCredentialRequestOptions(
        challenge=b"c" * 32, rp_id="example.com", user_verification=requirement
    )
    params = cbor.decode(get_assertion_request(HASH, request, error, info=info)[1:])
    assert (params.get(5) == {"uv": True}) is uv


def test_prf_inputs_are_hashed_and_unknown_extensions_dropped() -> None:
    options = creation(extensions={"credProps": True, "prf": {}, "largeBlob": {"support": "x"}})
    params = cbor.decode(make_credential_request(HASH, options, error, info=PHONE_INFO)[1:])
    assert params[6] == {"prf": {}}  # credProps is the client's, largeBlob is not implemented
    request = PublicKeyCredentialRequestOptions(
        challenge=b"c" * 32,
        rp_id="example.com",
        allow_credentials=[PublicKeyCredentialDescriptor(type="public-key", id=b"cred")],
        extensions={
            "prf": {
                "eval": {"first": b"one", "second": b"two"},
                "evalByCredential": {websafe_encode(b"cred"): {"first": b"three"}},
            },
            "appid": "https://example.com",
        },
    )
    params = cbor.decode(get_assertion_request(HASH, request, error, info=PHONE_INFO)[1:])
    expected = {
        b: hashlib.sha256(b"WebAuthn PRF\x00" + b).digest() for b in (b"one", b"two", b"three")
    }
    assert params[4] == {
        "prf": {
            "eval": {"first": expected[b"one"], "second": expected[b"two"]},
            "evalByCredential": {b"cred": {"first": expected[b"three"]}},
        }
    }
    # a phone without prf gets no extension at all
    params = cbor.decode(get_assertion_request(HASH, request, error, info=BARE_INFO)[1:])
    assert 4 not in params


def test_eval_by_credential_must_name_allowed_credentials() -> None:
    for allow in ([], [b"other"]):
        request = PublicKeyCredentialRequestOptions(
            challenge=b"c" * 32,
            rp_id="example.com",
            allow_credentials=[
                PublicKeyCredentialDescriptor(type="public-key", id=i) for i in allow
            ],
            extensions={"prf": {"evalByCredential": {websafe_encode(b"cred"): {"first": b"x"}}}},
        )
        with pytest.raises(PasskeyError, match="evalByCredential"):
            get_assertion_request(HASH, request, error, info=PHONE_INFO)


def test_extension_results_from_unsigned_outputs() -> None:
    options = creation(
        extensions={"credProps": True, "prf": {}},
        selection=AuthenticatorSelectionCriteria(resident_key="required"),
    )
    results = registration_extension_results(options, PHONE_INFO, {"prf": {"enabled": True}}, error)
    assert results["credProps"].rk is True
    assert results["prf"].enabled is True
    assert registration_extension_results(options, BARE_INFO, None, error)["prf"].enabled is False
    request = PublicKeyCredentialRequestOptions(
        challenge=b"c" * 32, extensions={"prf": {"eval": {"first": b"x"}}}
    )
    first = bytes(range(32))
    results = assertion_extension_results(request, {"prf": {"results": {"first": first}}}, error)
    assert results["prf"].results.first == first
    assert assertion_extension_results(request, None, error) == {}
    with pytest.raises(PasskeyError) as caught:
        assertion_extension_results(request, {"prf": {"results": {"first": b"short"}}}, error)
    assert caught.value.failure is Failure.PROTOCOL_ERROR


def test_get_assertion_request_and_omitted_credential() -> None:
    options = PublicKeyCredentialRequestOptions(
        challenge=b"c" * 32,
        rp_id="example.com",
        allow_credentials=[PublicKeyCredentialDescriptor(type="public-key", id=b"only")],
    )
    request = get_assertion_request(HASH, options, error, info=PHONE_INFO)
    assert cbor.decode(request[1:]) == {
        1: "example.com",
        2: HASH,
        3: [{"id": b"only", "type": "public-key"}],
        5: {"uv": True},
    }
    # CTAP lets the phone omit key 1 when the allow list had exactly one entry
    assertion = parse_assertion(cbor.encode({2: AUTH_DATA, 3: b"sig"}), error, options)
    assert assertion.credential["id"] == b"only"


def test_malformed_reply_is_a_protocol_error() -> None:
    for body in (b"\xff", cbor.encode([1, 2]), cbor.encode({2: b"short"})):
        with pytest.raises(PasskeyError) as caught:
            parse_assertion(body, error)
        assert caught.value.failure is Failure.PROTOCOL_ERROR


def test_rp_id_defaults_to_the_origin_host() -> None:
    options = PublicKeyCredentialRequestOptions(challenge=b"c" * 32)
    assert rp_id_for(options, "https://login.example.com:8443") == "login.example.com"
