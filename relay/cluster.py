"""``hybrid-relay cluster``: a local relay cluster to try the balancer setup on one machine.

Starts N relay nodes on 127.0.0.1 (free ports, node prefixes ``01``, ``02``, ...; each trusting
the balancer's ``X-Forwarded-For``), writes an nginx or HAProxy configuration for them with
``relay.balancer`` into a work directory, runs the balancer as an ordinary foreground process on
``--port``, waits until ``/healthz`` answers through it, and prints the balancer URL and each
node's pid, URL and ``/metrics`` address (``--json``: one JSON object instead). Ctrl-C (SIGINT) or
SIGTERM stops the balancer and every node, each by its pid. A node that exits meanwhile (drained
with SIGTERM, killed with SIGKILL) is reported and the rest keeps running.

Nodes run in their own sessions, so Ctrl-C in the terminal reaches only this launcher, which then
stops them in order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from relay.balancer import FORMATS, Node, render

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0


class ClusterError(Exception):
    """The cluster could not be started; the message says which part failed and why."""


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    reported: bool = False


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening_port(child: _Child, deadline: float) -> int:
    """Wait for the node's ``listening`` log line; its port."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in child.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == "listening":
                        return int(record["port"])
        if child.process.poll() is not None:
            raise ClusterError(f"{child.name} exited at start: {_tail(child.log_path)}")
        time.sleep(0.05)
    raise ClusterError(f"{child.name} did not start within {_START_TIMEOUT:.0f} s")


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return "(no log)"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
            return response.status == 200
    except OSError:
        return False


class Cluster:
    """The running processes of one local cluster."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[_Child] = []
        self.balancer: _Child | None = None

    def _spawn(self, name: str, argv: list[str]) -> _Child:
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        return _Child(name, process, log_path, log)

    def start(
        self,
        count: int,
        balancer: str,
        host: str,
        port: int,
        node_args: list[str],
    ) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        for index in range(count):
            prefix = f"{index + 1:02X}"
            child = self._spawn(
                f"node-{prefix}",
                [
                    sys.executable,
                    "-m",
                    "relay",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--node-prefix",
                    prefix,
                    "--trusted-proxies",
                    "127.0.0.1",
                    *node_args,
                ],
            )
            child.info = {"prefix": prefix, "pid": child.process.pid}
            self.nodes.append(child)
        for child in self.nodes:
            node_port = _listening_port(child, deadline)
            child.info.update(
                port=node_port,
                url=f"ws://127.0.0.1:{node_port}",
                metrics=f"http://127.0.0.1:{node_port}/metrics",
                healthz=f"http://127.0.0.1:{node_port}/healthz",
                log=str(child.log_path),
            )
        nodes = [Node(c.info["prefix"], "127.0.0.1", c.info["port"]) for c in self.nodes]
        if balancer == "nginx":
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            config = self.workdir / "nginx.conf"
            config.write_text(render("nginx", nodes, (host, port), runtime_dir=str(self.workdir)))
            argv = [nginx, "-p", str(self.workdir), "-c", str(config), "-g", "daemon off;"]
        else:
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            config = self.workdir / "haproxy.cfg"
            config.write_text(render("haproxy", nodes, (host, port)))
            argv = [haproxy, "-db", "-f", str(config)]
        if not Path(argv[0]).exists():
            raise ClusterError(f"{balancer} is not installed (apt-get install {balancer})")
        self.balancer = self._spawn(balancer, argv)
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1"
        self.balancer.info = {
            "kind": balancer,
            "pid": self.balancer.process.pid,
            "port": port,
            "url": f"ws://{shown}:{port}",
            "healthz": f"http://{shown}:{port}/healthz",
            "config": str(config),
            "log": str(self.balancer.log_path),
        }
        while not _healthy(self.balancer.info["healthz"]):
            if self.balancer.process.poll() is not None:
                raise ClusterError(f"{balancer} exited at start: {_tail(self.balancer.log_path)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{balancer} did not answer /healthz on port {port}")
            time.sleep(0.1)

    def describe(self) -> dict[str, Any]:
        return {
            "balancer": self.balancer.info if self.balancer else None,
            "nodes": [c.info for c in self.nodes],
            "workdir": str(self.workdir),
        }

    def report_exits(self) -> bool:
        """Print nodes that exited since the last call; False if the balancer died."""
        for child in self.nodes:
            code = child.process.poll()
            if code is not None and not child.reported:
                child.reported = True
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
                print(
                    f"hybrid-relay cluster: {child.name} (pid {child.process.pid}) exited "
                    f"({how}); the other nodes keep running",
                    file=sys.stderr,
                    flush=True,
                )
        return self.balancer is None or self.balancer.process.poll() is None

    def stop(self) -> None:
        """Stop the balancer, then every node (SIGTERM twice: no drain), each by pid."""
        children = ([self.balancer] if self.balancer else []) + self.nodes
        for child in children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        for child in self.nodes:
            if child.process.poll() is None:
                # A second signal ends the node's drain and grace at once.
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.log.close()


def _print_human(info: dict[str, Any]) -> None:
    balancer = info["balancer"]
    print(
        f"hybrid-relay cluster: {len(info['nodes'])} nodes behind {balancer['kind']} "
        f"(work dir {info['workdir']})"
    )
    print(f"  balancer  {balancer['url']}  pid {balancer['pid']}  health {balancer['healthz']}")
    for node in info["nodes"]:
        print(
            f"  node {node['prefix']}   {node['url']}  pid {node['pid']}  metrics {node['metrics']}"
        )
    print("Ctrl-C stops the balancer and every node.", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hybrid-relay cluster",
        description="Run N relay nodes behind nginx or HAProxy on this machine, to try a "
        "multi-node setup. Arguments after '--' are passed to every node.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="number of relay nodes (1-255)")
    parser.add_argument("--balancer", choices=FORMATS, default="nginx", help="load balancer")
    parser.add_argument("--host", default="127.0.0.1", help="balancer listen address")
    parser.add_argument(
        "--port", type=int, default=8080, help="balancer port (0: a free port) [default 8080]"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object when ready")
    parser.add_argument(
        "--workdir",
        default=None,
        help="keep configs and logs here (default: a temporary directory, removed on exit)",
    )
    parser.add_argument("node_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 255:
        parser.error("--nodes must be 1..255")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="hybrid-relay-cluster-"))
    else:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    port = args.port or _free_port(args.host)

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = Cluster(workdir)
    status = 0
    try:
        cluster.start(args.nodes, args.balancer, args.host, port, args.node_args)
        info = cluster.describe()
        (workdir / "cluster.json").write_text(json.dumps(info, indent=2))
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            _print_human(info)
        while not stopping:
            if not cluster.report_exits():
                log = _tail(workdir / f"{args.balancer}.log")
                print(f"hybrid-relay cluster: {args.balancer} exited: {log}", file=sys.stderr)
                status = 1
                break
            time.sleep(0.2)
    except ClusterError as exc:
        print(f"hybrid-relay cluster: error: {exc}", file=sys.stderr)
        status = 1
    finally:
        cluster.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if status == 0:
        print("hybrid-relay cluster: stopped", file=sys.stderr)
    return status
