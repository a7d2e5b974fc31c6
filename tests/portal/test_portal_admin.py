"""Administration: users list → user → Security tab; "Remove passkeys" only for administrators
and super users; every add and remove in the audit log; the set-up prompt's snooze rules."""

from __future__ import annotations

from .journeys import (
    PASSWORD,
    VirtualAuthenticator,
    add_user,
    create_passkey_on_this_device,
    sign_in_over_http,
    sign_in_with_password,
    sign_out_over_http,
)


def test_admin_removes_a_users_passkeys_and_others_cannot(make_portal, db_url, browser, page):
    portal = make_portal(db_url)
    for name, role in (("ivy", "user"), ("root", "superuser"), ("sam", "support")):
        add_user(portal, name, role)
    VirtualAuthenticator(page)
    sign_in_with_password(page, portal, "ivy")
    create_passkey_on_this_device(page)
    # An ordinary user has no way into the administration pages.
    page.goto(portal.url + "/admin/users")
    assert page.get_by_role("heading", name="Not allowed").is_visible()
    csrf = page.locator("body").get_attribute("data-csrf")
    forged = page.request.post(portal.url + "/admin/users/ivy/security/remove", form={"csrf": csrf})
    assert forged.status == 403
    assert len(portal.store.passkeys_for(portal.store.get_user("ivy").id)) == 1

    def as_user(name: str):
        context = browser.new_context()
        other = context.new_page()
        sign_in_with_password(other, portal, name)
        other.goto(portal.url + "/home")
        other.get_by_role("link", name="Users").click()
        other.get_by_role("link", name="ivy").click()
        other.get_by_role("tab", name="Security").click()
        other.wait_for_url("**/admin/users/ivy/security")
        return context, other

    # Support staff see the passkeys, but the button is disabled (and the server agrees).
    context, support = as_user("sam")
    assert "This device" in support.locator("table.passkeys").inner_text()
    assert support.get_by_role("button", name="Remove passkeys").is_disabled()
    context.close()

    context, admin = as_user("root")
    remove = admin.get_by_role("button", name="Remove passkeys")
    assert remove.is_enabled()
    remove.click()
    admin.wait_for_url("**/admin/users/ivy/security")
    assert "Removed 1 passkey." in admin.inner_text("main")
    assert portal.store.passkeys_for(portal.store.get_user("ivy").id) == []
    admin.get_by_role("link", name="Audit log").click()
    log = admin.locator("table").inner_text()
    assert "passkey added" in log and "passkey removed" in log and "root" in log
    # Administrators add users in the portal too.
    admin.get_by_role("link", name="Users").click()
    admin.get_by_label("Username").fill("newbie")
    admin.get_by_label("Password").fill(PASSWORD)
    admin.get_by_role("button", name="Add user").click()
    assert "Added newbie." in admin.inner_text("main")
    assert portal.store.get_user("newbie").role == "user"
    context.close()


def test_later_is_not_asked_again_for_seven_days(make_portal, page):
    portal = make_portal()
    add_user(portal, "jo")
    sign_in_with_password(page, portal, "jo")
    page.get_by_role("button", name="I'll do this later").click()
    page.wait_for_url("**/home")
    for days in (1.0, 5.9):  # 1 day, then 6.9 days after "later"
        portal.clock.advance(days * 86400)
        page.get_by_role("button", name="Sign out").click()
        sign_in_with_password(page, portal, "jo")
        assert page.url.endswith("/home"), page.url
    portal.clock.advance(0.2 * 86400)  # now past seven days since "later"
    page.get_by_role("button", name="Sign out").click()
    sign_in_with_password(page, portal, "jo")
    assert page.url.endswith("/setup")
    assert page.get_by_role("button", name="Create a passkey").is_visible()


def test_later_is_asked_again_after_ten_more_sign_ins(make_portal, page):
    portal = make_portal()
    add_user(portal, "kim")
    sign_in_with_password(page, portal, "kim")
    page.get_by_role("button", name="I'll do this later").click()
    # Sign-ins 1 to 9 after "later" post the same forms without rendering them (faster).
    for n in range(1, 10):
        sign_out_over_http(page.request, portal)
        assert sign_in_over_http(page.request, portal, "kim") == "/home", f"prompted after {n}"
    page.goto(portal.url + "/home")
    page.get_by_role("button", name="Sign out").click()
    sign_in_with_password(page, portal, "kim")
    assert page.url.endswith("/setup"), "not prompted after ten more sign-ins"
    assert page.get_by_role("button", name="I'll do this later").is_visible()
