"""The phone's software authenticator: CTAP2 bytes in, bytes out, against real crypto and SQLite."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from fido2 import cbor
from fido2.ctap2 import AssertionResponse, AttestationResponse, Info
from fido2.webauthn import AuthenticatorData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid.catalogue import Operation
from hybrid.phone import (
    AAGUID,
    Account,
    Approval,
    ApprovalRequest,
    CredentialStore,
    CredentialStoreError,
    SoftwareAuthenticator,
    auto_approver,
    declining_approver,
    terminal_approver,
)
from hybrid.phone.store import STORE_FILENAME

RP_ID = "example.com"
CDH = hashlib.sha256(b"client data").digest()


def make_credential_request(
    *,
    rp_id: str = RP_ID,
    user_id: bytes = b"user-1",
    user_name: str = "alice",
    algs: tuple[int, ...] = (-7,),
    exclude: list[bytes] | None = None,
    client_data_hash: bytes = CDH,
    rk: bool = True,
    uv: bool = True,
    extensions: dict | None = None,
) -> bytes:
    params: dict = {
        1: client_data_hash,
        2: {"id": rp_id, "name": "Example"},
        3: {"id": user_id, "name": user_name, "displayName": user_name.title()},
        4: [{"alg": alg, "type": "public-key"} for alg in algs],
        7: {"rk": rk, **({"uv": True} if uv else {})},
    }
    if exclude is not None:
        params[5] = [{"id": cid, "type": "public-key"} for cid in exclude]
    if extensions is not None:
        params[6] = extensions
    return b"\x01" + cbor.encode(params)


def get_assertion_request(
    *,
    rp_id: str = RP_ID,
    allow: list[bytes] | None = None,
    client_data_hash: bytes = CDH,
    uv: bool = False,
    extensions: dict | None = None,
) -> bytes:
    params: dict = {1: rp_id, 2: client_data_hash}
    if allow is not None:
        params[3] = [{"id": cid, "type": "public-key"} for cid in allow]
    if extensions is not None:
        params[4] = extensions
    if uv:
        params[5] = {"uv": True}
    return b"\x02" + cbor.encode(params)


class RecordingApprover:
    def __init__(self, approval: Approval) -> None:
        self.approval = approval
        self.requests: list[ApprovalRequest] = []

    async def __call__(self, request: ApprovalRequest) -> Approval:
        self.requests.append(request)
        return self.approval


@pytest.fixture
def store(tmp_path: Path):
    with CredentialStore(tmp_path / "phone") as s:
        yield s


@pytest.fixture
def authenticator(store: CredentialStore) -> SoftwareAuthenticator:
    return SoftwareAuthenticator(store, auto_approver())


async def register(auth: SoftwareAuthenticator, **kwargs) -> AttestationResponse:
    response = await auth.handle(make_credential_request(**kwargs))
    assert response[0] == 0, f"status 0x{response[0]:02x}"
    return AttestationResponse.from_dict(cbor.decode(response[1:]))


async def assert_(auth: SoftwareAuthenticator, **kwargs) -> AssertionResponse:
    response = await auth.handle(get_assertion_request(**kwargs))
    assert response[0] == 0, f"status 0x{response[0]:02x}"
    return AssertionResponse.from_dict(cbor.decode(response[1:]))


def _canonical(data: bytes) -> bool:
    return cbor.encode(cbor.decode(data)) == data


async def test_get_info_describes_a_hybrid_phone(authenticator: SoftwareAuthenticator) -> None:
    raw = authenticator.get_info()
    assert _canonical(raw)
    info = Info.from_dict(cbor.decode(raw))
    assert info.versions == ["FIDO_2_0", "FIDO_2_1"]
    assert info.extensions == ["prf"]
    assert info.aaguid == AAGUID == bytes(16)
    assert info.options == {"rk": True, "uv": True, "up": True, "plat": False}
    assert info.transports == ["hybrid", "internal"]
    assert info.algorithms == [{"alg": -7, "type": "public-key"}]
    assert info.pin_uv_protocols == []
    assert "clientPin" not in info.options
    assert await authenticator.handle(b"\x04") == b"\x00" + raw


async def test_make_credential_returns_none_attestation_with_attested_es256_key(
    authenticator: SoftwareAuthenticator,
) -> None:
    raw = await authenticator.handle(make_credential_request())
    assert raw[0] == 0 and _canonical(raw[1:])
    att = AttestationResponse.from_dict(cbor.decode(raw[1:]))
    assert att.fmt == "none" and att.att_stmt == {}
    auth_data = att.auth_data
    assert auth_data.rp_id_hash == hashlib.sha256(RP_ID.encode()).digest()
    assert auth_data.is_user_present() and auth_data.is_user_verified()
    assert auth_data.is_attested() and auth_data.counter == 0
    cred = auth_data.credential_data
    assert cred is not None and cred.aaguid == bytes(16)
    assert cred.public_key[3] == -7 and cred.public_key[-1] == 1  # ES256 on P-256
    stored = authenticator.store.get(cred.credential_id)
    assert stored is not None and stored.user_name == "alice" and stored.rp_name == "Example"


async def test_assertion_signature_verifies_with_the_registered_key(
    authenticator: SoftwareAuthenticator,
) -> None:
    cred = (await register(authenticator)).auth_data.credential_data
    ga = await assert_(authenticator, allow=[cred.credential_id])
    assert ga.credential["id"] == cred.credential_id
    assert ga.credential["type"] == "public-key"
    cred.public_key.verify(ga.auth_data + CDH, ga.signature)
    with pytest.raises(Exception):  # noqa: B017 - any InvalidSignature flavour
        cred.public_key.verify(ga.auth_data + hashlib.sha256(b"other").digest(), ga.signature)
    assert ga.user["id"] == b"user-1"
    assert ga.user_selected is None  # allowList given: the desktop chose, not the user


async def test_counter_increments_and_persists_across_store_reopen(tmp_path: Path) -> None:
    data_dir = tmp_path / "phone"
    with CredentialStore(data_dir) as store:
        auth = SoftwareAuthenticator(store, auto_approver())
        cred = (await register(auth)).auth_data.credential_data
        counters = [(await assert_(auth)).auth_data.counter for _ in range(3)]
    assert counters == [1, 2, 3]
    with CredentialStore(data_dir) as reopened:
        auth = SoftwareAuthenticator(reopened, auto_approver())
        ga = await assert_(auth)
        assert ga.auth_data.counter == 4
        assert ga.credential["id"] == cred.credential_id
        cred.public_key.verify(ga.auth_data + CDH, ga.signature)
        stored = reopened.get(cred.credential_id)
        assert stored.sign_count == 4
        key = serialization.load_der_private_key(stored.private_key_der, password=None)
        assert key.public_key().public_numbers().x.to_bytes(32, "big") == cred.public_key[-2]
    mode = stat.S_IMODE(os.stat(data_dir / STORE_FILENAME).st_mode)
    assert mode & 0o077 == 0


def test_unusable_store_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CredentialStoreError, match="cannot open credential store"):
        CredentialStore(tmp_path / "file")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / STORE_FILENAME).write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(CredentialStoreError):
        CredentialStore(tmp_path / "junk")


async def test_discoverable_assertion_without_a_choice_takes_the_newest_credential(
    authenticator: SoftwareAuthenticator,
) -> None:
    await register(authenticator, user_id=b"u-old", user_name="old")
    newest = (await register(authenticator, user_id=b"u-new", user_name="new")).auth_data
    await register(authenticator, rp_id="other.example", user_id=b"u-x", user_name="x")
    ga = await assert_(authenticator, uv=True)
    assert ga.credential["id"] == newest.credential_data.credential_id
    assert ga.user == {"id": b"u-new", "name": "new", "displayName": "New"}
    assert ga.user_selected is None  # nobody chose: the response does not claim a choice
    assert ga.number_of_credentials is None


async def test_the_approver_chooses_among_several_accounts(store: CredentialStore) -> None:
    offered: list[tuple[str | None, ...]] = []

    def choose_old(accounts) -> int:
        offered.append(tuple(a.user_name for a in accounts))
        return [a.user_name for a in accounts].index("old")

    auth = SoftwareAuthenticator(store, auto_approver(choose_account=choose_old))
    old = (await register(auth, user_id=b"u-old", user_name="old")).auth_data
    await register(auth, user_id=b"u-new", user_name="new")
    ga = await assert_(auth, uv=True)
    assert offered == [("new", "old")]  # newest first
    assert ga.credential["id"] == old.credential_data.credential_id
    assert ga.user["id"] == b"u-old"
    assert ga.user_selected is True
    # one credential: nothing to choose, no userSelected
    other = SoftwareAuthenticator(store, auto_approver(choose_account=choose_old))
    await register(other, rp_id="solo.example")
    assert (await assert_(other, rp_id="solo.example")).user_selected is None
    assert len(offered) == 1


async def test_non_discoverable_credentials_need_the_allow_list(
    authenticator: SoftwareAuthenticator,
) -> None:
    att = await register(authenticator, rk=False)
    cred_id = att.auth_data.credential_data.credential_id
    assert authenticator.store.get(cred_id).discoverable is False
    assert await authenticator.handle(get_assertion_request()) == b"\x2e"
    ga = await assert_(authenticator, allow=[cred_id])
    assert ga.credential["id"] == cred_id
    # a non-discoverable credential never replaces a discoverable one for the same user
    resident = (await register(authenticator)).auth_data.credential_data.credential_id
    await register(authenticator, rk=False)
    assert (await assert_(authenticator)).credential["id"] == resident


async def test_same_user_on_same_rp_replaces_the_old_credential(
    authenticator: SoftwareAuthenticator,
) -> None:
    first = (await register(authenticator)).auth_data.credential_data.credential_id
    second = (await register(authenticator)).auth_data.credential_data.credential_id
    assert first != second
    assert [c.credential_id for c in authenticator.store.for_rp(RP_ID)] == [second]


async def test_exclude_list_match_answers_credential_excluded_after_asking(
    store: CredentialStore,
) -> None:
    approver = RecordingApprover(Approval(True, True))
    auth = SoftwareAuthenticator(store, approver)
    cred_id = (await register(auth)).auth_data.credential_data.credential_id
    response = await auth.handle(make_credential_request(user_id=b"u2", exclude=[cred_id]))
    assert response == b"\x19"
    assert len(approver.requests) == 2  # presence is asked before revealing the match
    assert len(store.for_rp(RP_ID)) == 1
    # An exclude list naming only unknown ids, or this id for another site, does not block.
    await register(auth, user_id=b"u3", exclude=[os.urandom(32)])
    await register(auth, rp_id="other.example", exclude=[cred_id])


async def test_allow_list_restricts_to_listed_credentials(
    authenticator: SoftwareAuthenticator,
) -> None:
    a = (await register(authenticator, user_id=b"a")).auth_data.credential_data.credential_id
    b = (await register(authenticator, user_id=b"b")).auth_data.credential_data.credential_id
    ga = await assert_(authenticator, allow=[a])
    assert ga.credential["id"] == a and ga.user["id"] == b"a"
    ga = await assert_(authenticator, allow=[os.urandom(32), b])
    assert ga.credential["id"] == b
    assert await authenticator.handle(get_assertion_request(allow=[os.urandom(32)])) == b"\x2e"
    # The right id for the wrong site does not match either.
    assert await authenticator.handle(get_assertion_request(rp_id="x.org", allow=[a])) == b"\x2e"


async def test_no_credential_for_rp_is_no_credentials(
    authenticator: SoftwareAuthenticator,
) -> None:
    assert await authenticator.handle(get_assertion_request()) == b"\x2e"
    await register(authenticator, rp_id="other.example")
    assert await authenticator.handle(get_assertion_request()) == b"\x2e"


async def test_declining_user_gets_operation_denied_and_nothing_changes(
    store: CredentialStore,
) -> None:
    auth = SoftwareAuthenticator(store, auto_approver())
    cred_id = (await register(auth)).auth_data.credential_data.credential_id
    declining = SoftwareAuthenticator(store, declining_approver())
    assert await declining.handle(make_credential_request(user_id=b"u2")) == b"\x27"
    assert await declining.handle(get_assertion_request()) == b"\x27"
    assert len(store.all()) == 1
    assert store.get(cred_id).sign_count == 0


async def test_uv_is_performed_and_flagged_only_when_asked(store: CredentialStore) -> None:
    auth = SoftwareAuthenticator(store, auto_approver())
    att = await register(auth, uv=False)
    assert att.auth_data.is_user_present() and not att.auth_data.is_user_verified()
    att = await register(auth, user_id=b"u2", uv=True)
    assert att.auth_data.is_user_verified()
    ga = await assert_(auth, allow=[att.auth_data.credential_data.credential_id])
    assert ga.auth_data.flags == AuthenticatorData.FLAG.UP
    assert ga.user == {"id": b"u2"}  # no names without verification
    ga = await assert_(auth, allow=[att.auth_data.credential_data.credential_id], uv=True)
    assert ga.auth_data.flags == AuthenticatorData.FLAG.UP | AuthenticatorData.FLAG.UV


async def test_approver_that_cannot_verify_refuses_uv_requests(store: CredentialStore) -> None:
    auth = SoftwareAuthenticator(store, auto_approver(user_verified=False))
    assert Info.from_dict(cbor.decode(auth.get_info())).options["uv"] is False
    assert await auth.handle(make_credential_request(uv=True)) == b"\x2c"  # INVALID_OPTION
    await register(auth, uv=False)
    assert await auth.handle(get_assertion_request(uv=True)) == b"\x2c"
    # an approver that tries and fails to verify: UV_INVALID, nothing signed
    failing = RecordingApprover(Approval(approved=True, user_verified=False))
    auth = SoftwareAuthenticator(store, failing)
    assert await auth.handle(get_assertion_request(uv=True)) == b"\x3f"
    assert failing.requests[-1] == ApprovalRequest(
        Operation.SIGN_IN, RP_ID, "Example", "alice", "Alice", user_verification=True
    )
    assert store.all()[0].sign_count == 0


async def test_prf_is_an_hmac_of_the_hashed_salt_with_a_per_credential_secret(
    authenticator: SoftwareAuthenticator,
) -> None:
    import hmac

    att_response = await authenticator.handle(make_credential_request(extensions={"prf": {}}))
    fields = cbor.decode(att_response[1:])
    assert fields[6] == {"prf": {"enabled": True}}
    cred_a = AttestationResponse.from_dict(fields).auth_data.credential_data.credential_id
    cred_b = (await register(authenticator, user_id=b"b")).auth_data.credential_data.credential_id
    salt1, salt2 = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()

    async def prf(allow, extension) -> dict:
        response = await authenticator.handle(
            get_assertion_request(allow=allow, extensions={"prf": extension})
        )
        assert response[0] == 0
        return cbor.decode(response[1:])[8]["prf"]["results"]

    first = await prf([cred_a], {"eval": {"first": salt1, "second": salt2}})
    secret = authenticator.store.get(cred_a).prf_secret
    assert first == {
        "first": hmac.digest(secret, salt1, "sha256"),
        "second": hmac.digest(secret, salt2, "sha256"),
    }
    assert (await prf([cred_a], {"eval": {"first": salt1}})) == {"first": first["first"]}
    other = await prf([cred_b], {"eval": {"first": salt1}})
    assert other["first"] != first["first"]  # the secret is per credential
    by_cred = await prf(
        [cred_b], {"eval": {"first": salt1}, "evalByCredential": {cred_b: {"first": salt2}}}
    )
    assert by_cred["first"] == hmac.digest(
        authenticator.store.get(cred_b).prf_secret, salt2, "sha256"
    )
    short = get_assertion_request(allow=[cred_a], extensions={"prf": {"eval": {"first": b"x"}}})
    assert await authenticator.handle(short) == b"\x02"


def test_store_upgrades_an_old_database(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / STORE_FILENAME
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE credentials (seq INTEGER PRIMARY KEY AUTOINCREMENT, credential_id BLOB "
        "NOT NULL UNIQUE, rp_id TEXT NOT NULL, rp_name TEXT, user_id BLOB NOT NULL, user_name "
        "TEXT, user_display_name TEXT, private_key BLOB NOT NULL, sign_count INTEGER NOT NULL "
        "DEFAULT 0);"
    )
    old.execute(
        "INSERT INTO credentials (credential_id, rp_id, user_id, private_key) VALUES (?,?,?,?)",
        (b"c" * 32, RP_ID, b"u", b"k"),
    )
    old.commit()
    old.close()
    with CredentialStore(tmp_path) as store:
        (credential,) = store.for_rp(RP_ID, discoverable_only=True)
        assert credential.discoverable and credential.prf_secret is None
        secret = store.prf_secret(credential.credential_id)
        assert len(secret) == 32 and store.prf_secret(credential.credential_id) == secret


async def test_unanswered_prompt_times_out(store: CredentialStore) -> None:
    async def never(request: ApprovalRequest) -> Approval:
        await trio.sleep_forever()
        raise AssertionError

    auth = SoftwareAuthenticator(store, never, approval_timeout=0.05)
    assert await auth.handle(make_credential_request()) == b"\x2f"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"", 0x03),
        (b"\x07", 0x01),
        (b"\x40" + cbor.encode({}), 0x01),
        (b"\x01", 0x14),
        (b"\x01\xa1", 0x12),  # truncated map
        (b"\x01\xff", 0x12),
        (b"\x01" + cbor.encode({1: CDH}) + b"\x00", 0x12),  # trailing bytes
        (b"\x01\xa2\x02\x01\x01\x02", 0x12),  # keys out of canonical order
        (b"\x01\xa1\x01\xf6", 0x12),  # null where fido2's decoder would read False
        (b"\x01" + cbor.encode([1, 2]), 0x11),
        (b"\x01" + cbor.encode({1: CDH}), 0x14),
        (b"\x02" + cbor.encode({1: RP_ID}), 0x14),
        (b"\x02" + cbor.encode({2: CDH}), 0x14),
        (b"\x02" + cbor.encode({1: 5, 2: CDH}), 0x11),
        (b"\x02" + cbor.encode({1: RP_ID, 2: b"short"}), 0x02),
        (b"\x02" + cbor.encode({1: RP_ID, 2: CDH, 5: {"rk": True}}), 0x2B),
        (b"\x02" + cbor.encode({1: RP_ID, 2: CDH, 6: b"x"}), 0x14),
        (b"\x02" + cbor.encode({1: RP_ID, 2: CDH, 6: b"x", 7: 1}), 0x02),
        (b"\x02" + cbor.encode({1: RP_ID, 2: CDH, 3: [5]}), 0x11),
        (b"\x02" + cbor.encode({1: RP_ID, 2: CDH, 3: [{"type": "public-key"}]}), 0x14),
    ],
)
async def test_bad_requests_get_the_right_status(
    authenticator: SoftwareAuthenticator, request_bytes: bytes, status: int
) -> None:
    assert await authenticator.handle(request_bytes) == bytes([status])


async def test_make_credential_parameter_checks(authenticator: SoftwareAuthenticator) -> None:
    assert await authenticator.handle(make_credential_request(algs=(-8, -257))) == b"\x26"
    assert await authenticator.handle(make_credential_request(algs=())) == b"\x26"
    assert await authenticator.handle(make_credential_request(algs=(-8, -7))) != b"\x26"
    assert await authenticator.handle(make_credential_request(user_id=b"")) == b"\x02"
    assert await authenticator.handle(make_credential_request(user_id=bytes(65))) == b"\x02"
    base = {
        1: CDH,
        2: {"id": RP_ID},
        3: {"id": b"u"},
        4: [{"alg": -7, "type": "public-key"}],
    }
    for key in (1, 2, 3, 4):
        params = dict(base)
        del params[key]
        assert await authenticator.handle(b"\x01" + cbor.encode(params)) == b"\x14"
    assert await authenticator.handle(b"\x01" + cbor.encode({**base, 2: {}})) == b"\x14"
    assert await authenticator.handle(b"\x01" + cbor.encode({**base, 3: {"id": "u"}})) == b"\x11"
    up_false = {**base, 7: {"up": False}}
    assert await authenticator.handle(b"\x01" + cbor.encode(up_false)) == b"\x2c"
    bad_alg = {**base, 4: [{"alg": True, "type": "public-key"}]}
    assert await authenticator.handle(b"\x01" + cbor.encode(bad_alg)) == b"\x11"
    # Minimal entities (no names) are accepted.
    assert (await authenticator.handle(b"\x01" + cbor.encode(base)))[0] == 0


async def test_terminal_approver_shows_the_request_and_reads_the_answer() -> None:
    out = io.StringIO()
    prompts: list[str] = []

    def answer(text: str) -> str:
        def read(prompt: str) -> str:
            prompts.append(prompt)
            return text

        return read

    request = ApprovalRequest(
        Operation.REGISTER, RP_ID, "Example", "alice", "Alice A", user_verification=True
    )
    yes = await terminal_approver(read_line=answer(" Y "), output=out)(request)
    assert yes == Approval(approved=True, user_verified=True)
    plain = ApprovalRequest(Operation.REGISTER, RP_ID, "Example", "alice", "Alice A")
    yes = await terminal_approver(read_line=answer("y"), output=out)(plain)
    assert yes == Approval(approved=True, user_verified=False)  # not asked: not verified
    no = await terminal_approver(read_line=answer(""), output=out)(request)
    assert no == Approval(approved=False, user_verified=False)
    text = out.getvalue()
    assert "register" in text and RP_ID in text and "Example" in text and "alice" in text
    assert prompts[0].endswith("[y/N] ") and "Example" in prompts[0]

    def eof(prompt: str) -> str:
        raise EOFError

    assert not (await terminal_approver(read_line=eof, output=out)(request)).approved


async def test_terminal_approver_lists_accounts_by_number() -> None:
    accounts = (Account("new", "New One"), Account("old", None))
    request = ApprovalRequest(Operation.SIGN_IN, RP_ID, "Example", accounts=accounts)

    async def answer(text: str) -> tuple[Approval, str]:
        out = io.StringIO()
        read_fd, write_fd = os.pipe()
        os.write(write_fd, text.encode() + b"\n")
        os.close(write_fd)
        try:
            approval = await terminal_approver(input_fd=read_fd, output=out)(request)
        finally:
            os.close(read_fd)
        return approval, out.getvalue()

    chosen, text = await answer("2")
    assert chosen == Approval(approved=True, user_verified=False, account=1)
    assert "  1. new (New One)\n  2. old\n" in text
    # the prompt is on the same stream as the request it describes
    assert text.rstrip().endswith("which account? [1-2, empty cancels]")
    for wrong in ("", "3", "0", "x"):
        assert not (await answer(wrong))[0].approved


async def test_terminal_approver_is_abandoned_on_cancel() -> None:
    import threading

    release = threading.Event()

    def blocked(prompt: str) -> str:
        release.wait(5)
        return "y"

    approver = terminal_approver(read_line=blocked, output=io.StringIO())
    with trio.move_on_after(0.05) as scope:
        await approver(ApprovalRequest(Operation.SIGN_IN, RP_ID))
    assert scope.cancelled_caught
    release.set()


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(st.sampled_from([1, 2, 4]), st.binary(max_size=200)).map(
            lambda t: bytes([t[0]]) + t[1]
        ),
    )
)
def test_random_bytes_never_raise(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _fuzz_once(tmp_path_factory, data)


_LEAF = (
    st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=12)
    | st.sampled_from([RP_ID, CDH, "public-key", -7, "id", "type", "alg"])
)
_CBORISH = st.recursive(
    _LEAF,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.integers(0, 8) | st.sampled_from(["id", "type", "alg", "rk", "up"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=4,
)
_VALID_PARAMS = {
    1: {
        1: CDH,
        2: {"id": RP_ID, "name": "Example"},
        3: {"id": b"u", "name": "a", "displayName": "A"},
        4: [{"alg": -7, "type": "public-key"}],
        5: [{"id": b"x" * 32, "type": "public-key"}],
        7: {"rk": True},
    },
    2: {1: RP_ID, 2: CDH, 3: [{"id": b"x" * 32, "type": "public-key"}], 5: {"up": True}},
}


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.sampled_from([1, 2]),
    st.dictionaries(st.integers(1, 9), _CBORISH, max_size=3),
    st.sets(st.integers(1, 9), max_size=2),
)
def test_mutated_valid_requests_never_raise(
    tmp_path_factory: pytest.TempPathFactory, command: int, replace: dict, drop: set
) -> None:
    """Start from a valid request, replace some parameters with junk and drop others."""
    params = {**_VALID_PARAMS[command], **replace}
    for key in drop:
        params.pop(key, None)
    _fuzz_once(tmp_path_factory, bytes([command]) + cbor.encode(params))


async def test_every_truncation_and_byte_flip_of_valid_requests_is_answered(
    authenticator: SoftwareAuthenticator,
) -> None:
    """Deterministic sweep: each prefix and each single-byte corruption of valid requests."""
    cases = 0
    for command, params in _VALID_PARAMS.items():
        valid = bytes([command]) + cbor.encode(params)
        variants = [valid[:n] for n in range(len(valid))]
        for pos in range(1, len(valid)):
            for flip in (0x01, 0x20, 0x80, 0xFF):
                variants.append(valid[:pos] + bytes([valid[pos] ^ flip]) + valid[pos + 1 :])
        for variant in variants:
            response = await authenticator.handle(variant)
            assert response and response[0] != 0x7F, variant.hex()
            cases += 1
    assert cases > 1000


_FUZZ_STORE: dict[str, SoftwareAuthenticator] = {}


def _fuzz_once(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    auth = _FUZZ_STORE.get("auth")
    if auth is None:
        store = CredentialStore(tmp_path_factory.mktemp("fuzz"))
        auth = _FUZZ_STORE["auth"] = SoftwareAuthenticator(store, auto_approver())
    response = trio.run(auth.handle, data)
    assert isinstance(response, bytes) and len(response) >= 1
    assert response[0] != 0x7F, f"unexpected internal error for {data.hex()}"
    if response[0] == 0:
        assert _canonical(response[1:])
