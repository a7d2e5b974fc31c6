"""Operations: --version, build/process metrics, the admin listener, JSON logs for accept
failures, the file descriptor limit and the TOML --config file."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from relay_helpers import new_tunnel_id, open_ws, raw_http, running_relay
from test_relay_ops import start_relay_process

from relay import __main__ as cli
from relay.version import __version__


def run_relay(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=30, **kwargs
    )


def samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_version_prints_the_distribution_version() -> None:
    result = run_relay("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hybrid-relay {__version__}"
    assert __version__ != "0+unknown"


async def test_metrics_carry_build_info_and_process_metrics():
    async with running_relay() as relay:
        found = samples(relay.metrics_text())
    (build,) = found["hybrid_relay_build_info"]
    assert build.value == 1
    assert build.labels["version"] == __version__
    assert build.labels["python"] == ".".join(map(str, sys.version_info[:3]))
    assert build.labels["trio"] == trio.__version__
    for name in ("process_cpu_seconds_total", "process_open_fds", "process_max_fds"):
        assert found[name][0].value > 0, name


async def test_admin_address_serves_metrics_apart_from_the_public_port():
    proc = await start_relay_process("--port", "0", "--admin", "127.0.0.1:0", "--drain-delay", "2")
    try:
        listening = await proc.read_until("listening")
        admin = listening["admin_port"]
        assert admin and admin != proc.port
        async with open_ws(f"{proc.base_url}/cable/new/{new_tunnel_id()}"):
            metrics = await raw_http(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert metrics.status == 200
            found = samples(metrics.body.decode())
            assert found["hybrid_relay_tunnels_waiting"][0].value == 1
            public = await raw_http(proc.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert public.status == 404
            other = await raw_http(admin, b"GET /cable/new/x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert other.status == 404
            post = await raw_http(admin, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert post.status == 405
            for port in (admin, proc.port):
                health = await raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert health.status == 200
            # While the node drains, the admin listener still answers.
            proc.process.send_signal(signal.SIGTERM)
            await proc.read_until("drain_started")
            health = await raw_http(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert health.status == 503
            metrics = await raw_http(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert metrics.status == 200
        assert await proc.wait_exit() == 0
    finally:
        if proc.process.returncode is None:
            proc.process.kill()


def _limit_fds(soft: int, hard: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


# The relay keeps its sockets within a descriptor budget (relay/descriptors.py), so a real EMFILE
# needs a budget that overstates the limit: this relay believes it has 4096 descriptors.
_OVERSTATED_BUDGET = """
import sys
from relay import descriptors
from relay.__main__ import main
descriptors.DescriptorBudget.measure = classmethod(
    lambda cls: cls.for_limit(4096, descriptors.open_descriptors() + descriptors.STARTUP_EXTRA)
)
sys.exit(main(sys.argv[1:]))
"""


async def test_accept_failures_are_json_log_lines_and_the_relay_recovers():
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _OVERSTATED_BUDGET, "--port", "0", "--max-tunnels", "10"],
        stderr=subprocess.PIPE,
        preexec_fn=_limit_fds(48, 48),
    )
    buffer = b""
    lines: list[dict] = []

    async def read_until(event: str) -> dict:
        nonlocal buffer
        with trio.fail_after(15):
            while True:
                for line in lines:
                    if line["event"] == event:
                        return line
                chunk = await process.stderr.receive_some(65536)
                assert chunk, lines
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                # Every line is JSON: json.loads fails the test on anything else.
                lines.extend(json.loads(x) for x in complete if x)

    try:
        port = (await read_until("listening"))["port"]
        warning = next(line for line in lines if line["event"] == "fd_limit_low")
        assert warning["level"] == "warning" and warning["fd_limit"] == 48
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(60)]
        failed = await read_until("accept_failed")
        assert failed["errno"] == "EMFILE" and failed["level"] == "error"
        for stream in held:
            await stream.aclose()
        with trio.fail_after(10):
            while True:
                try:
                    health = await raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 2)
                except (OSError, trio.TooSlowError):
                    await trio.sleep(0.2)
                    continue
                if health.status == 200:
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()
    with trio.fail_after(5):
        while chunk := await process.stderr.receive_some(65536):
            buffer += chunk
    lines.extend(json.loads(x) for x in buffer.split(b"\n") if x)
    assert lines[-1]["event"] == "shutdown_complete"


async def test_soft_fd_limit_is_raised_to_the_hard_limit():
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay", "--port", "0", "--max-tunnels", "100"],
        stderr=subprocess.PIPE,
        preexec_fn=_limit_fds(256, 4096),
    )
    try:
        buffer = b""
        with trio.fail_after(15):
            while b'"listening"' not in buffer:
                buffer += await process.stderr.receive_some(65536)
        assert b"fd_limit_low" not in buffer
        # The buffer may end inside a later line; only whole lines are parsed.
        whole = buffer[: buffer.rindex(b"\n")].split(b"\n")
        port = next(r["port"] for r in map(json.loads, whole) if r["event"] == "listening")
        metrics = await raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert samples(metrics.body.decode())["process_max_fds"][0].value == 4096
    finally:
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()


# -- the TOML config file -------------------------------------------------------------------------


def test_config_file_keys_are_the_flag_names_and_flags_and_env_win(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(
        'port = 0\nnode-prefix = "7F"\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n'
        'ping-interval = 5\nproxy-protocol = true\nwait-timeout = 30\nlog-level = "debug"\n'
        'admin = "127.0.0.1:9100"\nrate-limit = 2.5\n'
    )
    config, level = cli.config_from(["--config", str(path)], {})
    assert config.node_prefix == b"\x7f"
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert config.ping_interval == 5 and config.proxy_protocol is True
    assert config.admin == "127.0.0.1:9100" and config.rate_limit == 2.5
    assert level == "debug"
    # Environment over the file, flags over both.
    config, level = cli.config_from(
        ["--config", str(path), "--wait-timeout", "7"],
        {"HYBRID_RELAY_NODE_PREFIX": "01", "HYBRID_RELAY_WAIT_TIMEOUT": "9"},
    )
    assert config.node_prefix == b"\x01" and config.wait_timeout == 7
    # The file can come from the environment too.
    config, _ = cli.config_from([], {"HYBRID_RELAY_CONFIG": str(path)})
    assert config.node_prefix == b"\x7f"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('max-tunnels = "many"\n', "key 'max-tunnels': expected a whole number, got 'many'"),
        ("wait-timeout = true\n", "key 'wait-timeout': expected a number of seconds"),
        ("colour = 1\n", "unknown key 'colour'"),
        ("port = [1, 2]\n", "key 'port': expected a string, number, boolean or list"),
        ("port = \n", "not valid TOML"),
        ('proxy-protocol = "perhaps"\n', "key 'proxy-protocol': expected true or false"),
        ('admin = "nowhere"\n', "key 'admin': expected HOST:PORT"),
        ("max-tunnels = 0\n", "max-tunnels must be positive"),
    ],
)
def test_bad_config_file_values_name_the_key_in_one_line(tmp_path, content, message):
    path = tmp_path / "relay.toml"
    path.write_text(content)
    result = run_relay("--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_usage_error(tmp_path):
    result = run_relay("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "cannot read it" in result.stderr


def test_new_flags_reach_the_config():
    config, _ = cli.config_from(
        [
            "--drain-delay",
            "1.5",
            "--ping-interval",
            "0",
            "--rate-limit",
            "3",
            "--rate-burst",
            "4",
            "--trusted-proxies",
            "127.0.0.1,::1",
            "--proxy-protocol",
            "--admin",
            "[::1]:9100",
        ],
        {},
    )
    assert (config.drain_delay, config.ping_interval) == (1.5, 0)
    assert (config.rate_limit, config.rate_burst) == (3, 4)
    assert config.trusted_proxies == ("127.0.0.1", "::1") and config.proxy_protocol is True
    assert config.admin_address() == ("::1", 9100)
