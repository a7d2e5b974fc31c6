"""``hybrid-relay lb-config``: configs that nginx and HAProxy accept, and clear usage errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def lb_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "lb-config", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/apt.d/relay.txt should have installed it")
        pytest.skip(f"{name} is not installed")
    return path


NODES = ["--node", "0A=127.0.0.1:9001", "--node", "0b=127.0.0.1:9002", "--node", "1C2D=[::1]:9003"]


def test_nginx_config_is_accepted_by_nginx(tmp_path):
    result = lb_config(
        "--format", "nginx", *NODES, "--listen", "127.0.0.1:8443", "--runtime-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # /cable/connect routed by prefix, case-insensitively; /cable/new to the pool.
    assert "~*^/cable/connect/0a node_0a;" in text
    assert "~*^/cable/connect/1c2d node_1c2d;" in text
    assert "server [::1]:9003" in text
    assert "proxy_read_timeout 200s;" in text
    assert "$request_uri" not in text and "$uri " not in text.split("map $uri")[0]
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    check = subprocess.run(
        [_binary("nginx"), "-t", "-p", str(tmp_path), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr


def test_haproxy_config_is_accepted_by_haproxy(tmp_path):
    config = tmp_path / "haproxy.cfg"
    result = lb_config("--format", "haproxy", *NODES, "--timeout", "400", "-o", str(config))
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    assert "use_backend node_0b if { path_reg -i ^/cable/connect/0B }" in text
    assert "http-check send meth GET uri /healthz" in text
    assert "timeout tunnel 400s" in text
    assert "%r" not in text and "%HU" not in text  # no request path in logs
    check = subprocess.run(
        [_binary("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "nginx"], "--node"),
        (["--format", "apache", "--node", "0A=h:1"], "invalid choice"),
        (["--format", "nginx", "--node", "0A"], "expected PREFIX=HOST:PORT"),
        (["--format", "nginx", "--node", "0G=h:1"], "2 or 4 hex digits"),
        (["--format", "nginx", "--node", "0A=h:99999"], "expected HOST:PORT"),
        (["--format", "nginx", "--node", "0A=h:1", "--node", "0A01=h:2"], "overlap"),
        (["--format", "nginx", "--node", "0A=h:1", "--node", "0B=h:1"], "two nodes at h:1"),
        (["--format", "nginx", "--node", "0A=h:1", "--listen", "nowhere"], "--listen"),
        (["--format", "nginx", "--node", "0A=h:1", "--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_bad_lb_config_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = lb_config(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--nodes", "0"], "--nodes must be 1..255"), (["--balancer", "caddy"], "invalid choice")],
)
def test_bad_cluster_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_cluster_keeps_its_workdir_and_stops_on_sigint(tmp_path):
    _binary("haproxy")
    import json
    import signal

    workdir = tmp_path / "cluster"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "cluster",
            "--nodes",
            "1",
            "--balancer",
            "haproxy",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--json",
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(process.stdout.readline())
        assert info["workdir"] == str(workdir)
        assert json.loads((workdir / "cluster.json").read_text()) == info
        assert (workdir / "haproxy.cfg").exists()
        assert info["balancer"]["url"].startswith("ws://127.0.0.1:")
        (node,) = info["nodes"]
        assert node["prefix"] == "01" and node["metrics"].endswith("/metrics")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    assert "stopped" in process.stderr.read()
    assert (workdir / "node-01.log").exists()  # kept: --workdir was given
    with pytest.raises(ProcessLookupError):
        os.kill(node["pid"], 0)
