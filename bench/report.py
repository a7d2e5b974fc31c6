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
#: Column order: ours first, then the WebSocket references, the raw TCP floor last.
ORDER = ("ours", "before", "websockets", "node", "go", "tcp")
FLOOR = "tcp"
FLOOR_LABEL = "tcp floor (not WebSocket)"

#: (label, scenario key, field, unit)
HEADLINES = [
    (
        "relay CPU per hybrid tunnel life (64 in flight)",
        "tunnel-life",
        "relay_cpu_us_per_tunnel",
        "µs",
    ),
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


def _scenario(data: dict[str, Any], relay: str, key: str) -> dict[str, Any] | None:
    scenario = data["relays"].get(relay, {}).get("scenarios", {}).get(key)
    if not scenario or not scenario.get("ok"):
        return None
    if key == "idle":
        levels = [lv for lv in scenario["levels"] if lv["waiting"]]
        return levels[-1] if levels else None
    return scenario


def value(data: dict[str, Any], relay: str, key: str, field: str) -> float | None:
    """The median over repetitions of one figure (None when not measured)."""
    scenario = _scenario(data, relay, key)
    return None if scenario is None else scenario.get(field)


def spread(data: dict[str, Any], relay: str, key: str, field: str) -> tuple[float, float] | None:
    """(min, max) of one figure over the repetitions, or None for a single repetition."""
    scenario = _scenario(data, relay, key)
    if scenario is None:
        return None
    lo_hi = scenario.get("spread", {}).get(field)
    return (lo_hi[0], lo_hi[1]) if lo_hi else None


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


def _bare(v: float, unit: str) -> str:
    """A spread bound without its unit."""
    if unit == "KiB":
        return f"{v / 1024:.1f}"
    if unit == "%":
        return f"{v * 100:.0f}"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def fmt_spread(v: float | None, lo_hi: tuple[float, float] | None, unit: str) -> str:
    """'487 µs (450–520)': the median and, when repeated, the min–max over repetitions."""
    text = fmt(v, unit)
    if v is None or lo_hi is None:
        return text
    return f"{text} ({_bare(lo_hi[0], unit)}–{_bare(lo_hi[1], unit)})"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def relay_names(data: dict[str, Any]) -> list[str]:
    names = list(data["relays"])
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def column(name: str) -> str:
    return FLOOR_LABEL if name == FLOOR else name


def run_label(data: dict[str, Any]) -> str:
    """'full run of 1a2b3c4d5e6f, median of 3': what every table and plot names."""
    rev = data.get("revision") or {}
    commit = (rev.get("commit") or "unknown commit")[:12]
    if rev.get("dirty"):
        commit += " + uncommitted changes"
    reps = data.get("repeat", 1)
    return f"{data.get('mode', '?')} run of {commit}, median of {reps}, {data.get('generated', '')}"


def headline_markdown(data: dict[str, Any]) -> str:
    names = relay_names(data)
    refs = [n for n in names if n != "ours"]
    has_ours = "ours" in names
    head = ["figure", *map(column, names)] + ([f"ours / {r}" for r in refs] if has_ours else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, field, unit in HEADLINES:
        vals = [value(data, n, key, field) for n in names]
        if all(v is None for v in vals):
            continue  # scenario not run: no row of dashes
        row = [label]
        row += [
            fmt_spread(v, spread(data, n, key, field), unit)
            for n, v in zip(names, vals, strict=True)
        ]
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


def _cell(s: dict[str, Any], field: str) -> str:
    """A table cell: the median and, when repeated, its min–max."""
    v = s.get(field)
    if v is None:
        return "—"
    lo_hi = s.get("spread", {}).get(field)
    text = _num(v)
    return f"{text} ({_num(lo_hi[0])}–{_num(lo_hi[1])})" if lo_hi else text


def _tunnel_rows(data: dict[str, Any], names: list[str], keys: list[str]) -> list[list[str]]:
    rows = []
    for key in keys:
        for n in names:
            s = data["relays"][n].get("scenarios", {}).get(key)
            if not s or not s.get("ok"):
                continue
            rows.append(
                [
                    str(s["inflight"]),
                    column(n),
                    _cell(s, "tunnels_per_s"),
                    _cell(s, "p50_ms"),
                    _cell(s, "p99_ms"),
                    _cell(s, "relay_cpu_us_per_tunnel"),
                    _pct(s["relay_busy"]),
                    _pct(s["loadgen_busy"]),
                    str(s["errors"]),
                ]
            )
    return rows


TUNNEL_HEAD = ["in flight", "relay", "tunnels/s", "p50 ms", "p99 ms", "relay µs CPU/tunnel"]
TUNNEL_HEAD += ["relay busy", "loadgen busy", "errors"]


def details_markdown(data: dict[str, Any]) -> str:
    names = relay_names(data)
    parts: list[str] = []

    rows = _tunnel_rows(data, names, ["tunnel-life"])
    if rows:
        parts.append(
            "### (e) The life of a hybrid tunnel\n\n"
            "Pair (`/new`, `/connect`), then the QR flow's messages in order, each awaited: Noise "
            "message 1 and 2 (81 B each), the post-handshake message (144 B), a CTAP request "
            "(320 B) and its response (1,040 B), the shutdown message (48 B); then the phone "
            "closes and the relay closes the desktop's side. Relay CPU per tunnel here is what an "
            "operator pays per sign-in.\n\n" + _table(TUNNEL_HEAD, rows)
        )

    rows = _tunnel_rows(data, names, [f"pairing/{n}" for n in (1, 16, 64)])
    if rows:
        parts.append("### (a) Pairing: complete tunnels\n\n" + _table(TUNNEL_HEAD, rows))

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
                            column(n),
                            _cell(s, "messages_per_s"),
                            _cell(s, "mib_per_s"),
                            _cell(s, "p50_ms"),
                            _cell(s, "p99_ms"),
                            _cell(s, "relay_cpu_us_per_message"),
                            _pct(s["relay_busy"]),
                            _pct(s["loadgen_busy"]),
                        ]
                    )
    if rows:
        head = ["mode", "size", "tunnels", "relay", "msg/s", "MiB/s", "p50 ms", "p99 ms"]
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
            kib = {
                f: {"v": lv.get(f), "spread": lv.get("spread", {}).get(f)}
                for f in ("bytes_per_waiting_tunnel", "marginal_bytes_per_waiting_tunnel")
            }

            def _kib(f: str, kib: dict[str, Any] = kib) -> str:
                v, lo_hi = kib[f]["v"], kib[f]["spread"]
                if v is None:
                    return "—"
                text = f"{v / 1024:.1f}"
                return f"{text} ({lo_hi[0] / 1024:.1f}–{lo_hi[1] / 1024:.1f})" if lo_hi else text

            rows.append(
                [
                    column(n),
                    f"{lv['waiting']:,}",
                    f"{lv['rss_bytes'] / 2**20:.1f}",
                    _kib("bytes_per_waiting_tunnel") if lv["waiting"] else "—",
                    _kib("marginal_bytes_per_waiting_tunnel") if lv["waiting"] else "—",
                    _num(lv.get("relay_cpu_us_per_open")),
                    _cell(lv, "p50_ms"),
                    _cell(lv, "p99_ms"),
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
                column(n),
                _cell(s, "transactions_per_s"),
                _cell(s, "p50_ms"),
                _cell(s, "p99_ms"),
                _cell(s, "relay_cpu_us_per_transaction"),
                _cell(s, "loadgen_cpu_us_per_transaction"),
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
    for n, r in data["relays"].items():
        for key, s in r.get("scenarios", {}).items():
            if not s.get("ok"):
                failures.append((n, f"{key}: {s.get('error')}"))
            for why in s.get("failures", []):
                failures.append((n, f"{key} (one repetition): {why}"))
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
    rev = data.get("revision") or {}
    lines = [
        f"- measured: commit `{rev.get('commit') or 'unknown'}` ({rev.get('subject') or '?'})"
        + (", **with uncommitted changes**" if rev.get("dirty") else ""),
        f"- **{data['mode']} run**, every figure the median of {data.get('repeat', 1)} "
        "interleaved repetitions (relay order rotated per scenario and repetition, fresh relay "
        "processes each repetition), min–max in parentheses",
        f"- machine: {m['cpu']}, {m['cores']} cores, "
        f"{m.get('memory_gib', '?')} GiB RAM, {m.get('os') or 'Linux'}, kernel {m['kernel']}",
        f"- versions: {versions}",
        f"- relay pinned to cores {pinning.get('relay') or 'any'}, load generator to "
        f"{pinning.get('loadgen') or 'any'}; open-file limit {data.get('open_file_limit')}",
        f"- {data['mode']} run at {data['generated']}, {data.get('elapsed_s', '?')} s in total",
    ]
    native = data.get("ours_compiled")
    if native is not None:
        lines.append(
            "- our relay: "
            + (
                "its per-connection modules compiled with mypyc (`python -m relay.native`)"
                if native.get("active")
                else f"plain Python ({native.get('reason')})"
            )
        )
    if "load_average_at_start" in m:
        lines.append(
            f"- load average (1/5/15 min) at start {m['load_average_at_start']}, at end "
            f"{m.get('load_average_at_end')} on {m['cores']} cores: other work on the machine "
            "slows throughput and latency most, but inflates CPU per unit of work too (shared "
            "cores and caches); compare relays by the ratios within one run"
        )
    busiest = loadgen_peak(data)
    if busiest:
        verdict = "not the bottleneck" if busiest[0] < 0.9 else "SATURATED: throughput is a floor"
        lines.append(
            f"- load generator: busiest at {busiest[0]:.0%} of its core ({busiest[1]}, "
            f"{busiest[2]}): {verdict}"
        )
    if data.get("note"):
        lines.append(f"- conditions: {data['note']}")
    for name, r in data["relays"].items():
        lines.append(f"- `{name}`: `{r['command']}` ({r.get('note', '')})")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- `{name}` skipped: {why}")
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    return (
        f"# Relay benchmark results ({run_label(data)})\n\n"
        "Reproduce with `python -m bench` (or `./dev bench`; `--quick` for a short run). Relay CPU "
        "is read from /proc for the relay's process tree over each measured window and divided "
        "by the work done; it does not depend on the load generator's speed. Ratios are "
        "ours / reference on the same load in the same run (for costs, lower is better). `tcp` "
        "is a raw TCP copy loop with length-prefixed frames: a floor, not a WebSocket relay.\n\n"
        f"{machine_markdown(data)}\n\n## Headline\n\n{headline_markdown(data)}\n\n"
        f"## Details\n\n{details_markdown(data)}\n\n"
        f"Plots (those whose scenarios ran): {', '.join(f'`{p}`' for p in PLOTS)}.\n"
    )


PLOTS = ("tunnels.png", "throughput.png", "latency.png", "memory.png")
COLOURS = {
    "ours": "tab:blue",
    "before": "tab:cyan",
    "websockets": "tab:orange",
    "node": "tab:green",
    "go": "tab:red",
    "tcp": "dimgray",
}


def _style(name: str) -> dict[str, Any]:
    """Line style per relay; the TCP floor dashed and grey, labelled as a floor."""
    style: dict[str, Any] = {"label": column(name), "color": COLOURS.get(name)}
    if name == FLOOR:
        style["linestyle"] = "--"
    return style


def _yerr(values: list[float], spreads: list[list[float] | None]) -> list[list[float]]:
    """Asymmetric error bars (min–max around the median); zero-length where not repeated."""
    lows = [v - sp[0] if sp else 0.0 for v, sp in zip(values, spreads, strict=True)]
    highs = [sp[1] - v if sp else 0.0 for v, sp in zip(values, spreads, strict=True)]
    return [lows, highs]


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _log_axis(axis: Any) -> None:
    """Log scale with labels at 1-2-5 steps as plain numbers (no 10^x, no crowded minors)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
    axis.set_minor_formatter(NullFormatter())


def _ok(data: dict[str, Any], name: str, key: str) -> dict[str, Any] | None:
    s = data["relays"][name].get("scenarios", {}).get(key)
    return s if s and s.get("ok") else None


def plots(data: dict[str, Any], out: Path) -> list[Path]:
    """Write the plots whose scenarios ran (a partial run leaves out the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = relay_names(data)
    label = run_label(data)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(label, fontsize="small")
        fig.tight_layout()
        written.append(out / name)
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)

    # Relay CPU per tunnel: the operator's figure, bars with min–max.
    keys = [
        (k, t)
        for k, t in (("tunnel-life", "hybrid tunnel life"), ("pairing/64", "pairing only"))
        if any(_ok(data, n, k) for n in names)
    ]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.5), squeeze=False)
        for ax, (key, title) in zip(axes[0], keys, strict=True):
            found = {n: s for n in names if (s := _ok(data, n, key))}
            shown = list(found)
            vals = [found[n]["relay_cpu_us_per_tunnel"] for n in shown]
            sps = [found[n].get("spread", {}).get("relay_cpu_us_per_tunnel") for n in shown]
            bars = ax.bar(
                [column(n).replace(" (", "\n(") for n in shown],
                vals,
                yerr=_yerr(vals, sps),
                capsize=4,
                color=[COLOURS.get(n, "tab:purple") for n in shown],
            )
            for bar, n in zip(bars, shown, strict=True):
                if n == FLOOR:
                    bar.set_hatch("//")
                    bar.set_alpha(0.5)
            # Inside the bars: above them the labels would collide with the error bars.
            ax.bar_label(
                bars, labels=[f"{v:,.0f}" for v in vals], label_type="center", fontsize="small"
            )
            ax.set_title(f"relay CPU per tunnel: {title}, 64 in flight")
            ax.set_ylabel("µs CPU / tunnel (median, min–max)")
            ax.grid(True, axis="y", alpha=0.3)
        save(fig, "tunnels.png")

    if any(
        _ok(data, n, f"forwarding/{m}/{z}/64")
        for n in names
        for m in ("stream", "pingpong")
        for z in SIZES
    ):
        fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
        for col, mode in enumerate(("stream", "pingpong")):
            for n in names:
                xs, mibs, cpus, sp_mib, sp_cpu = [], [], [], [], []
                for size in SIZES:
                    s = _ok(data, n, f"forwarding/{mode}/{size}/64")
                    if s:
                        xs.append(size)
                        mibs.append(s["mib_per_s"])
                        cpus.append(s["relay_cpu_us_per_message"])
                        sp_mib.append(s.get("spread", {}).get("mib_per_s"))
                        sp_cpu.append(s.get("spread", {}).get("relay_cpu_us_per_message"))
                if xs:
                    axes[0][col].errorbar(
                        xs, mibs, yerr=_yerr(mibs, sp_mib), marker="o", capsize=3, **_style(n)
                    )
                    axes[1][col].errorbar(
                        xs, cpus, yerr=_yerr(cpus, sp_cpu), marker="o", capsize=3, **_style(n)
                    )
            title = "streaming" if mode == "stream" else "ping-pong"
            axes[0][col].set_title(f"{title}, 64 tunnels: throughput")
            axes[0][col].set_ylabel("MiB/s (log)")
            axes[1][col].set_title(f"{title}, 64 tunnels: relay CPU per message")
            axes[1][col].set_ylabel("µs CPU / message (log)")
            for ax in (axes[0][col], axes[1][col]):
                ax.set_xscale("log", base=2)
                ax.set_xticks(list(SIZES), [SIZE_LABEL[s] for s in SIZES])
                ax.minorticks_off()
                ax.set_xlabel("message size")
                ax.set_yscale("log")
                _log_axis(ax.yaxis)
                ax.grid(True, which="major", alpha=0.3)
                _legend(ax)
        save(fig, "throughput.png")

    panels = [
        (key, title)
        for key, title in (
            ("tunnel-life", "hybrid tunnel life, 64 in flight"),
            ("pairing/64", "pairing (complete tunnel), 64 in flight"),
            ("forwarding/pingpong/1024/64", "1 KiB ping-pong round trip, 64 tunnels"),
        )
        if any((_ok(data, n, key) or {}).get("cdf") for n in names)
    ]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels, strict=True):
            for n in names:
                s = _ok(data, n, key)
                if s and s.get("cdf"):
                    ax.plot([p[1] for p in s["cdf"]], [p[0] for p in s["cdf"]], **_style(n))
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
            ax.set_xlabel("latency (ms, log; median over repetitions per percentile)")
            ax.set_ylabel("percentile")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            _legend(ax)
        save(fig, "latency.png")

    if any(_ok(data, n, "idle") for n in names):
        fig, ax = plt.subplots(figsize=(7, 5))
        for n in names:
            s = _ok(data, n, "idle")
            if not s:
                continue
            xs = [lv["waiting"] for lv in s["levels"]]
            ys = [lv.get("rss_delta_bytes", 0) / 2**20 for lv in s["levels"]]
            sps = []
            for lv in s["levels"]:
                sp = lv.get("spread", {}).get("rss_delta_bytes")
                sps.append([sp[0] / 2**20, sp[1] / 2**20] if sp else None)
            ax.errorbar(xs, ys, yerr=_yerr(ys, sps), marker="o", capsize=3, **_style(n))
        ax.set_xlabel("waiting tunnels")
        ax.set_ylabel("relay RSS growth (MiB)")
        ax.set_title("memory by waiting tunnels")
        ax.grid(True, alpha=0.3)
        _legend(ax)
        save(fig, "memory.png")
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
    for name in PLOTS:  # a plot from an earlier run in the same directory would mislead
        if out / name not in paths:
            (out / name).unlink(missing_ok=True)
    return paths
