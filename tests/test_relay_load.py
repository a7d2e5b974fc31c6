"""Hundreds of concurrent tunnels, interleaved traffic: each message intact, only at its peer."""

from __future__ import annotations

import hashlib

import trio
from prometheus_client.parser import text_string_to_metric_families
from relay_helpers import open_tunnel, running_relay, wait_until

TUNNELS = 300
MESSAGES_PER_SIDE = 5


def payload(tunnel: int, side: str, seq: int) -> bytes:
    # Distinct per tunnel, side and position, of varying length, so any misrouting shows.
    seed = f"{tunnel}:{side}:{seq}".encode()
    body = hashlib.sha256(seed).digest() * (1 + (tunnel * 7 + seq) % 40)
    return seed + b"|" + body


async def test_hundreds_of_concurrent_tunnels_deliver_every_message_only_to_its_peer():
    async with running_relay() as relay:
        all_paired = trio.Event()
        paired = 0
        done = 0
        expected_bytes = {"to_initiator": 0, "to_authenticator": 0}

        async def run_one(index: int) -> None:
            nonlocal paired, done
            async with open_tunnel(relay) as tunnel:
                paired += 1
                if paired == TUNNELS:
                    all_paired.set()
                await all_paired.wait()

                async def send(ws, side: str) -> None:
                    for seq in range(MESSAGES_PER_SIDE):
                        await ws.send_message(payload(index, side, seq))
                        await trio.sleep(0)

                async def receive(ws, side: str) -> None:
                    for seq in range(MESSAGES_PER_SIDE):
                        assert await ws.get_message() == payload(index, side, seq)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send, tunnel.initiator, "i")
                    nursery.start_soon(send, tunnel.authenticator, "a")
                    nursery.start_soon(receive, tunnel.authenticator, "i")
                    nursery.start_soon(receive, tunnel.initiator, "a")
            done += 1

        for index in range(TUNNELS):
            for seq in range(MESSAGES_PER_SIDE):
                expected_bytes["to_authenticator"] += len(payload(index, "i", seq))
                expected_bytes["to_initiator"] += len(payload(index, "a", seq))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(TUNNELS):
                    nursery.start_soon(run_one, index)
                await all_paired.wait()
                assert relay.paired_tunnels() == TUNNELS
                assert relay.live_tunnels() == TUNNELS
        assert done == TUNNELS
        await wait_until(lambda: relay.live_tunnels() == 0 and relay.open_connections() == 0)

        values = {}
        for family in text_string_to_metric_families(relay.metrics_text()):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        assert values[("hybrid_relay_pairings_total", ())] == TUNNELS
        assert values[("hybrid_relay_tunnels_opened_total", ())] == TUNNELS
        assert values[("hybrid_relay_tunnels_waiting", ())] == 0
        assert values[("hybrid_relay_tunnels_paired", ())] == 0
        assert values[("hybrid_relay_pairing_latency_seconds_count", ())] == TUNNELS
        for direction in ("to_initiator", "to_authenticator"):
            label = (("direction", direction),)
            assert values[("hybrid_relay_messages_forwarded_total", label)] == (
                TUNNELS * MESSAGES_PER_SIDE
            )
            assert (
                values[("hybrid_relay_bytes_forwarded_total", label)] == (expected_bytes[direction])
            )
        assert not any(name == "hybrid_relay_refusals_total" for name, _ in values)
        closes = sum(
            v for (name, _), v in values.items() if name == "hybrid_relay_tunnel_closes_total"
        )
        assert closes == TUNNELS
