"""The portal's own security over real HTTP: no user enumeration, attempt limits, single-use
codes and challenges bound to their session, CSRF, cookie flags, the command line."""

from __future__ import annotations

import subprocess

from hybrid.portal.app import TOO_MANY, WRONG_CODE, WRONG_PASSWORD
from hybrid.portal.security import totp_code

from .journeys import PASSWORD, add_user, csrf_of, fresh_totp_step, sign_in_over_http
from .portal_support import BIN


def _start(request, portal, name: str) -> tuple[str, str]:
    csrf = csrf_of(request.get(portal.url + "/signin").text())
    response = request.post(portal.url + "/signin", form={"csrf": csrf, "username": name})
    return csrf, response.url.removeprefix(portal.url)


def _password(request, portal, csrf: str, password: str):
    return request.post(portal.url + "/signin/password", form={"csrf": csrf, "password": password})


def test_unknown_names_look_like_accounts_without_passkeys(make_portal, browser):
    portal = make_portal()
    add_user(portal, "quinn")
    pages = []
    for name in ("quinn", "nobody-here"):
        request = browser.new_context().request
        csrf, path = _start(request, portal, name)
        assert path == "/signin/password"
        response = _password(request, portal, csrf, "wrong password!")
        assert response.status == 400
        pages.append(response.text().replace(name, "NAME").replace(csrf, "CSRF"))
    assert WRONG_PASSWORD in pages[0]
    assert pages[0] == pages[1]


def test_password_attempts_are_limited_per_account_and_per_address(make_portal, browser):
    portal = make_portal()
    add_user(portal, "rae")
    request = browser.new_context().request
    csrf, _ = _start(request, portal, "rae")
    for _ in range(5):
        assert _password(request, portal, csrf, "not it at all").status == 400
    blocked = _password(request, portal, csrf, PASSWORD)  # right, but too late
    assert blocked.status == 429 and TOO_MANY in blocked.text()
    portal.clock.advance(15 * 60 + 1)  # the failures age out (and the idle session with them)
    csrf, _ = _start(request, portal, "rae")
    assert _password(request, portal, csrf, PASSWORD).url.endswith("/signin/enrol")

    # Twenty failures from one address, spread over many names, block the address.
    add_user(portal, "sky")
    for n in range(20):
        csrf, _ = _start(request, portal, f"guess{n}")
        _password(request, portal, csrf, "nope nope")
    csrf, _ = _start(request, portal, "sky")
    assert _password(request, portal, csrf, PASSWORD).status == 429


def test_codes_are_single_use_and_limited(make_portal, browser):
    portal = make_portal()
    add_user(portal, "tom")
    request = browser.new_context().request
    # Enrol at the first sign-in.
    csrf, _ = _start(request, portal, "tom")
    _password(request, portal, csrf, PASSWORD)
    secret = portal.store.get_user("tom").totp_secret
    assert secret is None  # not stored until its first code works
    enrol = request.get(portal.url + "/signin/enrol").text()
    assert "otpauth://totp/" in enrol
    secret = enrol.split('id="totp-secret" aria-label="Secret key">')[1].split("<")[0]
    fresh_totp_step(portal)
    code = totp_code(secret, portal.clock())
    done = request.post(portal.url + "/signin/enrol", form={"csrf": csrf, "code": code})
    assert done.url.endswith("/setup")
    # The same code again, in the same 30 s, is refused.
    fresh = browser.new_context().request
    csrf, _ = _start(fresh, portal, "tom")
    _password(fresh, portal, csrf, PASSWORD)
    again = fresh.post(portal.url + "/signin/code", form={"csrf": csrf, "code": code})
    assert again.status == 400 and WRONG_CODE in again.text()
    for _ in range(4):
        fresh.post(portal.url + "/signin/code", form={"csrf": csrf, "code": "000000"})
    fresh_totp_step(portal)
    good = totp_code(secret, portal.clock())
    limited = fresh.post(portal.url + "/signin/code", form={"csrf": csrf, "code": good})
    assert limited.status == 429
    # A code two steps old has expired.
    portal.clock.advance(15 * 60 + 1)
    later = browser.new_context().request
    csrf, _ = _start(later, portal, "tom")
    _password(later, portal, csrf, PASSWORD)
    old = totp_code(secret, portal.clock() - 90)
    expired = later.post(portal.url + "/signin/code", form={"csrf": csrf, "code": old})
    assert expired.status == 400 and WRONG_CODE in expired.text()


def test_challenges_are_single_use_bound_to_the_session_and_expire(make_portal, browser):
    portal = make_portal()
    add_user(portal, "uma")
    request = browser.new_context().request
    assert sign_in_over_http(request, portal, "uma") == "/setup"
    csrf = csrf_of(request.get(portal.url + "/home").text())
    headers = {"X-CSRF-Token": csrf}
    begin = request.post(portal.url + "/webauthn/register/begin", headers=headers, data={})
    assert begin.ok and "challenge" in begin.json()["publicKey"]

    # Another browser session cannot finish this ceremony.
    other = browser.new_context().request
    other_csrf = csrf_of(other.get(portal.url + "/signin").text())
    stolen = other.post(portal.url + "/webauthn/register/complete",
                        headers={"X-CSRF-Token": other_csrf}, data={})  # fmt: skip
    assert stolen.status in (400, 401)

    bogus = {"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {}}
    first = request.post(portal.url + "/webauthn/register/complete", headers=headers, data=bogus)
    assert first.status == 400 and first.json()["error"]["title"] == "Verification failed"
    second = request.post(portal.url + "/webauthn/register/complete", headers=headers, data=bogus)
    assert second.json()["error"]["title"] == "Session Expired"  # single-use

    request.post(portal.url + "/webauthn/register/begin", headers=headers, data={})
    portal.clock.advance(121)
    late = request.post(portal.url + "/webauthn/register/complete", headers=headers, data=bogus)
    assert late.json()["error"]["title"] == "Session Expired"

    # Without the CSRF header, a POST is refused whatever it carries.
    refused = request.post(portal.url + "/webauthn/register/begin", data={})
    assert refused.status == 401 and "Session Expired" in refused.text()


def test_session_cookie_flags(make_portal, browser):
    portal = make_portal()
    response = browser.new_context().request.get(portal.url + "/signin")
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on localhost; TLS deployments get Secure
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_command_line_usage_errors_exit_2(tmp_path):
    for argv in (["--port", "70000"], ["--session-timeout", "20"], ["--timeout", "-1"]):
        done = subprocess.run([str(BIN / "hybrid"), "portal", *argv], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2, (argv, done.stderr)
        assert "Traceback" not in done.stderr
    missing = subprocess.run(
        [str(BIN / "hybrid"), "portal", "user", "add", "vic", "--password-file",
         str(tmp_path / "absent"), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "cannot read the password file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_demo_command_prints_the_url_and_how_to_approve(tmp_path):
    import os
    import time
    import urllib.request

    from .portal_support import free_udp_port

    process = subprocess.Popen(
        [str(BIN / "hybrid"), "portal", "--demo", "--port", "0", "--data-dir", str(tmp_path),
         "--ble-port", str(free_udp_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(lines) < 5:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert lines and lines[0].startswith("portal: http://localhost:"), text
        assert "sign in as alice with password" in text
        assert "hybrid phone --approve --relay ws://127.0.0.1:" in text
        url = lines[0].split()[1]
        with urllib.request.urlopen(url + "signin", timeout=10) as page:
            assert page.status == 200 and b"Username" in page.read()
    finally:
        process.terminate()
        process.wait(10)


def test_under_tls_the_cookie_is_secure(make_portal, tmp_path):
    import datetime
    import ssl
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    portal = make_portal(tls_cert=str(cert_file), tls_key=str(key_file))
    assert portal.url.startswith("https://localhost:")
    context = ssl.create_default_context(cafile=str(cert_file))
    with urllib.request.urlopen(portal.url + "/signin", context=context, timeout=10) as page:
        cookie = page.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_start_up_failures_are_one_line_errors(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [str(BIN / "hybrid"), "portal", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert busy.returncode == 1 and "Traceback" not in busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    down = subprocess.run(
        [str(BIN / "hybrid"), "portal", "--port", "0", "--db",
         "postgresql://someone:s3cret@127.0.0.1:1/portal"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "cannot connect to PostgreSQL at postgresql://127.0.0.1:1/portal" in down.stderr
    assert "s3cret" not in down.stderr
