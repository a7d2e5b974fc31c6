"""The data-access layer on SQLite and a real PostgreSQL: schema, accounts, passkeys, audit."""

from __future__ import annotations

import threading

import pytest

from hybrid.portal.accounts import AccountError, create_account
from hybrid.portal.security import hash_password, verify_password
from hybrid.portal.store import (
    SCHEMA_VERSION,
    DuplicateCredentialError,
    PasskeyLimitError,
    StorageError,
    UserExistsError,
    open_store,
)


@pytest.fixture
def store(db_url):
    store = open_store(db_url)
    yield store
    store.close()


def _add(store, user_id, n, *, limit=5):
    return store.add_passkey(
        user_id, credential_id=bytes([n]) * 16, credential_data=b"data%d" % n, sign_count=0,
        kind="Phone via QR", name=None, now=1000.0 + n, limit=limit, actor="alice",
        subject="alice",
    )  # fmt: skip


def test_schema_is_versioned_and_reopening_migrates_nothing(db_url):
    first = open_store(db_url)
    assert first.schema_version() == SCHEMA_VERSION
    first.close()
    again = open_store(db_url)
    assert again.migrate() == SCHEMA_VERSION  # the version found: nothing to do
    again.close()


def test_accounts_are_unique_and_passwords_hashed_with_argon2(store):
    user = create_account(store, "alice", "correct horse", "admin", 10.0)
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, "correct horse")
    assert not verify_password(user.password_hash, "wrong horse")
    assert not verify_password(None, "correct horse")  # unknown account: same work, refused
    with pytest.raises(UserExistsError):
        create_account(store, "alice", "another pass", "user", 11.0)
    with pytest.raises(AccountError):
        create_account(store, "bob", "short", "user", 11.0)
    with pytest.raises(AccountError):
        create_account(store, "carol", "long enough", "owner", 11.0)
    assert [u.name for u in store.list_users()] == ["alice"]
    assert store.get_user("nobody") is None


def test_totp_step_is_single_use(store):
    user = store.create_user("alice", hash_password("x" * 8), "user", b"h" * 32, 1.0)
    store.enrol_totp(user.id, "JBSWY3DPEHPK3PXP", 100)
    assert not store.use_totp_step(user.id, 100)  # the enrolment code itself
    assert store.use_totp_step(user.id, 101)
    assert not store.use_totp_step(user.id, 101)  # the same code twice
    assert not store.use_totp_step(user.id, 99)  # an older one
    assert store.get_user("alice").totp_last_step == 101


def test_passkey_limit_duplicates_removal_and_audit(store):
    alice = store.create_user("alice", "h", "user", b"a" * 32, 1.0)
    bob = store.create_user("bob", "h", "user", b"b" * 32, 1.0)
    for n in range(5):
        _add(store, alice.id, n)
    with pytest.raises(PasskeyLimitError):
        _add(store, alice.id, 9)
    with pytest.raises(DuplicateCredentialError):
        _add(store, bob.id, 0)  # alice's credential id, offered for bob
    assert [p.name for p in store.passkeys_for(alice.id)][:2] == ["Passkey 1", "Passkey 2"]
    found = store.passkey_by_credential_id(bytes([3]) * 16)
    assert found is not None and found.user_id == alice.id
    store.record_passkey_use(found.id, 7, 2000.0)
    used = store.passkey_by_credential_id(bytes([3]) * 16)
    assert used.sign_count == 7 and used.last_used_at == 2000.0

    removed = store.remove_passkeys(alice.id, [found.id], actor="alice", subject="alice", now=3.0)
    assert [p.id for p in removed] == [found.id]
    # Another account's passkey id removes nothing.
    assert store.remove_passkeys(bob.id, [found.id + 1], actor="x", subject="bob", now=3.0) == []
    everything = store.remove_passkeys(alice.id, None, actor="admin", subject="alice", now=4.0)
    assert len(everything) == 4 and store.passkeys_for(alice.id) == []
    log = store.audit_entries()
    assert sum(e.action == "passkey added" for e in log) == 5
    assert sum(e.action == "passkey removed" for e in log) == 5
    assert log[0].actor == "admin"  # newest first


def test_the_limit_holds_when_two_ceremonies_finish_at_once(store):
    alice = store.create_user("alice", "h", "user", b"a" * 32, 1.0)
    for n in range(4):
        _add(store, alice.id, n)
    results: list[object] = []

    def finish(n: int) -> None:
        try:
            results.append(_add(store, alice.id, 10 + n))
        except PasskeyLimitError as exc:
            results.append(exc)

    threads = [threading.Thread(target=finish, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, PasskeyLimitError) for r in results) == 1
    assert len(store.passkeys_for(alice.id)) == 5


def test_prompt_skip_and_signin_counting(store):
    user = store.create_user("alice", "h", "user", b"a" * 32, 1.0)
    store.record_prompt_skip(user.id, 500.0)
    for _ in range(3):
        user = store.record_signin(user.id)
    assert user.prompt_skipped_at == 500.0 and user.signins_since_skip == 3
    store.record_prompt_skip(user.id, 600.0)
    assert store.get_user("alice").signins_since_skip == 0


def test_unreachable_or_unknown_databases_are_storage_errors(tmp_path, postgres):
    with pytest.raises(StorageError, match="unsupported database URL"):
        open_store("mysql://localhost/x")
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL"):
        open_store(postgres.url("no_such_database"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open SQLite"):
        open_store(f"sqlite:///{blocker}/portal.sqlite3")
