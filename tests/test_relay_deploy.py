"""The deployment files: real nginx, HAProxy and systemd accept them, the example configuration
loads, and the alert rules and dashboard only name metrics a relay really exports."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from relay_helpers import open_tunnel, raw_http, running_relay

from relay.__main__ import config_from

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/apt.d/relay.txt should install it")
        pytest.skip(f"{name} is not installed")
    return path


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_nginx_example_passes_nginx_t(tmp_path):
    cert, key = self_signed(tmp_path)
    text = (DEPLOY / "nginx" / "hybrid-relay.conf").read_text()
    text = text.replace("/etc/letsencrypt/live/relay.example.com/fullchain.pem", str(cert))
    text = text.replace("/etc/letsencrypt/live/relay.example.com/privkey.pem", str(key))
    text = text.replace("/var/log/nginx/relay-access.log", str(tmp_path / "access.log"))
    assert "$request " not in text and "$request_uri;" not in text.split("return 301")[0]
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    result = subprocess.run(
        [
            _binary("nginx"),
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(config),
            "-g",
            f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "proxy_read_timeout 200s" in text


def test_haproxy_example_passes_haproxy_c(tmp_path):
    cert, key = self_signed(tmp_path)
    pem = tmp_path / "relay.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    text = (DEPLOY / "haproxy" / "hybrid-relay.cfg").read_text()
    text = text.replace("/etc/haproxy/certs/relay.example.com.pem", str(pem))
    assert "%r" not in text
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    result = subprocess.run(
        [_binary("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/apt.d/relay.txt should install systemd")
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "systemd" / "hybrid-relay.service").read_text()
    for option in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=65536",
    ):
        assert re.search(rf"^{re.escape(option)}$", text, re.M), option
    # Verify with ExecStart pointing at this environment's hybrid-relay.
    relay = Path(sys.executable).with_name("hybrid-relay")
    unit = tmp_path / "hybrid-relay.service"
    unit.write_text(text.replace("/opt/hybrid-relay/bin/hybrid-relay", str(relay)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "hybrid-relay.service" in line and "Failed to" not in line.split(":", 1)[0]
    ]
    assert not [p for p in problems if "Unknown" in p or "Invalid" in p], problems
    # The stop timeout covers the drain delay and the grace period of the example config.
    config, _ = config_from(["--config", str(DEPLOY / "relay.toml")], {})
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    assert stop > config.drain_delay + config.shutdown_grace


def test_example_configuration_loads():
    config, level = config_from(["--config", str(DEPLOY / "relay.toml")], {})
    assert config.node_prefix == b"\x01"
    assert config.trusted_proxies and config.admin == "127.0.0.1:9100"
    assert level == "info"


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b((?:hybrid_relay|process)_[a-z_]+)", text))


async def test_alert_rules_and_dashboard_name_only_exported_metrics():
    async with running_relay() as relay:
        async with open_tunnel(relay):
            pass
        # A refusal, so that the labelled refusal counter has a sample.
        await raw_http(relay.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        exported = set(re.findall(r"^([a-z_]+)", relay.metrics_text(), re.M))
    rules = (DEPLOY / "prometheus" / "hybrid-relay-alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "hybrid-relay-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = _metric_names(rules) | _metric_names("\n".join(exprs))
    assert len(used) >= 10
    assert used <= exported, used - exported
    # Every rule has an expression, a summary and a severity.
    assert rules.count("- alert:") == rules.count("expr:") == rules.count("summary:")
    assert rules.count("- alert:") == rules.count("severity:") >= 6
