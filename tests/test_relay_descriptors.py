"""Honest pairings while one address presses the descriptor limit (issue 12, point 8).

A relay process runs under ``prlimit --nofile=1024`` (soft and hard), the common default. One
address opens 1,100 silent sockets; honest clients from another address must still pair, because
the relay budgets its descriptors: the per-address default fits what is available (and is in the
``listening`` log line), floods are refused without holding descriptors, and a reserve stays for
clients holding few connections.
"""

from __future__ import annotations

import os
import shutil

import pytest
import trio
from relay_helpers import new_tunnel_id, open_ws, routing_id_of
from relay_process import relay_process

from relay.descriptors import DescriptorBudget

SILENT = 1100
HONEST = 3


async def _pair_within(port: int, seconds: float) -> None:
    """One honest pairing (phone, then desktop, one message) that must finish in ``seconds``."""
    with trio.fail_after(seconds):
        tid = new_tunnel_id()
        base = f"ws://127.0.0.1:{port}"
        async with open_ws(f"{base}/cable/new/{tid}") as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(f"{base}/cable/connect/{rid}/{tid}") as initiator:
                await initiator.send_message(b"ping")
                assert await authenticator.get_message() == b"ping"


def test_the_budget_fits_the_limit() -> None:
    budget = DescriptorBudget.for_limit(1024, 30)
    assert budget.connections == 1024 - 30 - 16
    assert 0 < budget.reserve < budget.connections
    per_address = budget.per_address_default()
    assert per_address * 4 + budget.reserve <= budget.connections
    big = DescriptorBudget.for_limit(1 << 20, 30)
    assert big.per_address_default() == 1024


@pytest.mark.skipif(
    shutil.which("prlimit") is None and not os.environ.get("CI"), reason="needs util-linux prlimit"
)
@pytest.mark.parametrize("sources", [1, 10], ids=["one-address", "ten-addresses"])
async def test_honest_pairings_succeed_while_silent_sockets_press_the_limit(tmp_path, sources):
    async with relay_process(tmp_path, prefix=("prlimit", "--nofile=1024:1024")) as relay:
        listening = next(line for line in relay.lines() if line["event"] == "listening")
        assert listening["fd_limit"] == 1024
        per_address = listening["max_connections_per_address"]
        assert per_address < listening["fd_budget"] // 2
        silent: list[trio.SocketStream] = []
        paired = 0
        try:
            with trio.fail_after(30):
                for n in range(SILENT):
                    try:
                        silent.append(
                            await trio.open_tcp_stream(
                                "127.0.0.1", relay.port, local_address=f"127.0.0.{2 + n % sources}"
                            )
                        )
                    except OSError:
                        break
                await trio.sleep(1.0)  # let the relay accept (and refuse) what it must
                assert relay.open_fds() < 1024
                started = trio.current_time()
                for _ in range(HONEST):
                    await _pair_within(relay.port, 5.0)
                    paired += 1
                elapsed = trio.current_time() - started
        finally:
            for stream in silent:
                await stream.aclose()
    print(
        f"\n{len(silent)} silent sockets from {sources} address(es) under nofile=1024 "
        f"(per-address limit {per_address}): {paired}/{HONEST} honest pairings in {elapsed:.2f} s"
    )
    assert paired == HONEST
