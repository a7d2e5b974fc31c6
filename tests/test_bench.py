"""Smoke tests of the relay benchmark suite (bench/): its pieces and a short quick-mode run."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_unless_ci_must_have

from bench import report
from bench.loadgen import LoadGen, summarize
from bench.procs import BenchError, RelayProcess, cpu_ns, rss_bytes
from bench.relays import before, default_relay_cmd, ensure_node_modules, ours, reference
from bench.wire import ws_frame

ROOT = Path(__file__).resolve().parents[1]


def run_on(spec, tmp_path: Path, op: str, **command):
    relay = RelayProcess(spec.name, spec.argv, spec.kind, None, spec.cwd, tmp_path / "relay.log")
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
            "pairing,transaction",
            "--references",
            "tcp",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    scenarios = data["relays"]["tcp"]["scenarios"]
    assert scenarios["pairing/64"]["ok"] and scenarios["transaction"]["transactions"] > 0
    assert "| figure |" in (tmp_path / "results.md").read_text()
    for png in ("throughput.png", "latency.png", "memory.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_ratios_are_ours_over_reference():
    data = {
        "relays": {
            "ours": {"scenarios": {"pairing/64": {"ok": True, "relay_cpu_us_per_tunnel": 300.0}}},
            "node": {"scenarios": {"pairing/64": {"ok": True, "relay_cpu_us_per_tunnel": 100.0}}},
        }
    }
    table = report.headline_markdown(data)
    assert "| relay CPU per tunnel (pairing, 64 in flight) | 300 µs | 100 µs | 3.00x |" in table
