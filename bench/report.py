"""Results output: results.json, results.md (absolute figures and ratios) and PNG plots.

Ratios are ours / reference for costs (CPU, memory, latency): 2.0x means our relay spends twice
what the reference spends on the same load in the same run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SIZES = (64, 1024, 16384)
SIZE_LABEL = {64: "64 B", 1024: "1 KiB", 16384: "16 KiB"}

#: (label, scenario key, field, unit, lower_is_better)
HEADLINES = [
    ("relay CPU per tunnel (pairing, 64 in flight)", "pairing/64", "relay_cpu_us_per_tunnel", "µs"),
    (
        "relay CPU per 1 KiB message (ping-pong, 64 tunnels)",
        "forwarding/pingpong/1024/64",
        "relay_cpu_us_per_message",
        "µs",
    ),
    (
        "relay CPU per 16 KiB message (ping-pong, 64 tunnels)",
        "forwarding/pingpong/16384/64",
        "relay_cpu_us_per_message",
        "µs",
    ),
    (
        "relay CPU per 1 KiB message (streaming, 64 tunnels)",
        "forwarding/stream/1024/64",
        "relay_cpu_us_per_message",
        "µs",
    ),
    (
        "relay CPU per 16 KiB message (streaming, 64 tunnels)",
        "forwarding/stream/16384/64",
        "relay_cpu_us_per_message",
        "µs",
    ),
    (
        "memory per waiting tunnel (average at largest level)",
        "idle",
        "bytes_per_waiting_tunnel",
        "KiB",
    ),
    (
        "memory per waiting tunnel (marginal, last level step)",
        "idle",
        "marginal_bytes_per_waiting_tunnel",
        "KiB",
    ),
    ("pairing p99 latency, 64 in flight", "pairing/64", "p99_ms", "ms"),
    ("pairing throughput, 64 in flight", "pairing/64", "tunnels_per_s", "tunnels/s"),
    ("relay CPU per full hybrid transaction", "transaction", "relay_cpu_us_per_transaction", "µs"),
    ("relay share of transaction CPU", "transaction", "relay_share", "%"),
]
#: Higher-is-better figures: their ratio is still ours / reference, read the other way.
HIGHER_IS_BETTER = {"tunnels_per_s"}


def value(data: dict[str, Any], relay: str, key: str, field: str) -> float | None:
    scenario = data["relays"].get(relay, {}).get("scenarios", {}).get(key)
    if not scenario or not scenario.get("ok"):
        return None
    if key == "idle":
        levels = [lv for lv in scenario["levels"] if lv["waiting"]]
        return levels[-1].get(field) if levels else None
    return scenario.get(field)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "KiB":
        return f"{v / 1024:.1f} KiB"
    if unit == "%":
        return f"{v:.0%}"
    if unit == "tunnels/s":
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def relay_names(data: dict[str, Any]) -> list[str]:
    return list(data["relays"])


def headline_markdown(data: dict[str, Any]) -> str:
    names = relay_names(data)
    refs = [n for n in names if n != "ours"]
    has_ours = "ours" in names
    head = ["figure", *names] + ([f"ours / {r}" for r in refs] if has_ours else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, field, unit in HEADLINES:
        vals = [value(data, n, key, field) for n in names]
        row = [label, *(fmt(v, unit) for v in vals)]
        if has_ours:
            ours_v = vals[names.index("ours")]
            row += [ratio(ours_v, value(data, r, key, field)) for r in refs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"


def details_markdown(data: dict[str, Any]) -> str:
    names = relay_names(data)
    parts: list[str] = []

    rows = []
    for inflight in (1, 16, 64):
        for n in names:
            s = data["relays"][n].get("scenarios", {}).get(f"pairing/{inflight}")
            if not s or not s.get("ok"):
                continue
            rows.append(
                [
                    str(inflight),
                    n,
                    _num(s["tunnels_per_s"]),
                    _num(s["p50_ms"]),
                    _num(s["p99_ms"]),
                    _num(s["relay_cpu_us_per_tunnel"]),
                    _pct(s["relay_busy"]),
                    _pct(s["loadgen_busy"]),
                    str(s["errors"]),
                ]
            )
    if rows:
        head = ["in flight", "relay", "tunnels/s", "p50 ms", "p99 ms", "relay µs CPU/tunnel"]
        head += ["relay busy", "loadgen busy", "errors"]
        parts.append("### (a) Pairing: complete tunnels\n\n" + _table(head, rows))

    rows = []
    for mode in ("stream", "pingpong"):
        for tunnels in (1, 64):
            for size in SIZES:
                for n in names:
                    key = f"forwarding/{mode}/{size}/{tunnels}"
                    s = data["relays"][n].get("scenarios", {}).get(key)
                    if not s or not s.get("ok"):
                        continue
                    rows.append(
                        [
                            "streaming" if mode == "stream" else "ping-pong",
                            SIZE_LABEL[size],
                            str(tunnels),
                            n,
                            _num(s["messages_per_s"]),
                            _num(s["mb_per_s"]),
                            _num(s["p50_ms"]),
                            _num(s["p99_ms"]),
                            _num(s["relay_cpu_us_per_message"]),
                            _pct(s["relay_busy"]),
                            _pct(s["loadgen_busy"]),
                        ]
                    )
    if rows:
        head = ["mode", "size", "tunnels", "relay", "msg/s", "MB/s", "p50 ms", "p99 ms"]
        head += ["relay µs CPU/msg", "relay busy", "loadgen busy"]
        parts.append(
            "### (b) Forwarding\n\nStreaming latency is one-way under a window of messages in "
            "flight per tunnel; ping-pong latency is the round trip (two relayed messages).\n\n"
            + _table(head, rows)
        )

    rows = []
    for n in names:
        s = data["relays"][n].get("scenarios", {}).get("idle")
        if not s or not s.get("ok"):
            continue
        for lv in s["levels"]:
            rows.append(
                [
                    n,
                    f"{lv['waiting']:,}",
                    f"{lv['rss_bytes'] / 2**20:.1f}",
                    f"{lv['bytes_per_waiting_tunnel'] / 1024:.1f}" if lv["waiting"] else "—",
                    f"{lv['marginal_bytes_per_waiting_tunnel'] / 1024:.1f}"
                    if lv["waiting"]
                    else "—",
                    _num(lv.get("relay_cpu_us_per_open")),
                    _num(lv["p50_ms"]),
                    _num(lv["p99_ms"]),
                ]
            )
    if rows:
        head = ["relay", "waiting tunnels", "RSS MiB", "KiB per waiting tunnel", "marginal KiB"]
        head += ["relay µs CPU/open", "fresh pairing p50 ms", "fresh pairing p99 ms"]
        parts.append("### (c) Idle capacity\n\n" + _table(head, rows))

    rows = []
    for n in names:
        s = data["relays"][n].get("scenarios", {}).get("transaction")
        if not s or not s.get("ok"):
            continue
        rows.append(
            [
                n,
                _num(s["transactions_per_s"]),
                _num(s["p50_ms"]),
                _num(s["p99_ms"]),
                _num(s["relay_cpu_us_per_transaction"]),
                _num(s["loadgen_cpu_us_per_transaction"]),
                _pct(s["relay_share"]),
            ]
        )
    if rows:
        head = ["relay", "transactions/s", "p50 ms", "p99 ms", "relay µs CPU/txn"]
        head += ["endpoints µs CPU/txn", "relay share"]
        parts.append(
            "### (d) Full hybrid transaction (Noise KNpsk0, getInfo, one CTAP exchange)\n\n"
            "Both endpoints run in the load generator, so 'endpoints' is the CPU a desktop and "
            "a phone spend together and 'relay share' is relay / (relay + endpoints).\n\n"
            + _table(head, rows)
        )

    failures = [(n, r["error"]) for n, r in data["relays"].items() if r.get("error")]
    failures += [
        (n, f"{key}: {s.get('error')}")
        for n, r in data["relays"].items()
        for key, s in r.get("scenarios", {}).items()
        if not s.get("ok")
    ]
    if failures:
        parts.append("### Failures\n\n" + "\n".join(f"- {n}: {e}" for n, e in failures))
    return "\n\n".join(parts)


def loadgen_peak(data: dict[str, Any]) -> tuple[float, str, str] | None:
    """(busy fraction, relay, scenario) of the load generator's busiest measured window.

    The transaction scenario is left out: there the load generator is both endpoints doing
    Noise and AES-GCM, so being busy is the workload, not a measuring limit.
    """
    peaks = [
        (s["loadgen_busy"], relay, key)
        for relay, r in data["relays"].items()
        for key, s in r.get("scenarios", {}).items()
        if s.get("ok") and s.get("loadgen_busy") is not None and key != "transaction"
    ]
    return max(peaks) if peaks else None


def machine_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    pinning = data.get("pinning", {})
    lines = [
        f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
        f"- versions: {versions}",
        f"- relay pinned to cores {pinning.get('relay') or 'any'}, load generator to "
        f"{pinning.get('loadgen') or 'any'}; open-file limit {data.get('open_file_limit')}",
        f"- {data['mode']} run at {data['generated']}, {data.get('elapsed_s', '?')} s in total",
    ]
    if "load_average_at_start" in m:
        lines.append(
            f"- load average (1/5/15 min) at start {m['load_average_at_start']}, at end "
            f"{m.get('load_average_at_end')}: other work on the machine slows throughput and "
            "latency more than it moves CPU per unit of work"
        )
    busiest = loadgen_peak(data)
    if busiest:
        verdict = "not the bottleneck" if busiest[0] < 0.9 else "SATURATED: throughput is a floor"
        lines.append(
            f"- load generator: busiest at {busiest[0]:.0%} of its core ({busiest[1]}, "
            f"{busiest[2]}): {verdict}"
        )
    for name, r in data["relays"].items():
        lines.append(f"- `{name}`: `{r['command']}` ({r.get('note', '')})")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- `{name}` skipped: {why}")
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    return (
        "# Relay benchmark results\n\n"
        "Reproduce with `python -m bench` (or `./dev bench`; `--quick` for a short run). Relay CPU "
        "is read from /proc for the relay's process tree over each measured window and divided "
        "by the work done; it does not depend on the load generator's speed. Ratios are "
        "ours / reference on the same load in the same run (for costs, lower is better). `tcp` "
        "is a raw TCP copy loop with length-prefixed frames: a floor, not a WebSocket relay.\n\n"
        f"{machine_markdown(data)}\n\n## Headline\n\n{headline_markdown(data)}\n\n"
        f"## Details\n\n{details_markdown(data)}\n\n"
        "Plots: `throughput.png` (throughput and CPU per message by size), `latency.png` "
        "(latency distributions), `memory.png` (memory by waiting tunnels).\n"
    )


def _legend(ax: Any) -> None:
    """A legend only when something was plotted (a partial run leaves some panels empty)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def plots(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    names = relay_names(data)
    written = []

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, mode in enumerate(("stream", "pingpong")):
        for n in names:
            xs, mbs, cpus = [], [], []
            for size in SIZES:
                s = data["relays"][n].get("scenarios", {}).get(f"forwarding/{mode}/{size}/64")
                if s and s.get("ok"):
                    xs.append(size)
                    mbs.append(s["mb_per_s"])
                    cpus.append(s["relay_cpu_us_per_message"])
            if xs:
                axes[0][col].plot(xs, mbs, marker="o", label=n)
                axes[1][col].plot(xs, cpus, marker="o", label=n)
        title = "streaming" if mode == "stream" else "ping-pong"
        axes[0][col].set_title(f"{title}, 64 tunnels: throughput")
        axes[0][col].set_ylabel("MB/s")
        axes[1][col].set_title(f"{title}, 64 tunnels: relay CPU per message")
        axes[1][col].set_ylabel("µs CPU / message")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(SIZES), [SIZE_LABEL[s] for s in SIZES])
            ax.set_xlabel("message size")
            ax.grid(True, alpha=0.3)
            _legend(ax)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
    fig.tight_layout()
    written.append(out / "throughput.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title in (
        (axes[0], "pairing/64", "complete tunnel, 64 in flight"),
        (axes[1], "forwarding/pingpong/1024/64", "1 KiB ping-pong round trip, 64 tunnels"),
    ):
        for n in names:
            s = data["relays"][n].get("scenarios", {}).get(key)
            if s and s.get("ok") and s.get("cdf"):
                ax.plot([p[1] for p in s["cdf"]], [p[0] for p in s["cdf"]], label=n)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("percentile")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    written.append(out / "latency.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for n in names:
        s = data["relays"][n].get("scenarios", {}).get("idle")
        if s and s.get("ok"):
            base = s["levels"][0]["rss_bytes"]
            xs = [lv["waiting"] for lv in s["levels"]]
            ys = [(lv["rss_bytes"] - base) / 2**20 for lv in s["levels"]]
            ax.plot(xs, ys, marker="o", label=n)
    ax.set_xlabel("waiting tunnels")
    ax.set_ylabel("relay RSS growth (MiB)")
    ax.set_title("memory by waiting tunnels")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    written.append(out / "memory.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def write_all(data: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    text = json.dumps(data, indent=1, ensure_ascii=False)
    # One line per CDF point instead of four keeps the file readable and its diffs small.
    text = re.sub(r"\[\s+(-?[\d.e+-]+),\s+(-?[\d.e+-]+)\s+\]", r"[\1, \2]", text)
    paths[0].write_text(text + "\n")
    paths[1].write_text(markdown(data))
    try:
        paths += plots(data, out)
    except ImportError:
        print("bench: matplotlib is not installed; skipping plots")
    return paths
