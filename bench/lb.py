"""Scale through a load balancer: relay CPU per tunnel on each node and the balancer's own.

    python -m bench.lb [--balancer haproxy|nginx|both] [--tunnels N] [--inflight C] [--quick]

For each balancer and for one node and then two, it starts a local cluster (``relay.cluster``:
relay nodes plus nginx or HAProxy on 127.0.0.1), warms it up, then runs ``--tunnels`` complete
tunnels through the balancer with ``--inflight`` at a time (``/cable/new``, ``/cable/connect``
routed by the routing id's node prefix, one message each way, close: bench.loadgen's pairing
job). Measured from /proc over the window: CPU time of every node process and of the balancer's
processes (nginx master and workers), the load generator's own CPU and the wall time; and from each
node's /metrics how many tunnels it held. Prints a markdown table and, with ``--out``, the JSON.

CPU per tunnel is what bounds a node (one Python process uses one core) and the balancer; on a
busy or small machine the throughput column says more about the machine than about the relay.
The projection for N nodes is in relay/README.md ("Scale through a balancer").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import children_of, cpu_ns, raise_nofile_limit
from bench.wire import Dialer, WireError
from relay.cluster import Cluster

PAYLOAD = os.urandom(128)
NODE_ARGS = [
    "--max-messages",
    "100000000",
    "--max-tunnels",
    "100000",
    "--max-connections-per-address",
    "100000",
    "--drain-delay",
    "0",
]


async def _tunnel(dialer: Dialer) -> str:
    phone, desktop = await dialer.tunnel(10.0)
    try:
        desktop.send(PAYLOAD)
        await phone.recv()
        phone.send(PAYLOAD)
        await desktop.recv()
        phone.close()
        await asyncio.gather(phone.closed, desktop.closed)
    except BaseException:
        phone.abort()
        desktop.abort()
        raise
    return str(phone.routing_id)[:2]


async def _drive(port: int, tunnels: int, inflight: int) -> tuple[int, list[str]]:
    dialer = Dialer("127.0.0.1", port, "ws")
    done = 0
    errors: list[str] = []
    started = 0

    async def worker() -> None:
        nonlocal done, started
        while started < tunnels and len(errors) < 20:
            started += 1
            try:
                await asyncio.wait_for(_tunnel(dialer), 15.0)
                done += 1
            except (WireError, OSError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done, errors


def _opened(node: dict[str, Any]) -> float:
    with urllib.request.urlopen(node["metrics"], timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("hybrid_relay_tunnels_opened_total "):
                return float(line.split()[1])
    return 0.0


def measure(balancer: str, nodes: int, tunnels: int, inflight: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-lb-") as workdir:
        os.chmod(workdir, 0o755)
        cluster = Cluster(Path(workdir))
        try:
            port = _free_port()
            cluster.start(nodes, balancer, "127.0.0.1", port, NODE_ARGS)
            info = cluster.describe()
            asyncio.run(_drive(port, min(50, tunnels), min(8, inflight)))  # warm-up
            node_pids = [n["pid"] for n in info["nodes"]]
            balancer_pid = info["balancer"]["pid"]
            balancer_pids = [balancer_pid, *children_of(balancer_pid)]
            opened0 = [_opened(n) for n in info["nodes"]]
            node0 = [cpu_ns([pid]) for pid in node_pids]
            lb0 = cpu_ns(balancer_pids)
            own0 = time.process_time_ns()
            wall0 = time.perf_counter()
            done, errors = asyncio.run(_drive(port, tunnels, inflight))
            wall = time.perf_counter() - wall0
            own = (time.process_time_ns() - own0) / 1e9
            lb = (cpu_ns(balancer_pids) - lb0) / 1e9
            node_cpu = [
                (cpu_ns([pid]) - c0) / 1e9 for pid, c0 in zip(node_pids, node0, strict=True)
            ]
            held = [_opened(n) - o0 for n, o0 in zip(info["nodes"], opened0, strict=True)]
        finally:
            cluster.stop()

    def per(seconds: float, count: float) -> float | None:
        return round(seconds * 1e6 / count, 1) if count else None

    return {
        "balancer": balancer,
        "nodes": nodes,
        "tunnels": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "tunnels_per_s": round(done / wall, 1) if wall else None,
        "node_cpu_s": [round(c, 4) for c in node_cpu],
        "node_tunnels": [int(h) for h in held],
        "node_cpu_us_per_tunnel": [per(c, h) for c, h in zip(node_cpu, held, strict=True)],
        "relay_cpu_us_per_tunnel": per(sum(node_cpu), done),
        "balancer_cpu_s": round(lb, 4),
        "balancer_cpu_us_per_tunnel": per(lb, done),
        "loadgen_cpu_us_per_tunnel": per(own, done),
    }


def _free_port() -> int:
    """A port that was free a moment ago (the balancer binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def markdown(results: list[dict[str, Any]]) -> str:
    head = [
        "balancer",
        "nodes",
        "tunnels",
        "errors",
        "tunnels/s",
        "relay µs CPU/tunnel (all nodes)",
        "per node µs/tunnel (tunnels held)",
        "balancer µs CPU/tunnel",
        "load gen µs/tunnel",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        per_node = ", ".join(
            f"{us} ({n})"
            for us, n in zip(r["node_cpu_us_per_tunnel"], r["node_tunnels"], strict=True)
        )
        rows.append(
            f"| {r['balancer']} | {r['nodes']} | {r['tunnels']} | {r['errors']} | "
            f"{r['tunnels_per_s']} | {r['relay_cpu_us_per_tunnel']} | {per_node} | "
            f"{r['balancer_cpu_us_per_tunnel']} | {r['loadgen_cpu_us_per_tunnel']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lb", description=__doc__.splitlines()[0])
    parser.add_argument("--balancer", choices=["haproxy", "nginx", "both"], default="both")
    parser.add_argument("--tunnels", type=int, default=3000, help="measured tunnels per run")
    parser.add_argument("--inflight", type=int, default=32, help="tunnels in progress at once")
    parser.add_argument("--quick", action="store_true", help="600 tunnels per run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    tunnels = 600 if args.quick else args.tunnels
    balancers = ["haproxy", "nginx"] if args.balancer == "both" else [args.balancer]
    results = []
    for balancer in balancers:
        for nodes in (1, 2):
            print(f"bench.lb: {balancer}, {nodes} node(s), {tunnels} tunnels...", file=sys.stderr)
            results.append(measure(balancer, nodes, tunnels, args.inflight))
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
