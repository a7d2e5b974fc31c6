"""`hybrid ble` and `hybrid domain` as a user runs them: real processes, exit codes, output."""

from __future__ import annotations

import json
import subprocess
import sys

from hybrid import keys
from hybrid.ble.eid import Eid, encrypt_advert

SECRET = bytes(range(16))
ROUTING_ID = b"\x0a\x1b\x2c"
NONCE = bytes(range(100, 110))


def hybrid(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "hybrid", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in result.stderr
    return result


def hybrid_many(calls: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Run several invocations at once: interpreter start-up dominates each one."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hybrid", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in calls
    ]
    results = []
    for args, proc in zip(calls, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err
        results.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return results


def _advert(domain_id: int = 0, secret: bytes = SECRET) -> str:
    eid = Eid.create(ROUTING_ID, domain_id, nonce=NONCE)
    return encrypt_advert(keys.eid_key(secret), eid.pack()).hex()


def test_ble_decrypt_json_describes_where_the_phone_waits() -> None:
    result = hybrid("ble", "decrypt", "--qr-secret", SECRET.hex(), _advert(266), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    tunnel_id = keys.tunnel_id(SECRET).hex().upper()
    assert info == {
        "tunnel_server_id": 266,
        "domain": "cable.wufkweyy3uaxb.com",
        "routing_id": "0A1B2C",
        "nonce": NONCE.hex(),
        "tunnel_id": tunnel_id,
        "connect_url": f"wss://cable.wufkweyy3uaxb.com/cable/connect/0A1B2C/{tunnel_id}",
    }


def test_ble_decrypt_human_output_accepts_upper_case_and_whitespace() -> None:
    result = hybrid(
        "ble", "decrypt", "--qr-secret", f"  {SECRET.hex().upper()} ", f" {_advert().upper()}\n"
    )
    assert result.returncode == 0, result.stderr
    assert "cable.ua5v.com" in result.stdout
    assert "0A1B2C" in result.stdout
    assert "/cable/connect/0A1B2C/" in result.stdout


def test_ble_decrypt_of_someone_elses_advert_exits_1_with_one_line() -> None:
    result = hybrid("ble", "decrypt", "--qr-secret", SECRET.hex(), _advert(secret=bytes(16)))
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not for this QR secret" in result.stderr


def test_ble_decrypt_bad_arguments_are_one_line_usage_errors() -> None:
    cases = [
        ("zz" * 16, _advert(), "not valid hex"),
        ("00" * 15, _advert(), "16 bytes"),
        ("00" * 17, _advert(), "16 bytes"),
        (SECRET.hex(), "xyz", "not valid hex"),
    ]
    calls = [
        ("ble", "decrypt", "--qr-secret", secret, advert, "--json") for secret, advert, _ in cases
    ]
    for (_, _, needle), result in zip(cases, hybrid_many(calls), strict=True):
        assert result.returncode == 2
        assert result.stdout == ""
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_ble_encrypt_then_decrypt() -> None:
    made = hybrid(
        "ble", "encrypt", "--qr-secret", SECRET.hex(), "--routing-id", "0a1b2c",
        "--domain-id", "1", "--nonce", NONCE.hex(),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == _advert(1)


def test_domain_prints_the_host_or_rejects_with_exit_code_2() -> None:
    good = {"0": "cable.ua5v.com", "1": "cable.auth.com", "266": "cable.wufkweyy3uaxb.com"}
    bad = ["2", "255", "65536", "-1", "abc"]
    results = hybrid_many([("domain", domain_id) for domain_id in [*good, *bad]])
    for domain_id, result in zip([*good, *bad], results, strict=True):
        if domain_id in good:
            assert (result.returncode, result.stdout) == (0, good[domain_id] + "\n"), domain_id
        else:
            assert result.returncode == 2, domain_id
            assert result.stdout == ""
            assert result.stderr.startswith("hybrid domain: error: tunnel-server domain id")
            assert len(result.stderr.strip().splitlines()) == 1


def test_help_explains_each_command() -> None:
    checks = [
        (("ble", "--help"), "decrypt"),
        (("ble", "decrypt", "--help"), "QR secret"),
        (("domain", "--help"), "2..255"),
    ]
    for (_, needle), result in zip(checks, hybrid_many([args for args, _ in checks]), strict=True):
        assert result.returncode == 0
        assert needle in result.stdout
