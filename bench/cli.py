"""``python -m bench``: run the relay benchmark suite against our relay and the references.

Each repetition starts every relay afresh (pinned to one core) with its own load generator
(``bench/loadgen.py``, pinned to the other cores), then runs the scenarios one at a time across
the relays, rotating the relays' order from scenario to scenario and repetition to repetition so
that no relay always runs first or right after the same neighbour. Every figure reported is the
median of the repetitions, with min–max spread (``bench/stats.py``).

Output: a fresh scratch directory under ``bench/runs/`` unless ``--out`` names one; the committed
``bench/results/`` is written only with ``--publish``. Relays and load generators are started in
their own process groups and always stopped, on failure and on Ctrl-C too.
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

from bench import report, stats
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
    cache_dir,
    default_relay_cmd,
    ensure_go_relay,
    ensure_node_modules,
    ours,
    reference,
)

SCENARIOS = ("pairing", "forwarding", "idle", "transaction", "tunnel-life")
#: Idle capacity runs first, on fresh relays, so the heap other scenarios freed does not hide
#: the memory waiting tunnels take.
RUN_ORDER = ("idle", "pairing", "tunnel-life", "forwarding", "transaction")
SIZES = (64, 1024, 16384)
RESULTS_DIR = BENCH_DIR / "results"
RUNS_DIR = BENCH_DIR / "runs"
DEFAULT_REPEAT = 3


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
        "tunnel-life": [
            {"op": "tunnel_life", "inflight": 64, "duration": pairing_s, "limit": 100_000},
        ],
    }


def scenario_key(command: dict[str, Any]) -> str:
    op = command["op"]
    if op == "pairing":
        return f"pairing/{command['inflight']}"
    if op == "forwarding":
        return f"forwarding/{command['mode']}/{command['size']}/{command['tunnels']}"
    if op == "tunnel_life":
        return "tunnel-life"
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
    if name == "tunnel-life":
        return (
            f"{result['tunnels_per_s']} tunnels/s, p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms, relay {result['relay_cpu_us_per_tunnel']} µs CPU/tunnel "
            f"life ({busy})" + (f", {result['errors']} errors" if result["errors"] else "")
        )
    if name.startswith("pairing"):
        return (
            f"{result['tunnels_per_s']} tunnels/s, p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms, relay {result['relay_cpu_us_per_tunnel']} µs CPU/tunnel "
            f"({busy})" + (f", {result['errors']} errors" if result["errors"] else "")
        )
    if name.startswith("forwarding"):
        return (
            f"{result['messages_per_s']} msg/s, {result['mib_per_s']} MiB/s, "
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
    """One relay under measurement: a fresh process and load generator per repetition."""

    def __init__(self, spec: RelaySpec) -> None:
        self.spec = spec
        self.relay: RelayProcess | None = None
        self.gen: LoadGenProcess | None = None
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.out: dict[str, Any] = {
            "command": shlex.join(spec.argv),
            "kind": spec.kind,
            "note": spec.note,
            "scenarios": {},
        }

    def start(self, cores: tuple[set[int] | None, set[int] | None], log: Path) -> None:
        self.relay = RelayProcess(
            self.spec.name,
            self.spec.argv,
            self.spec.kind,
            cores[0],
            self.spec.cwd,
            log,
            env=self.spec.env,
        )
        try:
            self.relay.start()
            self.gen = LoadGenProcess(self.relay, cores[1])
        except (BenchError, OSError) as exc:
            self.fail(str(exc))
            return
        print(
            f"   {self.spec.name}: listening on 127.0.0.1:{self.relay.port} "
            f"(pids {self.relay.pids})",
            flush=True,
        )

    def fail(self, why: str) -> None:
        self.out["error"] = why
        print(f"   {self.spec.name}: {why}; dropping it from the rest of the run", flush=True)
        self.stop()

    def stop(self) -> None:
        if self.gen is not None:
            self.gen.stop()
            self.gen = None
        if self.relay is not None:
            self.relay.stop()
            self.relay = None

    def finish(self) -> None:
        """Fold repetitions into medians (``scenarios``); keep each under ``repetitions``."""
        self.out["scenarios"] = {key: stats.aggregate(runs) for key, runs in self.runs.items()}
        self.out["repetitions"] = {
            key: [stats.strip(r) for r in runs] for key, runs in self.runs.items()
        }


def rotated(items: list[Contender], by: int) -> list[Contender]:
    if not items:
        return items
    k = by % len(items)
    return items[k:] + items[:k]


def run_all(
    specs: list[RelaySpec],
    commands: list[dict[str, Any]],
    cores: tuple[set[int] | None, set[int] | None],
    logs: Path,
    into: dict[str, Any],
    repeat: int = DEFAULT_REPEAT,
) -> None:
    """Run every scenario on every relay, ``repeat`` times, interleaved.

    Interleaving by scenario (rather than relay after relay) keeps the comparison fair when the
    machine's background load drifts during the run: the ratios compare neighbouring seconds.
    The relays' order rotates with each scenario and repetition, and each repetition starts
    fresh relay processes, so idle capacity is always measured on a relay that has done nothing.
    """
    contenders = [Contender(spec) for spec in specs]
    for contender in contenders:
        into[contender.spec.name] = contender.out
    try:
        for rep in range(repeat):
            live = [c for c in contenders if "error" not in c.out]
            print(f"== repetition {rep + 1} of {repeat}", flush=True)
            try:
                for contender in live:
                    contender.start(cores, logs / f"{contender.spec.name}-{rep + 1}.log")
                for i, command in enumerate(commands):
                    key = scenario_key(command)
                    print(f"-- {key} (repetition {rep + 1})", flush=True)
                    for contender in rotated(live, rep + i):
                        if contender.gen is None or contender.relay is None:
                            continue
                        name = contender.spec.name
                        budget = float(command.get("duration", 5.0)) + 120.0
                        try:
                            result = contender.gen.run(command, budget)
                        except BenchError as exc:
                            contender.fail(f"{key}: {exc}")
                            continue
                        contender.runs.setdefault(key, []).append(result)
                        print(f"   {name:<11} {describe(key, result)}", flush=True)
                        if not contender.relay.alive():
                            contender.fail(f"relay exited during {key}")
            finally:
                for contender in live:
                    if contender.gen is not None:
                        contender.gen.stop()
                        contender.gen = None
                for contender in live:
                    if contender.relay is not None:
                        contender.relay.terminate()
                for contender in live:
                    contender.stop()
    finally:
        for contender in contenders:
            contender.finish()


def git_revision() -> dict[str, Any]:
    """The commit this checkout is at, and whether the measured code differs from it."""
    root = str(BENCH_DIR.parent)
    info: dict[str, Any] = {"commit": None, "dirty": None, "subject": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", root, "log", "-1", "--format=%H%n%s"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.splitlines()
        info["commit"], info["subject"] = head[0], head[1] if len(head) > 1 else ""
        # Only the code that runs counts: committed results and scratch runs are not code.
        status = subprocess.run(
            [
                "git",
                "-C",
                root,
                "status",
                "--porcelain",
                "--",
                "relay",
                "hybrid",
                "bench",
                ":!bench/results",
                ":!bench/runs",
                "pyproject.toml",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        info["dirty"] = bool(status.strip())
    return info


def ours_compiled() -> dict[str, Any]:
    """Whether our relay's processes will run its compiled modules (relay.native), and why not."""
    from relay import compiled

    why = compiled.unusable_reason()
    return {"active": why is None, "reason": why or "current"}


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
        versions["go"] = subprocess.run(
            ["go", "version"], capture_output=True, text=True, timeout=10
        ).stdout.split()[2]
    with contextlib.suppress(Exception):
        versions["gorilla/websocket (Debian)"] = (
            subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "golang-github-gorilla-websocket-dev"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "?"
        )
    with contextlib.suppress(Exception):
        lock = json.loads((BENCH_DIR / "reference/node/package-lock.json").read_text())
        for dep in ("ws", "bufferutil"):
            versions[f"node {dep}"] = lock["packages"][f"node_modules/{dep}"]["version"]
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    system = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                system = line.split("=", 1)[1].strip('"')
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": system,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "versions": versions,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark the relay: pairing, the life of a hybrid tunnel, forwarding, idle "
            "capacity and full hybrid transactions, against reference relays measured in the "
            "same run. Relay CPU per unit of work, read from /proc, is the headline figure; "
            "every figure is the median of interleaved repetitions, with min-max spread. "
            "Results go to a fresh directory under bench/runs/ (or --out); the committed "
            "bench/results/ is written only with --publish."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs (about two minutes in total)"
    )
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
        help=f"comma-separated reference relays, or 'none' (default: {','.join(REFERENCES)})",
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
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        metavar="N",
        help=f"repetitions of every scenario on every relay; figures are medians "
        f"(default {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: a new bench/runs/<time>-<quick|full>/, not in git)",
    )
    parser.add_argument(
        "--note",
        default="",
        help="conditions worth recording with the results (e.g. 'machine shared with other "
        "work'); shown in results.md",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="write the results into the committed bench/results/ (meant for full runs)",
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
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.publish and args.out is not None:
        parser.error("--publish writes bench/results/; leave out --out")
    if args.out is not None and args.out.resolve() == RESULTS_DIR.resolve():
        parser.error(
            "bench/results/ holds the committed results: write there with --publish, "
            "or pick another --out"
        )
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def output_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(where results go, where relay logs go): the logs always stay in a scratch directory."""
    mode = "quick" if args.quick else "full"
    scratch = args.out
    if scratch is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        scratch = RUNS_DIR / f"{stamp}-{mode}"
        n = 1
        while scratch.exists():  # two runs started within the same second
            n += 1
            scratch = RUNS_DIR / f"{stamp}-{mode}-{n}"
    return (RESULTS_DIR if args.publish else scratch), scratch / "logs"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our relay drains for 5 s on SIGTERM (for load balancers); the benchmark stops relays with
    # SIGTERM and kills them 3 s later, so it turns draining off. An environment variable rather
    # than a flag: relays built from older revisions (--before) ignore it instead of refusing it.
    os.environ.setdefault("HYBRID_RELAY_DRAIN_DELAY", "0")
    signal.signal(signal.SIGTERM, _terminate)
    limit = raise_nofile_limit()
    cores = core_plan()
    pin(cores[1])  # the orchestrator mostly sleeps; keep it off the relay's core
    started = time.monotonic()
    out, logs = output_dirs(args)
    commands = [c for s in RUN_ORDER if s in args.only for c in plan(args.quick)[s]]
    specs: list[RelaySpec] = []
    skipped: dict[str, str] = {}
    if not args.no_ours:
        specs.append(ours(args.relay_cmd or default_relay_cmd()))
    if args.before:
        try:
            specs.append(before(args.before, cache_dir() / "before"))
        except ValueError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    for name in args.references:
        why = None
        go_binary = None
        if name == "node":
            why = ensure_node_modules()
        elif name == "go":
            go_binary, why = ensure_go_relay()
        if why:
            print(f"bench: skipping the {name} reference: {why}", flush=True)
            skipped[name] = why
            continue
        specs.append(reference(name, go_binary))
    mode = "quick" if args.quick else "full"
    revision = git_revision()
    print(
        f"bench: {mode} run of {revision['commit'] or 'an unknown commit'}"
        f"{' (with uncommitted changes)' if revision['dirty'] else ''}, "
        f"{args.repeat} repetitions, scenarios {','.join(args.only)}; "
        f"relay on cores {sorted(cores[0]) if cores[0] else 'any'}, load generator on "
        f"{sorted(cores[1]) if cores[1] else 'any'}; open-file limit {limit}; results to {out}",
        flush=True,
    )
    if args.publish and (args.quick or revision["dirty"]):
        print(
            "bench: warning: publishing a "
            + ("quick run" if args.quick else "run of uncommitted code")
            + " into bench/results/; it is labelled so in every output",
            flush=True,
        )
    data: dict[str, Any] = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mode": mode,
        "repeat": args.repeat,
        "commit": revision["commit"],
        "revision": revision,
        "scenarios": args.only,
        "machine": machine(),
        "pinning": {"relay": sorted(cores[0] or []), "loadgen": sorted(cores[1] or [])},
        "open_file_limit": limit,
        "note": args.note,
        "skipped": skipped,
        "ours_compiled": ours_compiled(),
        "relays": {},
    }
    try:
        run_all(specs, commands, cores, logs, data["relays"], args.repeat)
    except KeyboardInterrupt:
        # Partial results would overwrite a complete earlier run in --out: leave it alone.
        print("\nbench: interrupted; child processes stopped, nothing written", flush=True)
        return 130
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    data["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    paths = report.write_all(data, out)
    print(f"\n{report.headline_markdown(data)}")
    print(f"bench: done in {data['elapsed_s']} s; wrote {', '.join(str(p) for p in paths)}")
    failed = any("error" in r for r in data["relays"].values())
    return 1 if failed else 0
