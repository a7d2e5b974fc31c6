"""Chromium 156 as the desktop, our `hybrid phone` and `hybrid-relay` as phone and tunnel.

Every test runs real WebAuthn calls on a page in Chromium (``hints: ["hybrid"]``), reads the QR
code off the screen, runs our phone CLI with it, and verifies what the page got with python-fido2's
server or our relying party. The phone advertises either over the loopback medium or through our
BlueZ advertiser; the fake BlueZ turns both into the ``Device1`` objects Chromium scans.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chromium import fixtures
from chromium.harness import Lab
from chromium.webauthn import (
    b64url,
    creation,
    registered,
    request,
    server_for,
    unb64url,
    user_verified,
)
from fido2.server import Fido2Server
from fido2.webauthn import AttestedCredentialData

from hybrid.rp import RelyingParty

pytestmark = pytest.mark.usefixtures("chromium_case")
chromium_lab = fixtures.chromium_lab  # one Chromium for all Chromium tests
chromium_case = fixtures.chromium_case

MEDIA = ("loopback", "bluez")


def _ok(result: dict, phone) -> dict:
    assert result["ok"], f"page got {result.get('name')}: {result.get('message')}\n{phone.stderr}"
    assert phone.returncode == 0, phone.stderr
    return result


@dataclass
class Enrolment:
    """alice's passkey, registered through Chromium with our relying party, on one medium."""

    rp: RelyingParty
    phone_dir: Path
    result: dict
    options: dict

    @property
    def credential(self) -> AttestedCredentialData:
        (credential,) = self.rp.credentials_for("alice")
        return credential


@pytest.fixture(scope="module")
def enrolments() -> dict[str, Enrolment]:
    """Registrations shared by this module's tests (one ceremony fewer for each test using one)."""
    return {}


def _through(lab: Lab, medium: str, op: str, options: dict, phone_dir: Path) -> tuple[dict, Any]:
    """One ceremony whose advert must reach Chromium through ``medium`` and only through it."""
    other = next(m for m in MEDIA if m != medium)
    before, before_other = lab.bluez.devices_from(medium), lab.bluez.devices_from(other)
    result, phone = lab.ceremony(op, options, phone_dir, medium=medium)
    _ok(result, phone)
    assert lab.bluez.devices_from(medium) > before, f"no advert came through {medium}"
    assert lab.bluez.devices_from(other) == before_other, f"an advert came through {other}"
    return result, phone


def _enrolment(lab: Lab, enrolments: dict[str, Enrolment], medium: str) -> Enrolment:
    if medium not in enrolments:
        home = lab.directory / f"enrolment-{medium}"
        rp = RelyingParty("localhost", lab.page.origin, home / "rp")
        options, state = rp.begin_registration("alice")
        public_key = {
            **_plain(dict(options)["publicKey"]),
            "hints": ["hybrid"],
            "extensions": {"credProps": True},
        }
        result, _ = _through(lab, medium, "create", public_key, home / "phone")
        rp.complete_registration(state, result["credential"])
        enrolments[medium] = Enrolment(rp, home / "phone", result, public_key)
    return enrolments[medium]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("medium", MEDIA)
def test_registration(chromium_case: Lab, enrolments: dict[str, Enrolment], medium: str) -> None:
    enrolment = _enrolment(chromium_case, enrolments, medium)
    credential = enrolment.result["credential"]
    assert credential["authenticatorAttachment"] == "cross-platform"
    assert "hybrid" in credential["response"]["transports"]
    assert [c.credential_id for c in enrolment.rp.credentials_for("alice")] == [
        unb64url(credential["rawId"])
    ]


@pytest.mark.parametrize("medium", MEDIA)
def test_sign_in(chromium_case: Lab, enrolments: dict[str, Enrolment], medium: str) -> None:
    lab = chromium_case
    enrolment = _enrolment(lab, enrolments, medium)
    options, state = enrolment.rp.begin_authentication(None)  # discoverable: phone picks alice
    public_key = {**_plain(dict(options)["publicKey"]), "hints": ["hybrid"]}
    result, _ = _through(lab, medium, "get", public_key, enrolment.phone_dir)
    assert enrolment.rp.complete_authentication(state, result["credential"]) == "alice"
    assert result["credential"]["id"] == enrolment.result["credential"]["id"]


def test_resident_key_required(chromium_case: Lab, enrolments: dict[str, Enrolment]) -> None:
    lab = chromium_case
    enrolment = _enrolment(lab, enrolments, "loopback")
    assert enrolment.options["authenticatorSelection"]["residentKey"] == "required"
    assert enrolment.result["extensions"] == {"credProps": {"rk": True}}
    # Discoverable: a request with an empty allow list finds it (python-fido2's server here).
    server = server_for(lab.page.origin)
    options, state = request(server)
    assert "allowCredentials" not in options or not options["allowCredentials"]
    result, phone = lab.ceremony("get", options, enrolment.phone_dir)
    _ok(result, phone)
    server.authenticate_complete(state, [enrolment.credential], result["credential"])
    assert result["credential"]["id"] == enrolment.result["credential"]["id"]


@dataclass
class Discouraged:
    """A credential made with residentKey and userVerification "discouraged" (python-fido2)."""

    server: Fido2Server
    phone_dir: Path
    result: dict
    credential: AttestedCredentialData
    sent: str  # the makeCredential request as Chromium's device log shows it


@pytest.fixture(scope="module")
def discouraged_holder() -> dict[str, Discouraged]:
    return {}


@pytest.fixture
def discouraged(chromium_case: Lab, discouraged_holder: dict[str, Discouraged]) -> Discouraged:
    """Made once per module (three tests look at it), through the mechanism list."""
    if "made" not in discouraged_holder:
        lab = chromium_case
        server = server_for(lab.page.origin)
        options, state = creation(
            server,
            resident_key="discouraged",
            user_verification="discouraged",
            extensions={"credProps": True},
        )
        phone_dir = lab.directory / "discouraged-phone"
        offset = lab.log_offset()
        result, phone = lab.ceremony("create", options, phone_dir, pick_phone=True)
        _ok(result, phone)
        credential = registered(server, state, result)
        (sent,) = _requests_in(lab.log_since(offset), "MakeCredential")
        discouraged_holder["made"] = Discouraged(server, phone_dir, result, credential, sent)
    return discouraged_holder["made"]


def _requests_in(log: str, command: str) -> list[str]:
    """The CTAP requests of one kind Chromium's device log shows it sent (CBOR diagnostic)."""
    return re.findall(rf"\(kAuthenticator{command}\) (\{{.*\}})\s*$", log, re.MULTILINE)


def test_resident_key_discouraged(chromium_case: Lab, discouraged: Discouraged) -> None:
    lab = chromium_case
    assert discouraged.result["extensions"] == {"credProps": {"rk": False}}
    assert '"rk"' not in discouraged.sent, discouraged.sent  # Chromium asked for no rk
    # A non-discoverable credential is used through the allow list.
    server = discouraged.server
    options, state = request(server, allow=[discouraged.credential])
    result, phone = lab.ceremony("get", options, discouraged.phone_dir)
    _ok(result, phone)
    server.authenticate_complete(state, [discouraged.credential], result["credential"])


def test_resident_key_discouraged_is_not_discoverable(
    chromium_case: Lab, discouraged: Discouraged
) -> None:
    lab = chromium_case
    options, _ = request(discouraged.server)  # empty allow list: only discoverable ones answer
    result, phone = lab.ceremony("get", options, discouraged.phone_dir)
    assert "NO_CREDENTIALS" in phone.stderr, phone.stderr
    assert not result["ok"] and result["name"] == "NotAllowedError", result


def test_user_verification_required(chromium_case: Lab) -> None:
    lab = chromium_case
    server = server_for(lab.page.origin)
    options, state = creation(server, user_verification="required")
    result, phone = lab.ceremony("create", options, lab.case_dir / "phone")
    _ok(result, phone)
    # Fido2Server refuses a registration without UV when UV was required.
    credential = registered(server, state, result)
    assert user_verified(result)
    options, state = request(server, allow=[credential], user_verification="required")
    result2, phone = lab.ceremony("get", options, lab.case_dir / "phone")
    _ok(result2, phone)
    server.authenticate_complete(state, [credential], result2["credential"])
    assert user_verified(result2)


def test_user_verification_discouraged_registration(discouraged: Discouraged) -> None:
    # residentKey "discouraged" too: with "required" Chromium asks for UV anyway. Even so it asks
    # a hybrid phone for UV in makeCredential although the page discouraged it, so a phone that
    # verifies the user here does what it was asked.
    assert discouraged.sent.endswith('7: {"uv": true}}'), discouraged.sent
    assert user_verified(discouraged.result)


def test_user_verification_discouraged_sign_in(
    chromium_case: Lab, enrolments: dict[str, Enrolment]
) -> None:
    lab = chromium_case
    enrolment = _enrolment(lab, enrolments, "loopback")
    server = server_for(lab.page.origin)
    offset = lab.log_offset()
    options, state = request(server, allow=[enrolment.credential], user_verification="discouraged")
    result, phone = lab.ceremony("get", options, enrolment.phone_dir)
    _ok(result, phone)
    server.authenticate_complete(state, [enrolment.credential], result["credential"])
    (sent,) = _requests_in(lab.log_since(offset), "GetAssertion")
    assert '"uv"' not in sent, sent  # Chromium does not ask for UV here...
    assert not user_verified(result), "...so the phone must not claim it verified the user"


PRF_SALT_A = b64url(b"salt A".ljust(32, b"\0"))
PRF_SALT_B = b64url(b"salt B".ljust(32, b"\0"))


def test_prf_at_creation(chromium_case: Lab) -> None:
    lab = chromium_case
    server = server_for(lab.page.origin)
    options, state = creation(server, extensions={"prf": {"eval": {"first": PRF_SALT_A}}})
    result, phone = lab.ceremony("create", options, lab.case_dir / "phone")
    _ok(result, phone)
    credential = registered(server, state, result)
    prf = result["extensions"].get("prf")
    assert prf is not None and prf.get("enabled") is True, result["extensions"]
    # An output at creation is optional (Chromium passes the salt on); if the phone gives one,
    # it is the credential's PRF and must match what a sign-in with the same salt yields.
    options, state = request(
        server, allow=[credential], extensions={"prf": {"eval": {"first": PRF_SALT_A}}}
    )
    got, phone = lab.ceremony("get", options, lab.case_dir / "phone")
    _ok(got, phone)
    server.authenticate_complete(state, [credential], got["credential"])
    first = got["extensions"]["prf"]["results"]["first"]
    assert len(first) == 43  # 32 bytes, base64url
    if "results" in prf:
        assert prf["results"]["first"] == first


def test_prf_at_sign_in(chromium_case: Lab) -> None:
    lab = chromium_case
    server = server_for(lab.page.origin)
    options, state = creation(server, extensions={"prf": {}})
    result, phone = lab.ceremony("create", options, lab.case_dir / "phone")
    _ok(result, phone)
    credential = registered(server, state, result)
    assert result["extensions"].get("prf", {}).get("enabled") is True, result["extensions"]

    def evaluate(first: str, second: str | None = None) -> dict:
        salts = {"first": first} | ({"second": second} if second else {})
        options, state = request(server, allow=[credential], extensions={"prf": {"eval": salts}})
        got, phone = lab.ceremony("get", options, lab.case_dir / "phone")
        _ok(got, phone)
        server.authenticate_complete(state, [credential], got["credential"])
        return got["extensions"]["prf"]["results"]

    a1 = evaluate(PRF_SALT_A, PRF_SALT_B)
    a2 = evaluate(PRF_SALT_A)
    assert len(a1["first"]) == 43 and len(a1["second"]) == 43
    assert a1["first"] == a2["first"], "same salt, same credential: the output must repeat"
    assert a1["first"] != a1["second"], "different salts must give different outputs"
