"""``python -m bench.profile``: where our relay's CPU per tunnel goes, under the pairing load.

Starts our relay (pinned to one core, as in a benchmark run) under a profiler, drives it from this
process (pinned to the other cores) with the pairing or tunnel-life load at 64 tunnels in flight,
stops it with SIGTERM so the profiler writes its output, and prints a summary:

* ``--tool py-spy`` (sampling, low overhead; ``pip install py-spy``): the share of samples per
  function, self and inclusive, from py-spy's collapsed stacks;
* ``--tool cprofile`` (deterministic, slows the relay several-fold, so only its counts are
  trusted): calls per tunnel of the functions that matter (trio waits, socket sends, scheduler
  steps), which is what "fewer round trips" has to reduce;
* ``--tool trace``: no profiler, a trio instrument and a wrapper around ``wait_readable``
  (installed by a bootstrap, the relay's code untouched) count per tunnel the scheduler's task
  steps, its epoll waits, tasks spawned, and every ``wait_readable`` by call site and outcome
  (woken by data, or cancelled);
* ``--tool callgrind`` (valgrind; about 50 times slower, so 16 tunnels in flight and a fixed
  ``--tunnels`` count instead of a time): the relay's user-space instructions per tunnel, counted
  exactly after a warm-up. The same code and load give the same count whatever else the machine
  does, so it tells small changes apart where CPU times on a shared machine cannot (it counts
  no kernel work and no cache misses: compare it with the CPU figures, not instead of them).
  ``HYBRID_RELAY_NATIVE=0`` counts the plain-Python relay.

py-spy, cProfile and the trace see Python frames only, so they run the relay as plain Python
(``HYBRID_RELAY_NATIVE=0``, see relay/native.py) unless that variable is set otherwise. Findings
are written up in bench/PROFILE.md; this tool is how they are reproduced.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import pstats
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.procs import RelayProcess, core_plan, pin, raise_nofile_limit
from bench.relays import BENCH_DIR, OUR_RELAY_ARGS
from relay import compiled

#: cProfile functions whose call counts per tunnel are reported (matched on "file:function").
COUNTED = (
    "wait_readable",
    "wait_writable",
    "checkpoint",
    "cancel_shielded_checkpoint",
    "reschedule",
    "spawn_impl",
    "start_soon",
    "unrolled_run",
    "socket.send",
    "socket.recv",
    "socket.recv_into",
    "socket.accept",
    "epoll.poll",
    "sendall",
    "_send",
    "send_all",
    "receive_some",
    "Event.set",
    "Event.wait",
)


#: Run as ``python -c TRACE_BOOT <relay args>``: counts written as JSON to $BENCH_TRACE_OUT at exit.
TRACE_BOOT = """
import atexit, collections, json, os, runpy, sys
import trio, trio.lowlevel
counts = collections.Counter()
waits = collections.Counter()

class Counting(trio.abc.Instrument):
    def before_task_step(self, task): counts["task steps"] += 1
    def task_spawned(self, task): counts["tasks spawned"] += 1
    def task_scheduled(self, task): counts["tasks rescheduled"] += 1
    def before_io_wait(self, timeout): counts["scheduler I/O waits (epoll)"] += 1

def counted(original):
    async def wait_readable(sock):
        f = sys._getframe(1)
        site = f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno} {f.f_code.co_name}"
        try:
            await original(sock)
        except BaseException:
            waits[site + " -> cancelled"] += 1
            raise
        waits[site + " -> woken"] += 1
    return wait_readable

import importlib, pkgutil, relay
# every relay module that waits for readability on its own (the set moves as the relay is split)
for info in pkgutil.iter_modules(relay.__path__):
    module = importlib.import_module("relay." + info.name)
    if hasattr(module, "wait_readable"):
        module.wait_readable = counted(module.wait_readable)
original_run = trio.run
trio.run = lambda *a, **k: original_run(*a, instruments=[Counting()], **k)
atexit.register(lambda: open(os.environ["BENCH_TRACE_OUT"], "w").write(
    json.dumps({"counts": counts, "waits": waits})))
sys.argv = ["relay", *sys.argv[1:]]
runpy.run_module("relay", run_name="__main__")
"""


def _relay_argv(tool: str, out: Path) -> list[str]:
    relay = [sys.executable, *shlex.split(OUR_RELAY_ARGS)]
    if tool == "callgrind":
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *relay]
    if tool == "trace":
        return [sys.executable, "-c", TRACE_BOOT, *shlex.split(OUR_RELAY_ARGS)[2:]]
    if tool == "py-spy":
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        return [spy, "record", "--rate", "400", "--format", "raw", "-o", str(out), "--", *relay]
    return [sys.executable, "-m", "cProfile", "-o", str(out), *relay[1:]]


def _count_instructions(
    run: Any, relay: RelayProcess, scenario: str, tunnels: int, raw: Path
) -> str:
    """Warm up, zero callgrind's counters, drive ``tunnels`` tunnels, dump: instructions each."""
    pid = relay.pids[-1]
    run(drive(relay.port, relay.pids, scenario, 300.0, inflight=16, limit=200))
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    # drive() counts the load generator's own warm-up tunnels too: they ran after the zeroing.
    done = run(drive(relay.port, relay.pids, scenario, 600.0, inflight=16, limit=tunnels))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dumps = sorted(raw.parent.glob(raw.name + ".*"), key=lambda p: p.stat().st_mtime)
    if not dumps or done <= 0:
        return f"callgrind: no dump or no tunnels ({dumps}, {done})"
    total = 0
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
            break
    return (
        f"{done} tunnels counted at 16 in flight: {total:,} user-space instructions, "
        f"{total / done:,.0f} per tunnel (dump: {dumps[-1]})"
    )


def summarize_collapsed(path: Path, top: int) -> str:
    """Self and inclusive shares per function from py-spy's collapsed ("raw") stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    by_file: collections.Counter[str] = collections.Counter()
    for frame, n in own.items():
        by_file[frame.rsplit(" (", 1)[-1].rstrip(")")] += n
    lines = [f"{total} samples", "", "self, by file:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in by_file.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def summarize_trace(path: Path, tunnels: int) -> str:
    data = json.loads(path.read_text())
    lines = [f"{tunnels} tunnels", "", "per tunnel:"]
    for name, n in sorted(data["counts"].items()):
        lines.append(f"  {n / tunnels:6.2f}  {name}")
    lines += ["", "wait_readable per tunnel, by call site and outcome:"]
    for site, n in sorted(data["waits"].items(), key=lambda kv: -kv[1]):
        if n / tunnels >= 0.01:
            lines.append(f"  {n / tunnels:6.2f}  {site}")
    return "\n".join(lines)


def summarize_cprofile(path: Path, tunnels: int, top: int) -> str:
    """Calls per tunnel of the counted functions, then the top functions by own time."""
    stats = pstats.Stats(str(path))
    rows = []
    for (file, _line, func), (_cc, calls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{Path(file).name}:{func}"
        rows.append((name, file, calls, tt, ct))
    lines = [f"{tunnels} tunnels", "", "calls per tunnel:"]
    for want in COUNTED:
        for name, file, calls, _tt, _ct in rows:
            if name.endswith(":" + want) or func_matches(name, want):
                if calls / tunnels >= 0.5:
                    lines.append(f"  {calls / tunnels:8.1f}  {name}  ({file})")
    total = sum(tt for *_, tt, _ct in rows) or 1.0
    lines += ["", "own time (share of profiled time, cProfile overhead included):"]
    for name, file, calls, tt, _ct in sorted(rows, key=lambda r: -r[3])[:top]:
        lines.append(f"  {tt / total:6.1%}  {calls / tunnels:8.1f}/tunnel  {name}  ({file})")
    return "\n".join(lines)


def func_matches(name: str, want: str) -> bool:
    # Built-in methods appear as "~:<method 'send' of '_socket.socket' objects>".
    if "." not in want:
        return False
    cls, meth = want.split(".", 1)
    return f"'{meth}' of" in name and cls in name


async def drive(
    port: int,
    pids: list[int],
    scenario: str,
    seconds: float,
    inflight: int = 64,
    limit: int = 10_000_000,
) -> int:
    gen = LoadGen("127.0.0.1", port, "ws", pids)
    if scenario == "pairing":
        result = await gen.pairing(inflight=inflight, duration=seconds, limit=limit)
    else:
        result = await gen.tunnel_life(inflight=inflight, duration=seconds, limit=limit)
    if result["errors"]:
        print(f"profile: {result['errors']} errors, first: {result['first_error']}")
    # Warm-up tunnels (8) ran before the measured ones; count them too, they are in the profile.
    return int(result["tunnels"]) + 8


def main(argv: list[str] | None = None) -> int:
    # As in bench.cli: the relay under test stops at once on SIGTERM (no load-balancer drain).
    os.environ.setdefault("HYBRID_RELAY_DRAIN_DELAY", "0")
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument(
        "--tool",
        choices=("py-spy", "cprofile", "trace", "callgrind"),
        default="py-spy",
        help="profiler",
    )
    parser.add_argument(
        "--scenario", choices=("pairing", "tunnel-life"), default="pairing", help="load to drive"
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "reactor", "tasks"),
        default=None,
        help="the relay's --engine (default: the relay's own default, auto)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to drive it")
    parser.add_argument("--top", type=int, default=25, help="functions listed per section")
    parser.add_argument(
        "--tunnels", type=int, default=2000, help="tunnels counted by --tool callgrind"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "runs" / "profile",
        help="where raw profiles and summaries go (bench/runs/profile, not in git)",
    )
    args = parser.parse_args(argv)
    if args.tool == "py-spy" and not (
        shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()
    ):
        parser.error("py-spy is not installed (pip install py-spy), or use --tool trace/cprofile")
    if args.tool == "callgrind" and not (
        shutil.which("valgrind") and shutil.which("callgrind_control")
    ):
        parser.error("valgrind is not installed (apt-get install valgrind)")
    raise_nofile_limit()
    cores = core_plan()
    args.out.mkdir(parents=True, exist_ok=True)
    ext = {"py-spy": "txt", "cprofile": "prof", "trace": "json", "callgrind": "out"}[args.tool]
    raw = (args.out / f"{args.scenario}-{args.tool}.{ext}").resolve()
    raw.unlink(missing_ok=True)
    relay = RelayProcess(
        "ours",
        _relay_argv(args.tool, raw),
        "ws",
        cores[0],
        None,
        args.out / "relay.log",
        env={
            "BENCH_TRACE_OUT": str(raw),
            # The Python profilers see only Python frames: they profile the plain-Python relay
            # unless told otherwise; callgrind counts whichever the checkout runs.
            **(
                {}
                if args.tool == "callgrind"
                else {compiled.ENV: os.environ.get(compiled.ENV, "0")}
            ),
            **({"HYBRID_RELAY_ENGINE": args.engine} if args.engine else {}),
        },
    )
    relay.start(timeout=60)
    affinity = os.sched_getaffinity(0)
    pin(cores[1])
    try:
        run: Any = asyncio.run
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
        if args.tool == "callgrind":
            summary = _count_instructions(run, relay, args.scenario, args.tunnels, raw)
        else:
            tunnels = run(drive(relay.port, relay.pids, args.scenario, args.seconds))
    finally:
        # SIGTERM to the relay alone (py-spy's child, or the cProfile'd interpreter): it shuts
        # down gracefully and the profiler, still running, writes its output.
        with contextlib.suppress(ProcessLookupError):
            os.kill(relay.pids[-1], signal.SIGTERM)
        deadline = time.monotonic() + 60
        while relay.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        relay.stop()
        os.sched_setaffinity(0, affinity)  # as it was: main() may run inside another program
    if args.tool == "callgrind":
        tunnels = args.tunnels + 8
    elif not raw.exists():
        print(f"profile: the profiler wrote nothing ({raw}); see {args.out / 'relay.log'}")
        return 1
    elif args.tool == "py-spy":
        summary = summarize_collapsed(raw, args.top)
    elif args.tool == "trace":
        summary = summarize_trace(raw, tunnels)
    else:
        summary = summarize_cprofile(raw, tunnels, args.top)
    text = f"{args.scenario}, {args.tool}, {tunnels} tunnels, pid {os.getpid()}\n{summary}\n"
    (args.out / f"{args.scenario}-{args.tool}-summary.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
