"""Draining on SIGTERM: /healthz turns 503, the listener stays open, then shutdown as before."""

from __future__ import annotations

import json
import signal

import pytest
import trio
from relay_helpers import (
    expect_close,
    new_tunnel_id,
    open_ws,
    raw_http,
    routing_id_of,
    upgrade_request,
)
from test_relay_ops import start_relay_process


async def test_sigterm_drains_then_closes_the_listener():
    proc = await start_relay_process(
        "--port", "0", "--drain-delay", "1.5", "--shutdown-grace", "10"
    )
    try:
        base = proc.base_url
        paired_id, waiting_id = new_tunnel_id(), new_tunnel_id()
        async with open_ws(f"{base}/cable/new/{paired_id}") as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(f"{base}/cable/connect/{rid}/{paired_id}") as initiator:
                async with open_ws(f"{base}/cable/new/{waiting_id}") as late_authenticator:
                    late_rid = routing_id_of(late_authenticator)
                    proc.process.send_signal(signal.SIGTERM)
                    drain = await proc.read_until("drain_started")
                    assert drain["drain_s"] == 1.5 and drain["tunnels"] == 2
                    started = trio.current_time()
                    # The listener is still open: /healthz answers, with 503.
                    health = await raw_http(proc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert health.status == 503
                    assert json.loads(health.body)["status"] == "draining"
                    # New tunnels go elsewhere ...
                    refused = await raw_http(
                        proc.port, upgrade_request(f"/cable/new/{new_tunnel_id()}")
                    )
                    assert refused.status == 503
                    # ... but a tunnel waiting here still pairs and forwards.
                    url = f"{base}/cable/connect/{late_rid}/{waiting_id}"
                    async with open_ws(url) as late_initiator:
                        await late_initiator.send_message(b"joined while draining")
                        assert await late_authenticator.get_message() == b"joined while draining"
                    assert await expect_close(late_authenticator) == 1000
                    # Live tunnels carry on.
                    await initiator.send_message(b"still served")
                    assert await authenticator.get_message() == b"still served"
                    await proc.read_until("shutdown_started", timeout=5)
                    assert trio.current_time() - started >= 1.0
                    with pytest.raises(OSError):
                        await trio.open_tcp_stream("127.0.0.1", proc.port)
                    # The paired tunnel still works in the grace period.
                    await authenticator.send_message(b"reply")
                    assert await initiator.get_message() == b"reply"
        assert await proc.wait_exit() == 0
    finally:
        if proc.process.returncode is None:
            proc.process.kill()
    refusals = [line for line in proc.lines if line["event"] == "refused"]
    assert [r["reason"] for r in refusals] == ["draining"]
    closed = [line["reason"] for line in proc.lines if line["event"] == "tunnel_closed"]
    assert "shutdown" not in closed, closed


async def test_a_second_signal_while_draining_stops_at_once():
    proc = await start_relay_process("--port", "0", "--drain-delay", "30")
    try:
        async with open_ws(f"{proc.base_url}/cable/new/{new_tunnel_id()}") as waiting:
            proc.process.send_signal(signal.SIGTERM)
            await proc.read_until("drain_started")
            proc.process.send_signal(signal.SIGTERM)
            await proc.read_until("shutdown_forced")
            assert await expect_close(waiting) in (1001, 1006)
        assert await proc.wait_exit(timeout=5) == 0
    finally:
        if proc.process.returncode is None:
            proc.process.kill()


async def test_drain_delay_option_is_validated(capsys):
    from relay.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--drain-delay", "-1"])
    assert exit_info.value.code == 2
    assert "drain-delay" in capsys.readouterr().err
