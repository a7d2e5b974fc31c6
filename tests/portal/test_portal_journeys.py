"""The article's journeys in headless Chromium, with the real `hybrid phone` scanning the page.

Password + 2FA enrolment → "Create a passkey" with the phone (QR read from a screenshot) → sign
out → "Log in with passkey" with the phone → Settings → Security tab → "Remove". Run against
SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest

from .journeys import (
    STATUS_RECORDER,
    add_user_with_command,
    answer,
    create_passkey_with_phone,
    finish,
    phone,
    read_qr,
    sign_in_with_password,
    wait_for_text,
)
from .portal_support import SCREENSHOTS


def test_phone_passkey_journey(make_portal, db_url, relay_url, page, tmp_path):
    portal = make_portal(db_url)
    add_user_with_command(db_url, "alice", tmp_path)
    page.add_init_script(STATUS_RECORDER)

    sign_in_with_password(page, portal, "alice")
    # First sign-in: the set-up prompt, with the article's two choices.
    assert page.url.endswith("/setup")
    assert page.get_by_role("button", name="I'll do this later").is_visible()

    phone_dir = tmp_path / "phone"
    create_passkey_with_phone(page, portal, relay_url, phone_dir)
    row = page.locator("table.passkeys tbody tr")
    assert row.count() == 1
    assert "Phone via QR" in row.first.inner_text()
    assert "Never" in row.first.inner_text()  # last used: not yet

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin")

    # With a passkey, "Continue" leads to the passkey page by default.
    page.get_by_label("Username").fill("alice")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/signin/passkey")
    page.get_by_role("button", name="Log in with passkey").click()
    url = read_qr(page, save_as="signin-qr.png")
    assert page.get_by_role("status").inner_text() == "Scan this code with your phone"
    # This phone asks its user; the page follows it live until someone answers there.
    proc = phone(portal, relay_url, url, phone_dir, approve=False)
    wait_for_text(page, "#status", "Approve on your phone")
    shown = page.evaluate("window.__statuses")
    statuses = [s for n, s in enumerate(shown) if n == 0 or shown[n - 1] != s]
    assert statuses[:3] == [
        "Scan this code with your phone",
        "Phone found",
        "Approve on your phone",
    ], statuses
    answer(proc, "y")
    page.wait_for_url("**/home")
    assert finish(proc)[0] == 0
    assert page.get_by_role("heading", name="Welcome, alice").is_visible()

    page.get_by_role("link", name="Settings").click()
    page.get_by_role("tab", name="Security").click()
    page.wait_for_url("**/settings/security")
    row = page.locator("table.passkeys tbody tr")
    assert row.count() == 1 and "Never" not in row.first.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "security-tab.png"), full_page=True)

    page.get_by_role("button", name="Remove").click()
    page.wait_for_url("**/settings/security")
    assert "No passkeys yet." in page.locator("table.passkeys").inner_text()
    actions = [(e.action, e.subject) for e in portal.store.audit_entries()]
    assert ("passkey added", "alice") in actions and ("passkey removed", "alice") in actions


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
