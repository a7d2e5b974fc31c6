"""Operations: /healthz, /metrics, TLS, the command line, JSON logs and graceful shutdown."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from relay_helpers import (
    connect_url,
    expect_close,
    expect_rejected,
    new_tunnel_id,
    new_url,
    open_tunnel,
    open_ws,
    raw_http,
    routing_id_of,
    running_relay,
    upgrade_request,
    wait_until,
)

from relay.__main__ import config_from, env_name


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_healthz_answers_plain_get_and_head():
    async with running_relay() as relay:
        response = await raw_http(relay.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 200
        assert json.loads(response.body)["status"] == "ok"
        head = await raw_http(relay.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 2)
        assert head.status == 200
        post = await raw_http(relay.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert post.status == 405


async def test_metrics_agree_with_what_happened():
    async with running_relay() as relay:
        for _ in range(2):
            async with open_tunnel(relay) as tunnel:
                await tunnel.initiator.send_message(b"12345")
                assert await tunnel.authenticator.get_message() == b"12345"
                await tunnel.authenticator.send_message(b"abc")
                await tunnel.authenticator.send_message(b"defg")
                await tunnel.initiator.get_message()
                await tunnel.initiator.get_message()
        await expect_rejected(connect_url(relay, "000000", new_tunnel_id()))
        await raw_http(relay.port, upgrade_request("/cable/new/xyz"))
        async with open_ws(new_url(relay, new_tunnel_id())):
            await wait_until(lambda: relay.waiting_tunnels() == 1)
            response = await raw_http(relay.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        values = metric_values(response.body.decode())
        assert values[("hybrid_relay_tunnels_waiting", ())] == 1
        assert values[("hybrid_relay_tunnels_paired", ())] == 0
        assert values[("hybrid_relay_pairings_total", ())] == 2
        assert values[("hybrid_relay_tunnels_opened_total", ())] == 3
        assert values[("hybrid_relay_refusals_total", (("reason", "unknown_tunnel"),))] == 1
        assert values[("hybrid_relay_refusals_total", (("reason", "malformed"),))] == 1
        to_init = (("direction", "to_initiator"),)
        to_auth = (("direction", "to_authenticator"),)
        assert values[("hybrid_relay_messages_forwarded_total", to_init)] == 4
        assert values[("hybrid_relay_messages_forwarded_total", to_auth)] == 2
        assert values[("hybrid_relay_bytes_forwarded_total", to_init)] == 14
        assert values[("hybrid_relay_bytes_forwarded_total", to_auth)] == 10
        assert values[("hybrid_relay_pairing_latency_seconds_count", ())] == 2
        assert values[("hybrid_relay_tunnel_closes_total", (("reason", "initiator_closed"),))] == 2


async def test_two_relays_in_one_process_keep_separate_metrics():
    async with running_relay() as first, running_relay() as second:
        async with open_tunnel(first):
            pass
        assert "hybrid_relay_pairings_total 1.0" in first.metrics_text()
        assert "hybrid_relay_pairings_total 0.0" in second.metrics_text()


async def test_node_prefix_fixes_the_first_routing_id_byte():
    async with running_relay(node_prefix=b"\x0a") as relay:
        seen = set()
        for _ in range(20):
            async with open_ws(new_url(relay, new_tunnel_id())) as ws:
                rid = routing_id_of(ws)
                assert rid.startswith("0A")
                seen.add(rid)
        assert len(seen) > 15
        # A connect naming another node's prefix is not ours.
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
            other = "0B" + rid[2:]
            assert (await expect_rejected(connect_url(relay, other, tid))).status_code == 404


def _self_signed(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = ssl.create_default_context(cafile=str(cert_path))
    return cert_path, key_path, client


async def test_tls_serves_wss_with_the_given_certificate(tmp_path):
    cert, key, client = _self_signed(tmp_path)
    async with running_relay(tls_cert=str(cert), tls_key=str(key), handshake_timeout=1) as relay:
        assert relay.base_url.startswith("wss://127.0.0.1:")
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid), ssl_context=client) as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(connect_url(relay, rid, tid), ssl_context=client) as initiator:
                await initiator.send_message(b"over tls")
                assert await authenticator.get_message() == b"over tls"
        # A plaintext client gets nowhere and does not disturb the relay.
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(upgrade_request(f"/cable/new/{new_tunnel_id()}"))
            with trio.fail_after(3):
                try:
                    data = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    data = b""
            assert b"101" not in data
        await wait_until(lambda: relay.open_connections() == 0)


# -- the command line -----------------------------------------------------------------------


def test_every_option_has_an_environment_variable():
    config, level = config_from(
        ["--wait-timeout", "5"],
        {
            env_name("--port"): "0",
            env_name("--node-prefix"): "0a",
            env_name("--wait-timeout"): "99",
            env_name("--max-messages"): "7",
            env_name("--allowed-origins"): "https://a, https://b",
            env_name("--log-level"): "warning",
        },
    )
    assert env_name("--max-connections-per-address") == "HYBRID_RELAY_MAX_CONNECTIONS_PER_ADDRESS"
    assert config.node_prefix == b"\x0a"
    assert config.wait_timeout == 5  # the flag wins over the environment
    assert config.max_messages == 7
    assert config.allowed_origins == ("https://a", "https://b")
    assert level == "warning"


@pytest.mark.parametrize(
    "argv",
    [
        ["--node-prefix", "0A0B0C"],
        ["--node-prefix", "0A0B"],
        ["--node-prefix", "xyz"],
        ["--max-tunnels", "0"],
    ],
)
def test_bad_options_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        config_from(argv, {})
    assert info.value.code == 2
    assert "hybrid-relay: error:" in capsys.readouterr().err


def test_help_lists_every_environment_variable():
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--help"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    for variable in ("HYBRID_RELAY_HOST", "HYBRID_RELAY_PORT", "HYBRID_RELAY_TLS_CERT"):
        assert variable in result.stdout


class RelayProcess:
    """``python -m relay`` in a subprocess; stderr is collected as JSON log lines."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict] = []
        self.port = 0
        self._buffer = b""

    async def read_until(self, event: str, timeout: float = 10) -> dict:
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if line["event"] == event:
                        return line
                chunk = await self.process.stderr.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"relay exited before {event!r}: {self.lines}")
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                self.lines.extend(json.loads(line) for line in complete if line)

    async def wait_exit(self, timeout: float = 10) -> int:
        with trio.fail_after(timeout):
            while chunk := await self.process.stderr.receive_some(65536):
                self._buffer += chunk
            self.lines.extend(json.loads(x) for x in self._buffer.split(b"\n") if x)
            return await self.process.wait()

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def start_relay_process(*args: str, env: dict[str, str] | None = None) -> RelayProcess:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay", *args],
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    relay = RelayProcess(process)
    listening = await relay.read_until("listening")
    relay.port = listening["port"]
    return relay


async def test_sigterm_lets_paired_tunnels_finish_and_stops_accepting():
    proc = await start_relay_process(
        "--port", "0", "--drain-delay", "0", env={"HYBRID_RELAY_SHUTDOWN_GRACE": "10"}
    )
    try:
        url_base = proc.base_url
        tid = new_tunnel_id()
        async with open_ws(f"{url_base}/cable/new/{tid}") as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(f"{url_base}/cable/connect/{rid}/{tid}") as initiator:
                async with open_ws(f"{url_base}/cable/new/{new_tunnel_id()}") as waiting:
                    proc.process.send_signal(signal.SIGTERM)
                    await proc.read_until("shutdown_started")
                    # The unpaired tunnel can never pair now: it is closed at once.
                    assert await expect_close(waiting) == 1001
                # New connections are refused: the listener is closed.
                with pytest.raises(OSError):
                    await trio.open_tcp_stream("127.0.0.1", proc.port)
                # The paired tunnel keeps working during the grace period.
                await initiator.send_message(b"still served")
                assert await authenticator.get_message() == b"still served"
                await authenticator.send_message(b"reply")
                assert await initiator.get_message() == b"reply"
            # Once it ends, the process exits without waiting for the rest of the grace.
        started = trio.current_time()
        assert await proc.wait_exit() == 0
        assert trio.current_time() - started < 5
    finally:
        if proc.process.returncode is None:
            proc.process.kill()


async def test_grace_period_expiry_closes_live_tunnels_with_1001_and_logs_are_clean():
    proc = await start_relay_process("--port", "0", "--shutdown-grace", "0.3", "--drain-delay", "0")
    try:
        tid = new_tunnel_id()
        secret = b"PAYLOAD-THAT-MUST-NOT-BE-LOGGED"
        async with open_ws(f"{proc.base_url}/cable/new/{tid}") as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(f"{proc.base_url}/cable/connect/{rid}/{tid}") as initiator:
                await initiator.send_message(secret)
                assert await authenticator.get_message() == secret
                proc.process.send_signal(signal.SIGINT)
                assert await expect_close(initiator) == 1001
                assert await expect_close(authenticator) == 1001
        assert await proc.wait_exit() == 0
    finally:
        if proc.process.returncode is None:
            proc.process.kill()
    events = [line["event"] for line in proc.lines]
    for expected in ("listening", "tunnel_opened", "tunnel_paired", "tunnel_closed"):
        assert expected in events
    assert events[-1] == "shutdown_complete"
    text = json.dumps(proc.lines)
    assert tid not in text and tid.lower() not in text
    assert tid[:6] in text
    assert secret.decode() not in text and secret.hex() not in text
    closed = next(line for line in proc.lines if line["event"] == "tunnel_closed")
    assert closed["reason"] == "shutdown"
    assert closed["messages_to_authenticator"] == 1


async def test_environment_configures_the_process():
    proc = await start_relay_process(
        env={
            "HYBRID_RELAY_PORT": "0",
            "HYBRID_RELAY_NODE_PREFIX": "7F",
            "HYBRID_RELAY_DRAIN_DELAY": "0",
        }
    )
    try:
        listening = next(line for line in proc.lines if line["event"] == "listening")
        assert listening["node_prefix"] == "7F"
        async with open_ws(f"{proc.base_url}/cable/new/{new_tunnel_id()}") as ws:
            assert routing_id_of(ws).startswith("7F")
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0
    finally:
        if proc.process.returncode is None:
            proc.process.kill()


def test_unusable_port_or_tls_files_fail_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "relay", "--port", port],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hybrid-relay: error:")
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--tls-cert", missing, "--tls-key", missing],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "missing.pem" in result.stderr.strip().splitlines()[-1]
