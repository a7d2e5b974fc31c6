"""The browser's own WebAuthn path ("Use this device instead") with Chromium's virtual
authenticator, the five-passkey limit, and the administrators' Security tab."""

from __future__ import annotations

from hybrid.catalogue import Failure, Operation, catalogue_entry

from .journeys import (
    VirtualAuthenticator,
    add_user,
    create_passkey_on_this_device,
    problem,
    sign_in_with_password,
)


def expected(failure: Failure, op: Operation = Operation.REGISTER) -> tuple[str, str]:
    entry = catalogue_entry(failure, op)
    return entry.title, entry.message


def test_this_device_passkey_signs_in_and_the_sixth_is_refused(make_portal, db_url, page):
    portal = make_portal(db_url)
    add_user(portal, "dana")
    authenticator = VirtualAuthenticator(page)
    sign_in_with_password(page, portal, "dana")
    page.get_by_role("button", name="I'll do this later").click()
    page.wait_for_url("**/home")

    page.goto(portal.url + "/settings/security")
    for n in range(5):
        if n:
            authenticator.replace()
        create_passkey_on_this_device(page)
        assert page.locator("table.passkeys tbody tr").count() == n + 1
    assert "This device" in page.locator("table.passkeys").inner_text()
    assert len(authenticator.credentials()) == 1

    authenticator.replace()
    page.get_by_role("button", name="Create a passkey").click()
    assert problem(page) == expected(Failure.LIMIT_REACHED)
    assert len(portal.store.passkeys_for(portal.store.get_user("dana").id)) == 5

    # Sign out, then sign in with the passkey on this device (the last one it holds).
    authenticator.replace()
    page.goto(portal.url + "/settings/security")
    page.get_by_role("button", name="Remove").first.click()
    create_passkey_on_this_device(page)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Username").fill("dana")
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Log in with passkey").click()
    page.get_by_role("button", name="Use this device instead").click()
    page.wait_for_url("**/home")
    assert page.get_by_role("heading", name="Welcome, dana").is_visible()


def test_this_device_twice_is_already_registered(make_portal, page):
    portal = make_portal()
    add_user(portal, "erin")
    VirtualAuthenticator(page)
    sign_in_with_password(page, portal, "erin")
    create_passkey_on_this_device(page)
    page.get_by_role("button", name="Create a passkey").click()
    page.get_by_role("button", name="Use this device instead").click()
    assert problem(page) == expected(Failure.EXCLUDED)


def test_browser_without_webauthn_is_not_supported(make_portal, page):
    portal = make_portal()
    add_user(portal, "finn")
    page.add_init_script("delete window.PublicKeyCredential;")
    sign_in_with_password(page, portal, "finn")
    page.get_by_role("button", name="Create a passkey").click()
    page.get_by_role("button", name="Use this device instead").click()
    assert problem(page) == expected(Failure.NOT_SUPPORTED)


def test_tampered_assertion_is_verification_failed(make_portal, page):
    portal = make_portal()
    add_user(portal, "gus")
    VirtualAuthenticator(page)
    sign_in_with_password(page, portal, "gus")
    create_passkey_on_this_device(page)
    page.get_by_role("button", name="Sign out").click()
    # Something between the authenticator and the server flips one bit of the signature.
    page.add_init_script(
        """
        const realGet = navigator.credentials.get.bind(navigator.credentials);
        navigator.credentials.get = async (options) => {
          const credential = await realGet(options);
          const signature = new Uint8Array(credential.response.signature);
          signature[signature.length - 1] ^= 1;
          Object.defineProperty(credential.response, "signature", {value: signature.buffer});
          return credential;
        };
        """
    )
    page.get_by_label("Username").fill("gus")
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Log in with passkey").click()
    page.get_by_role("button", name="Use this device instead").click()
    assert problem(page) == expected(Failure.VERIFICATION_FAILED, Operation.SIGN_IN)
    assert "/home" not in page.url


def test_unverified_user_is_refused(make_portal, page):
    portal = make_portal()
    add_user(portal, "hal")
    VirtualAuthenticator(page, user_verified=False)
    sign_in_with_password(page, portal, "hal")
    page.get_by_role("button", name="Create a passkey").click()
    page.get_by_role("button", name="Use this device instead").click()
    title, message = problem(page)
    # Chromium itself refuses to create a UV-required credential without UV (NotAllowedError),
    # or the portal refuses the response without the UV flag: either is a refusal, never saved.
    assert (title, message) in (
        expected(Failure.USER_NOT_VERIFIED),
        expected(Failure.USER_DECLINED),
    )
    assert portal.store.passkeys_for(portal.store.get_user("hal").id) == []
