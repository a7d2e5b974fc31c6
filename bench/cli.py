"""``python -m bench``: run the relay benchmark suite against our relay and the references.

For each relay it starts the relay (pinned to one core), starts the load generator
(``bench/loadgen.py``, pinned to the other cores), sends it the scenarios one at a time and prints
each result as it arrives; at the end it writes results.json, results.md and the plots under
``--out``. Relays and load generators are started in their own process groups and always stopped,
on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import (
    BenchError,
    RelayProcess,
    core_plan,
    die_with_parent,
    pin,
    raise_nofile_limit,
)
from bench.relays import (
    BENCH_DIR,
    REFERENCES,
    RelaySpec,
    before,
    default_relay_cmd,
    ensure_node_modules,
    ours,
    reference,
)

SCENARIOS = ("pairing", "forwarding", "idle", "transaction")
#: Idle capacity runs first, on fresh relays, so the heap other scenarios freed does not hide
#: the memory waiting tunnels take.
RUN_ORDER = ("idle", "pairing", "forwarding", "transaction")
SIZES = (64, 1024, 16384)


def plan(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """The commands sent to the load generator per scenario; every one bounded in time and count."""
    if quick:
        pairing_s, forward_s, levels, probes, settle, txn_s = 0.4, 0.25, [500, 1000], 10, 0.3, 0.5
    else:
        pairing_s, forward_s, levels, probes, settle, txn_s = 3.0, 2.0, [1000, 5000], 50, 1.0, 3.0
    return {
        "pairing": [
            {"op": "pairing", "inflight": n, "duration": pairing_s, "limit": 100_000}
            for n in (1, 16, 64)
        ],
        "forwarding": [
            {
                "op": "forwarding",
                "tunnels": tunnels,
                "size": size,
                "mode": mode,
                "duration": forward_s,
                "limit": 5_000_000,
            }
            for mode in ("stream", "pingpong")
            for tunnels in (1, 64)
            for size in SIZES
        ],
        "idle": [{"op": "idle", "levels": levels, "probes": probes, "settle": settle}],
        "transaction": [
            {"op": "transaction", "inflight": 8, "duration": txn_s, "limit": 100_000},
        ],
    }


def scenario_key(command: dict[str, Any]) -> str:
    op = command["op"]
    if op == "pairing":
        return f"pairing/{command['inflight']}"
    if op == "forwarding":
        return f"forwarding/{command['mode']}/{command['size']}/{command['tunnels']}"
    return op


class LoadGenProcess:
    """The load generator child: JSON commands in, JSON results out, bounded by timeouts."""

    def __init__(self, relay: RelayProcess, cores: set[int] | None) -> None:
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(relay.port),
            "--kind",
            relay.kind,
            "--pids",
            ",".join(map(str, relay.pids)),
        ]
        if cores:
            argv += ["--cores", ",".join(map(str, sorted(cores)))]
        self.proc = subprocess.Popen(
            argv,
            cwd=BENCH_DIR.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def run(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise BenchError(f"load generator gave no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("load generator exited unexpectedly")
        return json.loads(line)

    def stop(self) -> None:
        # With stdin closed an idle load generator exits at once; a busy one (interrupted run)
        # is killed after a second rather than left to finish its scenario.
        with contextlib.suppress(Exception):
            self.proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def describe(name: str, result: dict[str, Any]) -> str:
    """One progress line per scenario result."""
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    busy = (
        f"relay busy {result.get('relay_busy', 0):.0%}, "
        f"loadgen busy {result.get('loadgen_busy', 0):.0%}"
    )
    if name.startswith("pairing"):
        return (
            f"{result['tunnels_per_s']} tunnels/s, p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms, relay {result['relay_cpu_us_per_tunnel']} µs CPU/tunnel "
            f"({busy})" + (f", {result['errors']} errors" if result["errors"] else "")
        )
    if name.startswith("forwarding"):
        return (
            f"{result['messages_per_s']} msg/s, {result['mb_per_s']} MB/s, "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"relay {result['relay_cpu_us_per_message']} µs CPU/msg ({busy})"
        )
    if name == "idle":
        parts = []
        for level in result["levels"]:
            if level["waiting"]:
                parts.append(
                    f"{level['waiting']} waiting: "
                    f"{level['bytes_per_waiting_tunnel'] / 1024:.1f} KiB each, "
                    f"fresh pairing p50 {level['p50_ms']} ms / p99 {level['p99_ms']} ms"
                )
        return "; ".join(parts)
    if name == "transaction":
        return (
            f"{result['transactions_per_s']} transactions/s, p50 {result['p50_ms']} ms, relay "
            f"{result['relay_cpu_us_per_transaction']} µs CPU/transaction = "
            f"{result['relay_share']:.0%} of relay+endpoints CPU ({busy})"
        )
    return json.dumps(result)


class Contender:
    """One relay under measurement with its own load generator."""

    def __init__(self, spec: RelaySpec, relay: RelayProcess) -> None:
        self.spec = spec
        self.relay = relay
        self.gen: LoadGenProcess | None = None
        self.results: dict[str, Any] = {}
        self.out: dict[str, Any] = {
            "command": shlex.join(spec.argv),
            "kind": spec.kind,
            "note": spec.note,
            "scenarios": self.results,
        }

    def fail(self, why: str) -> None:
        self.out["error"] = why
        print(f"   {self.spec.name}: {why}; dropping it from the rest of the run", flush=True)
        self.stop()

    def stop(self) -> None:
        if self.gen is not None:
            self.gen.stop()
            self.gen = None
        self.relay.stop()


def run_all(
    specs: list[RelaySpec],
    commands: list[dict[str, Any]],
    cores: tuple[set[int] | None, set[int] | None],
    tmp: Path,
    into: dict[str, Any],
) -> None:
    """Start every relay, then run each scenario on each relay in turn.

    Interleaving by scenario (rather than relay after relay) keeps the comparison fair when the
    machine's background load drifts during the run: the ratios compare neighbouring minutes.
    """
    contenders: list[Contender] = []
    try:
        for spec in specs:
            relay = RelayProcess(
                spec.name, spec.argv, spec.kind, cores[0], spec.cwd, tmp / f"{spec.name}.log"
            )
            contender = Contender(spec, relay)
            contenders.append(contender)
            into[spec.name] = contender.out
            print(f"== {spec.name}: {shlex.join(spec.argv)}", flush=True)
            try:
                relay.start()
                contender.gen = LoadGenProcess(relay, cores[1])
            except (BenchError, OSError) as exc:
                contender.fail(str(exc))
                continue
            print(f"   listening on 127.0.0.1:{relay.port} (pids {relay.pids})", flush=True)
        for command in commands:
            key = scenario_key(command)
            print(f"-- {key}", flush=True)
            for contender in contenders:
                if contender.gen is None:
                    continue
                name = contender.spec.name
                budget = float(command.get("duration", 5.0)) + 120.0
                try:
                    result = contender.gen.run(command, budget)
                except BenchError as exc:
                    contender.fail(f"{key}: {exc}")
                    continue
                contender.results[key] = result
                print(f"   {name:<11} {describe(key, result)}", flush=True)
                if not contender.relay.alive():
                    contender.fail(f"relay exited during {key}")
    finally:
        for contender in contenders:
            if contender.gen is not None:
                contender.gen.stop()
                contender.gen = None
        for contender in contenders:
            contender.relay.terminate()
        for contender in contenders:
            contender.stop()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    for module in ("websockets", "uvloop", "trio", "trio_websocket", "wsproto"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version(module.replace("_", "-"))
    with contextlib.suppress(Exception):
        versions["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    with contextlib.suppress(Exception):
        lock = json.loads((BENCH_DIR / "reference/node/package-lock.json").read_text())
        for dep in ("ws", "bufferutil"):
            versions[f"node {dep}"] = lock["packages"][f"node_modules/{dep}"]["version"]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "versions": versions,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark the relay: pairing, forwarding, idle capacity and full hybrid transactions, "
            "against reference relays measured in the same run. Relay CPU per unit of work, read "
            "from /proc, is the headline figure."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute in total)")
    parser.add_argument(
        "--relay-cmd",
        default=None,
        help=(
            "command that starts the relay under test on 127.0.0.1 and logs a JSON "
            '"listening" line with its port (use --port 0); default: '
            f"python {default_relay_cmd().split(' ', 1)[1]}"
        ),
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--references",
        default=",".join(REFERENCES),
        help="comma-separated reference relays, or 'none' (default: websockets,node,tcp)",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        default=None,
        help="also measure our relay as it was at git revision REV (column 'before'), to show "
        "before/after figures from the same run",
    )
    parser.add_argument("--no-ours", action="store_true", help="measure only the references")
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "results", help="results directory (bench/results)"
    )
    args = parser.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    for s in args.only:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    refs = [] if args.references in ("", "none") else args.references.split(",")
    for r in refs:
        if r not in REFERENCES:
            parser.error(f"unknown reference {r!r} (choose from {', '.join(REFERENCES)})")
    args.references = refs
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    limit = raise_nofile_limit()
    cores = core_plan()
    pin(cores[1])  # the orchestrator mostly sleeps; keep it off the relay's core
    started = time.monotonic()
    commands = [c for s in RUN_ORDER if s in args.only for c in plan(args.quick)[s]]
    specs: list[RelaySpec] = []
    skipped: dict[str, str] = {}
    if not args.no_ours:
        specs.append(ours(args.relay_cmd or default_relay_cmd()))
    if args.before:
        try:
            specs.append(before(args.before, args.out / "tmp"))
        except ValueError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    for name in args.references:
        if name == "node":
            why = ensure_node_modules()
            if why:
                print(f"bench: skipping the node reference: {why}", flush=True)
                skipped[name] = why
                continue
        specs.append(reference(name))
    print(
        f"bench: {'quick' if args.quick else 'full'} run, scenarios {','.join(args.only)}; "
        f"relay on cores {sorted(cores[0]) if cores[0] else 'any'}, load generator on "
        f"{sorted(cores[1]) if cores[1] else 'any'}; open-file limit {limit}",
        flush=True,
    )
    tmp = args.out / "tmp"
    data: dict[str, Any] = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if args.quick else "full",
        "scenarios": args.only,
        "machine": machine(),
        "pinning": {"relay": sorted(cores[0] or []), "loadgen": sorted(cores[1] or [])},
        "open_file_limit": limit,
        "skipped": skipped,
        "relays": {},
    }
    try:
        run_all(specs, commands, cores, tmp, data["relays"])
    except KeyboardInterrupt:
        # Partial results would overwrite a complete earlier run in --out: leave it alone.
        print("\nbench: interrupted; child processes stopped, nothing written", flush=True)
        return 130
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    data["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    paths = report.write_all(data, args.out)
    print(f"\n{report.headline_markdown(data)}")
    print(f"bench: done in {data['elapsed_s']} s; wrote {', '.join(str(p) for p in paths)}")
    failed = any("error" in r for r in data["relays"].values())
    return 1 if failed else 0
