"""Real HAProxy in TCP mode sending PROXY protocol v1 (send-proxy) and v2 (send-proxy-v2).

The relay trusts 127.0.0.1 with --proxy-protocol; tunnels opened and joined through HAProxy must
work, with the header HAProxy writes (v2 with its TLVs) parsed and none refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import trio
from relay_helpers import new_tunnel_id, open_ws, raw_http, routing_id_of, running_relay


def _haproxy() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail("haproxy is missing: .ci/apt.d/relay.txt should install it")
        pytest.skip("haproxy is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
async def test_tunnels_through_haproxy_sending_proxy_headers(tmp_path, send_proxy):
    binary = _haproxy()
    async with running_relay(trusted_proxies=("127.0.0.1",), proxy_protocol=True) as relay:
        port = _free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n"
            "    timeout server 30s\n"
            f"frontend relay\n    bind 127.0.0.1:{port}\n    default_backend nodes\n"
            f"backend nodes\n    server node 127.0.0.1:{relay.port} {send_proxy}\n"
        )
        process = await trio.lowlevel.open_process(
            [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            with trio.fail_after(10):
                while True:
                    try:
                        health = await raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        break
                    except OSError:
                        await trio.sleep(0.05)
            assert health.status == 200
            base = f"ws://127.0.0.1:{port}"
            for _ in range(3):
                tunnel_id = new_tunnel_id()
                async with open_ws(f"{base}/cable/new/{tunnel_id}") as authenticator:
                    routing_id = routing_id_of(authenticator)
                    async with open_ws(f"{base}/cable/connect/{routing_id}/{tunnel_id}") as desk:
                        await desk.send_message(b"through haproxy")
                        assert await authenticator.get_message() == b"through haproxy"
            assert relay.stats.pairings == 3
            assert not relay.stats.refusals, relay.stats.refusals
        finally:
            process.kill()
            await process.wait()
