"""Each of the article's fourteen error entries, on the page, reached through its real cause.

Phones are the real ``hybrid phone`` command (approving, declining on its prompt, or with an
empty passkey store) or, where the command line cannot play the part, a real ``PhoneSession`` in
a thread with an approver that cannot verify its user or with its answers tampered with.
"""

from __future__ import annotations

import socket
import sqlite3

import cbor2

from hybrid.catalogue import Failure, Operation, catalogue_entry
from hybrid.phone import Approval

from .journeys import (
    add_user,
    answer,
    create_passkey_with_phone,
    finish,
    phone,
    phone_in_thread,
    problem,
    read_qr,
    seed_passkey,
    sign_in_with_password,
    start_passkey_login,
)
from .portal_support import free_tcp_port

SIGN_IN, REGISTER = Operation.SIGN_IN, Operation.REGISTER


def expected(failure: Failure, op: Operation) -> tuple[str, str]:
    entry = catalogue_entry(failure, op)
    return entry.title, entry.message


def try_again(page) -> str:
    page.get_by_role("button", name="Try again").click()
    return read_qr(page)


def flip_signature(response: bytes) -> bytes:
    body = cbor2.loads(response[1:])
    signature = bytearray(body[3])
    signature[-1] ^= 1
    body[3] = bytes(signature)
    return response[:1] + cbor2.dumps(body)


async def cannot_verify(request):
    return Approval(approved=True, user_verified=False)


def test_sign_in_errors_from_the_phone(make_portal, relay_url, page, tmp_path):
    portal = make_portal()
    add_user(portal, "lee")
    phone_dir = tmp_path / "phone"
    sign_in_with_password(page, portal, "lee")
    create_passkey_with_phone(page, portal, relay_url, phone_dir)
    page.get_by_role("button", name="Sign out").click()

    # Declined on the phone's prompt.
    start_passkey_login(page, portal, "lee")
    proc = phone(portal, relay_url, read_qr(page), phone_dir, approve=False)
    answer(proc, "n")
    assert problem(page) == expected(Failure.USER_DECLINED, SIGN_IN)
    finish(proc)

    # A phone without this account's passkey.
    proc = phone(portal, relay_url, try_again(page), tmp_path / "other-phone")
    assert problem(page) == expected(Failure.NO_CREDENTIAL, SIGN_IN)
    finish(proc)

    # The phone approves without verifying its user (no fingerprint, face or PIN).
    thread, _ = phone_in_thread(portal, relay_url, try_again(page), phone_dir,
                                approver=cannot_verify)  # fmt: skip
    assert problem(page) == expected(Failure.USER_NOT_VERIFIED, SIGN_IN)
    thread.join(30)

    # The assertion's signature is changed on its way.
    thread, _ = phone_in_thread(portal, relay_url, try_again(page), phone_dir,
                                mutate=flip_signature)  # fmt: skip
    assert problem(page) == expected(Failure.VERIFICATION_FAILED, SIGN_IN)
    thread.join(30)

    # The phone answers with something that is not CTAP at all.
    thread, _ = phone_in_thread(portal, relay_url, try_again(page), phone_dir,
                                mutate=lambda response: b"\x00\xff\xfe")  # fmt: skip
    assert problem(page) == expected(Failure.PROTOCOL_ERROR, SIGN_IN)
    thread.join(30)
    assert "/home" not in page.url


def break_passkey_inserts(db_url: str) -> None:
    """Make the database refuse every new passkey, as a full disk would."""
    if db_url.startswith("sqlite:"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            conn.execute(
                "CREATE TRIGGER disk_full BEFORE INSERT ON passkeys "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        return
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON passkeys "
            "FOR EACH ROW EXECUTE FUNCTION disk_full()"
        )


def test_registration_errors_from_the_phone(make_portal, db_url, relay_url, page, tmp_path):
    portal = make_portal(db_url)
    add_user(portal, "max")
    phone_dir = tmp_path / "phone"
    sign_in_with_password(page, portal, "max")

    page.get_by_role("button", name="Create a passkey").click()
    proc = phone(portal, relay_url, read_qr(page), phone_dir, approve=False)
    answer(proc, "n")
    assert problem(page) == expected(Failure.USER_DECLINED, REGISTER)
    finish(proc)

    proc = phone(portal, relay_url, try_again(page), phone_dir)
    page.wait_for_url("**/settings/security")
    assert finish(proc)[0] == 0

    # The same phone again: its passkey is on the exclude list.
    page.get_by_role("button", name="Create a passkey").click()
    proc = phone(portal, relay_url, read_qr(page), phone_dir)
    assert problem(page) == expected(Failure.EXCLUDED, REGISTER)
    finish(proc)

    # The database refuses the insert while the passkey is saved.
    break_passkey_inserts(db_url)
    proc = phone(portal, relay_url, try_again(page), tmp_path / "second-phone")
    assert problem(page) == expected(Failure.REGISTRATION_FAILED, REGISTER)
    finish(proc)
    assert len(portal.store.passkeys_for(portal.store.get_user("max").id)) == 1


def test_no_adapter_then_no_phone_before_the_deadline(make_portal, page):
    portal = make_portal(timeout=2.0)
    add_user(portal, "ned")
    seed_passkey(portal, "ned")
    sign_in_with_password(page, portal, "ned")
    # Another program holds the BLE medium: no QR code is shown for a flow that cannot work.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as radio:
        radio.bind(("127.0.0.1", portal.ble_port))
        page.get_by_role("button", name="Create a passkey").click()
        assert problem(page) == expected(Failure.NO_BLE_ADAPTER, REGISTER)
        assert page.locator("#qr").count() == 0
    page.goto(portal.url + "/settings/security")
    page.get_by_role("button", name="Create a passkey").click()
    read_qr(page)  # shown, and nobody scans it
    assert problem(page) == expected(Failure.TIMEOUT, REGISTER)
    page.get_by_role("button", name="Sign out").click()
    start_passkey_login(page, portal, "ned")
    assert problem(page) == expected(Failure.TIMEOUT, SIGN_IN)


def test_relay_down_is_passkey_unavailable(make_portal, page):
    portal = make_portal(relay=f"ws://127.0.0.1:{free_tcp_port()}")
    add_user(portal, "ola")
    seed_passkey(portal, "ola")
    sign_in_with_password(page, portal, "ola")
    page.get_by_role("button", name="Create a passkey").click()
    assert problem(page) == expected(Failure.RELAY_UNREACHABLE, REGISTER)
    page.goto(portal.url + "/home")
    page.get_by_role("button", name="Sign out").click()
    start_passkey_login(page, portal, "ola")
    assert problem(page) == expected(Failure.RELAY_UNREACHABLE, SIGN_IN)
    # The way out the article names: the password.
    page.get_by_role("link", name="Use your password instead").click()
    assert page.get_by_label("Password").is_visible()


def test_idle_or_modified_sessions_expire(make_portal, page):
    portal = make_portal(idle_timeout=300.0)
    add_user(portal, "pat")
    title, message = expected(Failure.SESSION_EXPIRED, SIGN_IN)

    page.goto(portal.url + "/signin")
    page.get_by_label("Username").fill("pat")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill("whatever it is")
    portal.clock.advance(301)  # idle longer than the 5-minute timeout
    page.get_by_role("button", name="Continue").click()
    assert problem(page) == (title, message)

    # A modified form: the CSRF token no longer matches the session.
    page.goto(portal.url + "/signin")
    page.locator("input[name=csrf]").evaluate("input => input.value = 'forged'")
    page.get_by_label("Username").fill("pat")
    page.get_by_role("button", name="Continue").click()
    assert problem(page) == (title, message)

    # A modified URL: a ceremony id that is not this session's.
    page.goto(portal.url + "/flows/not-a-real-flow")
    assert problem(page) == (title, message)
    page.get_by_role("link", name="Start again").click()
    assert page.get_by_label("Username").is_visible()
