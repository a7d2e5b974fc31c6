"""The desktop's CTAP2 requests and the WebAuthn responses built from phone replies (pure code)."""

from __future__ import annotations

import pytest
from fido2 import cbor
from fido2.webauthn import (
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
)

from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop.ctap import (
    get_assertion_request,
    make_credential_request,
    parse_assertion,
    rp_id_for,
)

HASH = bytes(range(32))
AUTH_DATA = bytes(32) + b"\x05" + bytes(4)  # rpIdHash, flags UP+UV, counter


def error(failure: Failure, detail: str = "") -> PasskeyError:
    return PasskeyError(failure, Operation.REGISTER, detail)


def creation(algs=(-8, -7, -257), exclude=()) -> PublicKeyCredentialCreationOptions:
    return PublicKeyCredentialCreationOptions(
        rp=PublicKeyCredentialRpEntity(name="Example", id="example.com"),
        user=PublicKeyCredentialUserEntity(name="alice", id=b"\x01\x02"),
        challenge=b"c" * 32,
        pub_key_cred_params=[PublicKeyCredentialParameters(type="public-key", alg=a) for a in algs],
        exclude_credentials=[
            PublicKeyCredentialDescriptor(type="public-key", id=i) for i in exclude
        ],
    )


def test_make_credential_is_canonical_complete_and_es256_only() -> None:
    request = make_credential_request(HASH, creation(exclude=[b"old"]), error)
    assert request[0] == 0x01
    assert cbor.encode(cbor.decode(request[1:])) == request[1:]
    assert cbor.decode(request[1:]) == {
        1: HASH,
        2: {"id": "example.com", "name": "Example"},
        3: {"id": b"\x01\x02", "name": "alice", "displayName": "alice"},
        4: [{"alg": -7, "type": "public-key"}],
        5: [{"id": b"old", "type": "public-key"}],
        7: {"rk": True, "uv": True},
    }
    # canonical order puts "alg" before "type" (Android rejects the other order)
    assert b"\xa2\x63alg\x26\x64type" in request


def test_relying_party_without_es256_is_not_supported() -> None:
    with pytest.raises(PasskeyError) as caught:
        make_credential_request(HASH, creation(algs=(-257,)), error)
    assert caught.value.failure is Failure.NOT_SUPPORTED


def test_get_assertion_request_and_omitted_credential() -> None:
    options = PublicKeyCredentialRequestOptions(
        challenge=b"c" * 32,
        rp_id="example.com",
        allow_credentials=[PublicKeyCredentialDescriptor(type="public-key", id=b"only")],
    )
    request = get_assertion_request(HASH, options, error)
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
