"""Smoke tests of the relay benchmark suite (bench/): its pieces and a short quick-mode run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli, report, stats
from bench.loadgen import TUNNEL_LIFE, LoadGen, summarize
from bench.procs import BenchError, RelayProcess, cpu_ns, rss_bytes
from bench.relays import (
    before,
    default_relay_cmd,
    ensure_go_relay,
    ensure_node_modules,
    ours,
    reference,
)
from bench.wire import ws_frame
from tests.conftest import skip_unless_ci_must_have

ROOT = Path(__file__).resolve().parents[1]


def run_on(spec, tmp_path: Path, op: str, cores=None, **command):
    relay = RelayProcess(
        spec.name, spec.argv, spec.kind, cores, spec.cwd, tmp_path / "relay.log", env=spec.env
    )
    relay.start(timeout=20)
    try:
        gen = LoadGen("127.0.0.1", relay.port, spec.kind, relay.pids)
        return asyncio.run(getattr(gen, op)(**command))
    finally:
        relay.stop()
        assert not relay.alive()


def test_ws_frame_lengths_and_zero_mask():
    assert ws_frame(2, b"ab") == b"\x82\x82\x00\x00\x00\x00ab"
    assert ws_frame(2, bytes(200))[:4] == b"\x82\xfe\x00\xc8"
    assert ws_frame(2, bytes(70000))[:10] == b"\x82\xff" + (70000).to_bytes(8, "big")


def test_summarize_percentiles():
    out = summarize([i / 1000 for i in range(1, 101)])
    assert out["p50_ms"] == 51.0 and out["p99_ms"] == 100.0 and out["max_ms"] == 100.0
    assert out["cdf"][0] == [0, 1.0]
    assert summarize([])["p99_ms"] is None


def test_proc_readers_see_this_process():
    import os

    assert cpu_ns([os.getpid()]) > 0
    assert rss_bytes([os.getpid()]) > 1 << 20


def test_relay_that_never_listens_is_reported(tmp_path):
    relay = RelayProcess(
        "broken", [sys.executable, "-c", "print('no')"], "ws", None, None, tmp_path / "x.log"
    )
    with pytest.raises(BenchError, match="did not report listening"):
        relay.start(timeout=5)


@pytest.mark.parametrize("name", ["websockets", "tcp"])
def test_reference_relays_pair_and_forward(tmp_path, name):
    spec = reference(name)
    pairing = run_on(spec, tmp_path, "pairing", inflight=4, duration=0.2, limit=40)
    assert pairing["errors"] == 0 and pairing["tunnels"] > 0
    assert pairing["relay_cpu_us_per_tunnel"] > 0
    forward = run_on(
        spec, tmp_path, "forwarding", tunnels=2, size=1024, mode="stream", duration=0.2, limit=2000
    )
    assert forward["messages"] > 0 and forward["relay_cpu_us_per_message"] > 0


def test_node_reference_pairs(tmp_path):
    # .ci/apt.d/bench.txt installs node and npm in CI, so there a missing one is a failure.
    skip_unless_ci_must_have(shutil.which("node") is not None, "node")
    why = ensure_node_modules(log=lambda *_: None)
    skip_unless_ci_must_have(not why, f"the node reference relay's modules ({why})")
    result = run_on(reference("node"), tmp_path, "pairing", inflight=4, duration=0.2, limit=40)
    assert result["errors"] == 0 and result["tunnels"] > 0


def test_go_reference_builds_pairs_and_forwards(tmp_path):
    binary, why = ensure_go_relay(log=lambda *_: None)
    skip_unless_ci_must_have(binary is not None, why or "the go reference relay's build")
    spec = reference("go", binary)
    # Pinned to one core like in a run: GOMAXPROCS must follow the affinity.
    core = {min(os.sched_getaffinity(0))}
    life = run_on(spec, tmp_path, "tunnel_life", cores=core, inflight=4, duration=0.2, limit=20)
    assert life["errors"] == 0 and life["tunnels"] > 0, life
    assert life["messages_per_tunnel"] == len(TUNNEL_LIFE)
    forward = run_on(
        spec,
        tmp_path,
        "forwarding",
        tunnels=2,
        size=16384,
        mode="pingpong",
        duration=0.2,
        limit=200,
    )
    assert forward["messages"] > 0 and forward["relay_cpu_us_per_message"] > 0


def test_go_relay_gets_gomaxprocs_from_the_pinning(tmp_path):
    script = "import os, json; print(json.dumps({'event': 'listening', 'port': 1, "
    script += "'g': os.environ.get('GOMAXPROCS')}), flush=True); import time; time.sleep(5)"
    relay = RelayProcess(
        "env",
        [sys.executable, "-c", script],
        "ws",
        {min(os.sched_getaffinity(0))},
        None,
        tmp_path / "env.log",
    )
    relay.start(timeout=10)
    try:
        assert '"g": "1"' in (tmp_path / "env.log").read_text()
    finally:
        relay.stop()


def test_our_relay_under_the_suite(tmp_path):
    spec = ours(default_relay_cmd())
    result = run_on(
        spec,
        tmp_path,
        "forwarding",
        tunnels=2,
        size=16384,
        mode="pingpong",
        duration=0.3,
        limit=500,
    )
    assert result["messages"] > 0, result
    idle = run_on(spec, tmp_path, "idle", levels=[50], probes=3, settle=0.05)
    assert idle["levels"][1]["alive"] == 50


def _git_head() -> str | None:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def test_before_revision_runs_from_its_own_extracted_tree(tmp_path):
    head = _git_head()
    skip_unless_ci_must_have(head is not None, "a git checkout")
    assert head is not None
    spec = before(head, tmp_path)
    assert spec.name == "before" and (Path(spec.cwd) / "relay" / "__main__.py").is_file()
    result = run_on(
        spec, tmp_path, "forwarding", tunnels=1, size=64, mode="pingpong", duration=0.2, limit=50
    )
    assert result["messages"] > 0, result


def test_unknown_before_revision_is_a_clear_error(tmp_path):
    skip_unless_ci_must_have(_git_head() is not None, "a git checkout")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--before",
            "no-such-rev",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot extract revision 'no-such-rev'" in done.stderr
    assert "Traceback" not in done.stderr


def test_quick_cli_writes_results(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--no-ours",
            "--only",
            "tunnel-life,transaction",
            "--repeat",
            "2",
            "--references",
            "tcp",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mode"] == "quick" and data["repeat"] == 2
    assert data["revision"]["commit"] == _git_head()
    scenarios = data["relays"]["tcp"]["scenarios"]
    assert scenarios["tunnel-life"]["ok"] and scenarios["transaction"]["transactions"] > 0
    assert scenarios["tunnel-life"]["repetitions"] == 2
    lo, hi = scenarios["tunnel-life"]["spread"]["relay_cpu_us_per_tunnel"]
    assert lo <= scenarios["tunnel-life"]["relay_cpu_us_per_tunnel"] <= hi
    assert len(data["relays"]["tcp"]["repetitions"]["tunnel-life"]) == 2
    md = (tmp_path / "results.md").read_text()
    assert "| figure |" in md and "quick run of" in md and "tcp floor (not WebSocket)" in md
    for png in ("tunnels.png", "latency.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # Scenarios that did not run get no (empty) plot.
    assert not (tmp_path / "throughput.png").exists() and not (tmp_path / "memory.png").exists()


def test_ratios_are_ours_over_reference():
    data = {
        "relays": {
            "ours": {"scenarios": {"pairing/64": {"ok": True, "relay_cpu_us_per_tunnel": 300.0}}},
            "node": {"scenarios": {"pairing/64": {"ok": True, "relay_cpu_us_per_tunnel": 100.0}}},
        }
    }
    table = report.headline_markdown(data)
    assert "| relay CPU per tunnel (pairing, 64 in flight) | 300 µs | 100 µs | 3.00x |" in table


def test_runs_go_to_scratch_unless_published():
    out, logs = cli.output_dirs(cli.parse_args(["--quick"]))
    assert out.parent == cli.RUNS_DIR and out.name.endswith("-quick") and logs == out / "logs"
    out, logs = cli.output_dirs(cli.parse_args(["--publish"]))
    assert out == cli.RESULTS_DIR and logs.parent.parent == cli.RUNS_DIR


def test_out_cannot_name_the_committed_results(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(ROOT / "bench" / "results")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--publish" in done.stderr and "Traceback" not in done.stderr


def test_repetitions_fold_into_medians_with_spread():
    runs = [
        {"ok": True, "relay_cpu_us_per_tunnel": v, "errors": e, "note": "x", "cdf": [[50, v]]}
        for v, e in ((300.0, 0), (100.0, 1), (200.0, 0))
    ]
    runs.append({"ok": False, "error": "WireError: boom"})
    out = stats.aggregate(runs)
    assert out["relay_cpu_us_per_tunnel"] == 200.0
    assert out["spread"]["relay_cpu_us_per_tunnel"] == [100.0, 300.0]
    assert out["errors"] == 1 and out["note"] == "x" and out["cdf"] == [[50, 200.0]]
    assert out["repetitions"] == 3 and out["failures"] == ["WireError: boom"]
    idle = stats.aggregate(
        [{"ok": True, "levels": [{"waiting": 10, "rss_bytes": b}]} for b in (5, 9, 7)]
    )
    assert idle["levels"][0]["rss_bytes"] == 7 and idle["levels"][0]["spread"]["rss_bytes"] == [
        5,
        9,
    ]
    assert stats.aggregate([{"ok": False, "error": "e"}]) == {
        "ok": False,
        "error": "e",
        "repetitions": 0,
        "failed_repetitions": 1,
    }


def test_relay_order_rotates():
    items = ["a", "b", "c"]
    assert [cli.rotated(items, k) for k in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_headline_shows_spread_and_floor_label():
    def scen(v, lo, hi):
        return {
            "pairing/64": {
                "ok": True,
                "relay_cpu_us_per_tunnel": v,
                "spread": {"relay_cpu_us_per_tunnel": [lo, hi]},
            }
        }

    data = {
        "relays": {
            "tcp": {"scenarios": scen(50.0, 40.0, 60.0)},
            "ours": {"scenarios": scen(300.0, 280.0, 350.0)},
            "go": {"scenarios": scen(150.0, 140.0, 160.0)},
        }
    }
    table = report.headline_markdown(data)
    assert "| figure | ours | go | tcp floor (not WebSocket) | ours / go | ours / tcp |" in table
    assert "| 300 µs (280–350) | 150 µs (140–160) | 50 µs (40–60) | 2.00x | 6.00x |" in table


def _trace(tmp_path, engine):
    from bench import profile

    out = tmp_path / engine
    code = profile.main(
        ["--tool", "trace", "--scenario", "tunnel-life", "--seconds", "0.3", "--out", str(out),
         "--engine", engine]
    )  # fmt: skip
    assert code == 0
    summary = (out / "tunnel-life-trace-summary.txt").read_text()
    data = json.loads((out / "tunnel-life-trace.json").read_text())
    return summary, data


def test_profile_trace_counts_task_steps_and_waits(tmp_path):
    # One task per connection: each connection's task waits in receive_batch.
    summary, data = _trace(tmp_path, "tasks")
    assert "task steps" in summary and "receive_batch -> woken" in summary
    assert data["counts"]["tasks spawned"] >= 2 and data["waits"]
    # The reactor: no task per connection, one wait (on its epoll set) for many events.
    summary, data = _trace(tmp_path, "reactor")
    assert "_run_loop -> woken" in summary and "receive_batch" not in summary
    tunnels = int(summary.split(", ")[2].split()[0])  # "tunnel-life, trace, N tunnels, ..."
    assert tunnels > 0 and data["counts"]["tasks spawned"] < tunnels


def test_profile_callgrind_counts_instructions_per_tunnel(tmp_path):
    """``--tool callgrind``: an exact count of the relay's user-space instructions per tunnel."""
    from bench import profile

    code = profile.main(
        ["--tool", "callgrind", "--scenario", "pairing", "--tunnels", "120", "--out",
         str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    summary = (tmp_path / "pairing-callgrind-summary.txt").read_text()
    match = re.search(r"128 tunnels counted at 16 in flight: .*?, ([\d,]+) per tunnel", summary)
    assert match, summary
    # A tunnel is some hundred thousand instructions of Python and C; zero or absurd means the
    # counters were not zeroed or not dumped.
    assert 50_000 < int(match[1].replace(",", "")) < 5_000_000
