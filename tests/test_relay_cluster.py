"""A relay cluster behind real nginx and real HAProxy, started with the documented launcher.

``python -m relay cluster --nodes 3 --balancer nginx|haproxy --port 0 --json`` (the command the
README documents) starts three nodes and the balancer. Through the balancer: hundreds of tunnels,
each /cable/connect arriving at the node that holds its tunnel (each node's /metrics agrees); then
mid-traffic one node is drained (SIGTERM) and another killed (SIGKILL): no tunnel is lost on the
nodes that stayed up, tunnels on the drained node finish, new tunnels avoid both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from relay_helpers import new_tunnel_id, open_ws, routing_id_of

SHORT_TUNNELS = 300
CONCURRENCY = 25
LONG_TUNNELS = 45


def _need(binary: str) -> None:
    if shutil.which(binary) is None and not os.path.exists(f"/usr/sbin/{binary}"):
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is missing: .ci/apt.d/relay.txt should have installed it")
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")


def node_metrics(node: dict) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(node["metrics"], timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def one_tunnel(base: str, payload: bytes) -> str:
    """Open, pair, exchange one message each way, close; the routing id's node prefix."""
    tunnel_id = new_tunnel_id()
    async with open_ws(f"{base}/cable/new/{tunnel_id}") as authenticator:
        routing_id = routing_id_of(authenticator)
        async with open_ws(f"{base}/cable/connect/{routing_id}/{tunnel_id}") as initiator:
            await initiator.send_message(payload)
            assert await authenticator.get_message() == payload
            await authenticator.send_message(payload[::-1])
            assert await initiator.get_message() == payload[::-1]
    return routing_id[:2]


async def start_cluster(balancer: str) -> tuple[trio.Process, dict]:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "relay",
            "cluster",
            "--nodes",
            "3",
            "--balancer",
            balancer,
            "--port",
            "0",
            "--json",
            "--",
            "--drain-delay",
            "3",
            "--shutdown-grace",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    buffer = b""
    with trio.fail_after(40):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(65536)
            if not chunk:
                error = await process.stderr.receive_some(65536)
                raise AssertionError(f"cluster did not start: {error.decode(errors='replace')}")
            buffer += chunk
    return process, json.loads(buffer.split(b"\n", 1)[0])


@pytest.mark.parametrize("balancer", ["nginx", "haproxy"])
async def test_cluster_routes_drains_and_survives_a_killed_node(balancer: str) -> None:
    _need(balancer)
    process, info = await start_cluster(balancer)
    base = info["balancer"]["url"]
    nodes = {node["prefix"]: node for node in info["nodes"]}
    assert sorted(nodes) == ["01", "02", "03"]
    try:
        # -- hundreds of tunnels through the balancer ------------------------------------------
        landed: Counter[str] = Counter()
        limiter = trio.CapacityLimiter(CONCURRENCY)

        async def short(i: int) -> None:
            async with limiter:
                landed[await one_tunnel(base, b"tunnel %d" % i)] += 1

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(SHORT_TUNNELS):
                    nursery.start_soon(short, i)
        assert sum(landed.values()) == SHORT_TUNNELS
        assert set(landed) == set(nodes), landed  # spread over every node
        for prefix, node in nodes.items():
            values = node_metrics(node)
            # Every tunnel was opened and joined on the same node: connects were routed by prefix.
            assert values[("hybrid_relay_tunnels_opened_total", ())] == landed[prefix]
            assert values[("hybrid_relay_pairings_total", ())] == landed[prefix]
            assert (
                values.get(("hybrid_relay_refusals_total", (("reason", "unknown_tunnel"),)), 0) == 0
            )

        # -- drain one node and kill another mid-traffic --------------------------------------
        drained, killed, survivor = nodes["01"], nodes["02"], nodes["03"]
        long_results: dict[str, list[str]] = {"ok": [], "failed": []}
        ready = 0
        all_ready = trio.Event()
        stop_traffic = trio.Event()
        events_at: dict[str, float] = {}
        new_after_events: list[tuple[float, str | None]] = []
        errors: list[str] = []

        async def long_lived(i: int) -> None:
            nonlocal ready
            prefix = "??"
            try:
                tunnel_id = new_tunnel_id()
                async with open_ws(f"{base}/cable/new/{tunnel_id}") as authenticator:
                    routing_id = routing_id_of(authenticator)
                    prefix = routing_id[:2]
                    url = f"{base}/cable/connect/{routing_id}/{tunnel_id}"
                    async with open_ws(url) as initiator:
                        ready += 1
                        if ready == LONG_TUNNELS:
                            all_ready.set()
                        n = 0
                        while not stop_traffic.is_set():
                            n += 1
                            message = b"long %d/%d" % (i, n)
                            await initiator.send_message(message)
                            assert await authenticator.get_message() == message
                            await authenticator.send_message(message)
                            assert await initiator.get_message() == message
                            await trio.sleep(0.1)
                long_results["ok"].append(prefix)
            except Exception:  # noqa: BLE001 - counted per node below
                long_results["failed"].append(prefix)
                if ready < LONG_TUNNELS:
                    ready += 1
                    if ready == LONG_TUNNELS:
                        all_ready.set()

        async def new_traffic() -> None:
            while not stop_traffic.is_set():
                started = trio.current_time()
                try:
                    prefix: str | None = await one_tunnel(base, b"new")
                except Exception as exc:  # noqa: BLE001 - a failure is recorded with prefix None
                    prefix = None
                    errors.append(f"{trio.current_time() - events_at.get('kill', 0):.2f}s {exc!r}")
                new_after_events.append((started, prefix))

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for i in range(LONG_TUNNELS):
                    nursery.start_soon(long_lived, i)
                await all_ready.wait()
                for _ in range(4):
                    nursery.start_soon(new_traffic)
                await trio.sleep(0.5)
                events_at["drain"] = trio.current_time()
                os.kill(drained["pid"], signal.SIGTERM)
                events_at["kill"] = trio.current_time()
                os.kill(killed["pid"], signal.SIGKILL)
                # Traffic goes on through the drain delay (3 s) and into the grace period.
                await trio.sleep(4.5)
                stop_traffic.set()

        lost = Counter(long_results["failed"])
        kept = Counter(long_results["ok"])
        # Zero tunnels lost on the nodes that stayed up (the drained one finishes its own too).
        assert lost["03"] == 0 and lost["01"] == 0, (lost, kept)
        assert kept["03"] > 0 and kept["01"] > 0, kept
        # Only the killed node's tunnels died.
        assert lost["02"] == kept.get("02", 0) + lost["02"] and kept.get("02", 0) == 0
        # New tunnels after the drain and the kill: none failed, none landed on either node
        # (a request already inside a node when it got the signal is allowed to finish there).
        settled = events_at["kill"] + 0.5
        later = [prefix for started, prefix in new_after_events if started > settled]
        assert later, "no new tunnels were opened after the events"
        assert None not in later, (Counter(later), errors[:10])
        assert set(later) == {"03"}, Counter(later)
        # The survivor's metrics: its own tunnels only, each paired on it, none cut.
        values = node_metrics(survivor)
        opened = values[("hybrid_relay_tunnels_opened_total", ())]
        assert values[("hybrid_relay_pairings_total", ())] == opened
        cut = {
            labels: count
            for (name, labels), count in values.items()
            if name == "hybrid_relay_tunnel_closes_total"
            and dict(labels)["reason"] not in ("authenticator_closed", "initiator_closed")
        }
        assert not cut, cut
        # The drained node finishes its tunnels and exits cleanly by itself.
        with trio.fail_after(15):
            while True:
                try:
                    os.kill(drained["pid"], 0)
                except ProcessLookupError:
                    break
                await trio.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            code = await process.wait()
    assert code == 0
    for node in info["nodes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(node["pid"], 0)
