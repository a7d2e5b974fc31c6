"""The load generator: a separate process that drives one relay through the benchmark scenarios.

It runs on uvloop when installed, pinned to its own core(s), and reads one JSON command per line
on stdin, answering one JSON result line on stdout (progress goes to stderr). Every result carries
the relay's CPU time over the measured window (read from /proc, relay process tree), the load
generator's own CPU time and the wall time, so a reader can see which side was the bottleneck.

    python -m bench.loadgen --port P --kind ws|tcp --pids 123,124 [--cores 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
from array import array
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from bench.procs import cpu_ns, pin, raise_nofile_limit, rss_bytes
from bench.wire import Conn, Dialer, WireError

PAIRING_MESSAGE_LEN = 128
#: The messages of a real QR-flow tunnel's life as they cross the relay (sizes on the wire, after
#: Crypter padding to 32 bytes and the 16-byte GCM tag): (sender, bytes). Noise KNpsk0 message 1
#: and 2 are 81 bytes; the post-handshake message carrying getInfo is 144; a ~300-byte CTAP
#: request (getAssertion) pads to 320; a ~1 KiB response to 1,040; the shutdown message is 48.
TUNNEL_LIFE = (
    ("desktop", 81),
    ("phone", 81),
    ("phone", 144),
    ("desktop", 320),
    ("phone", 1040),
    ("desktop", 48),
)
OP_TIMEOUT = 10.0
CDF_POINTS = [*range(0, 100), 99.5, 99.9, 100]


def summarize(samples: list[float] | array) -> dict[str, Any]:
    """p50/p99/max in milliseconds plus a CDF (percentile -> ms) for the latency plots."""
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "cdf": []}
    ordered = sorted(samples)
    n = len(ordered)

    def pct(p: float) -> float:
        return ordered[min(n - 1, int(p / 100 * n))] * 1000

    return {
        "p50_ms": round(pct(50), 4),
        "p99_ms": round(pct(99), 4),
        "max_ms": round(ordered[-1] * 1000, 4),
        "cdf": [[p, round(pct(p), 4)] for p in CDF_POINTS],
    }


class Meter:
    """Relay CPU, load-generator CPU and wall time over one measured window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self.wall0 = time.perf_counter()
        self.relay0 = cpu_ns(self.pids)
        self.own0 = time.process_time_ns()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall0
        relay = (cpu_ns(self.pids) - self.relay0) / 1e9
        own = (time.process_time_ns() - self.own0) / 1e9
        return {
            "wall_s": round(wall, 4),
            "relay_cpu_s": round(relay, 5),
            "loadgen_cpu_s": round(own, 5),
            "relay_busy": round(relay / wall, 3) if wall else None,
            "loadgen_busy": round(own / wall, 3) if wall else None,
        }


def per_unit(meter: dict[str, Any], units: int, label: str) -> dict[str, float | None]:
    """CPU microseconds per unit of work, for relay and load generator."""
    if not units:
        return {f"relay_cpu_us_per_{label}": None, f"loadgen_cpu_us_per_{label}": None}
    return {
        f"relay_cpu_us_per_{label}": round(meter["relay_cpu_s"] * 1e6 / units, 3),
        f"loadgen_cpu_us_per_{label}": round(meter["loadgen_cpu_s"] * 1e6 / units, 3),
    }


async def close_all(conns: list[Conn], timeout: float = 10.0) -> None:
    """Close gracefully, then abort whatever has not finished by the timeout."""
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()
    pending = [c.closed for c in conns if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for conn in conns:
        if not conn.closed.done():
            conn.abort()


class LoadGen:
    def __init__(self, host: str, port: int, kind: str, pids: list[int]) -> None:
        self.dialer = Dialer(host, port, kind)
        self.kind = kind
        self.pids = pids
        self.meter = Meter(pids)

    # -- (a) pairing ---------------------------------------------------------------------------

    async def complete_tunnel(self, payload: bytes) -> None:
        """/new, /connect, one message each way, the authenticator closes, both ends see it."""
        phone, desktop = await self.dialer.tunnel(OP_TIMEOUT)
        try:
            desktop.send(payload)
            await phone.recv()
            phone.send(payload)
            await desktop.recv()
            phone.close()
            await asyncio.gather(phone.closed, desktop.closed)
        except BaseException:
            phone.abort()
            desktop.abort()
            raise

    async def run_workers(
        self, job: Callable[[], Awaitable[None]], inflight: int, duration: float, limit: int
    ) -> tuple[array, list[str]]:
        """Keep `inflight` jobs running until `duration` or `limit` jobs; returns latencies."""
        latencies = array("d")
        errors: list[str] = []
        deadline = time.perf_counter() + duration
        started = 0

        async def worker() -> None:
            nonlocal started
            while time.perf_counter() < deadline and started < limit and len(errors) < 20:
                started += 1
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(job(), OP_TIMEOUT)
                except (WireError, OSError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(inflight)))
        return latencies, errors

    async def pairing(self, inflight: int, duration: float, limit: int) -> dict[str, Any]:
        payload = os.urandom(PAIRING_MESSAGE_LEN)

        def job() -> Awaitable[None]:
            return self.complete_tunnel(payload)

        await self.run_workers(job, min(inflight, 8), 0.0, min(inflight, 8))  # warm-up
        self.meter.start()
        latencies, errors = await self.run_workers(job, inflight, duration, limit)
        meter = self.meter.stop()
        n = len(latencies)
        return {
            "inflight": inflight,
            "tunnels": n,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "tunnels_per_s": round(n / meter["wall_s"], 1) if meter["wall_s"] else None,
            **summarize(latencies),
            **per_unit(meter, n, "tunnel"),
            **meter,
        }

    # -- (e) the life of a real hybrid tunnel --------------------------------------------------

    async def one_tunnel_life(self, payloads: list[tuple[bool, bytes]]) -> None:
        """Pair, then the QR flow's messages in order (each awaited), then the phone closes."""
        phone, desktop = await self.dialer.tunnel(OP_TIMEOUT)
        try:
            for from_phone, payload in payloads:
                sender, receiver = (phone, desktop) if from_phone else (desktop, phone)
                sender.send(payload)
                if await receiver.recv() != payload:
                    raise WireError("a tunnel message arrived altered")
            phone.close()  # the phone closes after the desktop's shutdown; the relay closes both
            await asyncio.gather(phone.closed, desktop.closed)
        except BaseException:
            phone.abort()
            desktop.abort()
            raise

    async def tunnel_life(self, inflight: int, duration: float, limit: int) -> dict[str, Any]:
        payloads = [(who == "phone", os.urandom(size)) for who, size in TUNNEL_LIFE]

        def job() -> Awaitable[None]:
            return self.one_tunnel_life(payloads)

        await self.run_workers(job, min(inflight, 8), 0.0, min(inflight, 8))  # warm-up
        self.meter.start()
        latencies, errors = await self.run_workers(job, inflight, duration, limit)
        meter = self.meter.stop()
        n = len(latencies)
        return {
            "inflight": inflight,
            "tunnels": n,
            "messages_per_tunnel": len(payloads),
            "bytes_per_tunnel": sum(len(p) for _, p in payloads),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "tunnels_per_s": round(n / meter["wall_s"], 1) if meter["wall_s"] else None,
            **summarize(latencies),
            **per_unit(meter, n, "tunnel"),
            **meter,
        }

    # -- (b) forwarding ------------------------------------------------------------------------

    async def open_tunnels(self, count: int) -> list[tuple[Conn, Conn]]:
        sem = asyncio.Semaphore(32)

        async def one() -> tuple[Conn, Conn]:
            async with sem:
                return await self.dialer.tunnel(OP_TIMEOUT)

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        pairs = [r for r in results if isinstance(r, tuple)]
        failures = [r for r in results if not isinstance(r, tuple)]
        if failures:
            await close_all([c for pair in pairs for c in pair])
            raise WireError(f"{len(failures)} of {count} tunnels failed to open: {failures[0]}")
        return pairs

    async def forwarding(
        self, tunnels: int, size: int, mode: str, duration: float, limit: int
    ) -> dict[str, Any]:
        """One-way streaming (windowed) or ping-pong of `size`-byte messages over `tunnels`."""
        pairs = await self.open_tunnels(tunnels)
        loop = asyncio.get_running_loop()
        filler = os.urandom(max(size, 8))[8:]
        latencies = array("d")
        window = max(2, min(64 if tunnels == 1 else 16, 262144 // max(size, 1)))
        state: dict[str, Any] = {"running": True, "received": 0, "outstanding": 0, "broken": None}
        done: asyncio.Future[None] = loop.create_future()
        clock = time.perf_counter_ns

        def check_done() -> None:
            if not state["running"] and state["outstanding"] == 0 and not done.done():
                done.set_result(None)

        def on_closed(conn: Conn) -> None:
            if state["running"] or state["outstanding"]:
                if state["broken"] is None:
                    code = getattr(conn, "close_code", None)
                    state["broken"] = (
                        f"relay closed a tunnel mid-run after {state['received']} messages "
                        f"(close code {code}); raise its per-tunnel message limit"
                    )
                if not done.done():
                    done.set_result(None)

        def on_closed_cb(conn: Conn, _: object) -> None:
            on_closed(conn)

        for phone, desktop in pairs:
            for conn in (phone, desktop):
                conn.closed.add_done_callback(partial(on_closed_cb, conn))

        starters: list[Callable[[], None]] = []
        if mode == "stream":
            for phone, desktop in pairs:
                inflight = [0]
                sender = desktop

                def refill(sender: Conn = sender, inflight: list[int] = inflight) -> None:
                    k = window - inflight[0]
                    if k <= 0 or limit <= state["received"] + state["outstanding"]:
                        return
                    frame = sender.frame(clock().to_bytes(8, "big") + filler)
                    sender.transport.write(frame * k)  # type: ignore[union-attr]
                    inflight[0] += k
                    state["outstanding"] += k

                def on_message(
                    payload: bytes, refill=refill, inflight: list[int] = inflight
                ) -> None:
                    latencies.append((clock() - int.from_bytes(payload[:8], "big")) / 1e9)
                    inflight[0] -= 1
                    state["outstanding"] -= 1
                    state["received"] += 1
                    if state["received"] >= limit:
                        state["running"] = False
                    if state["running"]:
                        if inflight[0] <= window // 2:
                            refill()
                    else:
                        check_done()

                phone.on_message = on_message
                starters.append(refill)
        else:
            for phone, desktop in pairs:

                def echo(payload: bytes, phone: Conn = phone) -> None:
                    phone.send(payload)

                def on_reply(payload: bytes, desktop: Conn = desktop) -> None:
                    latencies.append((clock() - int.from_bytes(payload[:8], "big")) / 1e9)
                    state["outstanding"] -= 1
                    state["received"] += 2
                    if state["running"] and state["received"] < limit:
                        desktop.send(clock().to_bytes(8, "big") + filler)
                        state["outstanding"] += 1
                    else:
                        check_done()

                def start(desktop: Conn = desktop) -> None:
                    desktop.send(clock().to_bytes(8, "big") + filler)
                    state["outstanding"] += 1

                phone.on_message = echo
                desktop.on_message = on_reply
                starters.append(start)

        self.meter.start()
        for starter in starters:
            starter()

        def stop_sending() -> None:
            state["running"] = False
            check_done()

        stopper = loop.call_later(duration, stop_sending)
        try:
            await asyncio.wait_for(asyncio.shield(done), duration + OP_TIMEOUT)
        except TimeoutError:
            state["broken"] = state["broken"] or "messages stopped arriving (timeout)"
        stopper.cancel()
        meter = self.meter.stop()
        state["running"] = False
        for phone, desktop in pairs:
            phone.on_message = desktop.on_message = None
        await close_all([c for pair in pairs for c in pair])
        if state["broken"]:
            raise WireError(state["broken"])
        messages = int(state["received"])
        wall = meter["wall_s"]
        return {
            "tunnels": tunnels,
            "size": size,
            "mode": mode,
            "window": window if mode == "stream" else 1,
            "messages": messages,
            "messages_per_s": round(messages / wall, 1) if wall else None,
            "mib_per_s": round(messages * size / wall / 2**20, 3) if wall else None,
            "latency": "one-way" if mode == "stream" else "round trip",
            **summarize(latencies),
            **per_unit(meter, messages, "message"),
            **meter,
        }

    # -- (c) idle capacity ---------------------------------------------------------------------

    async def probe(self, count: int) -> dict[str, Any]:
        payload = os.urandom(PAIRING_MESSAGE_LEN)
        latencies = array("d")
        for _ in range(count):
            t0 = time.perf_counter()
            await asyncio.wait_for(self.complete_tunnel(payload), OP_TIMEOUT)
            latencies.append(time.perf_counter() - t0)
        out = summarize(latencies)
        out.pop("cdf")
        return out

    async def idle(self, levels: list[int], probes: int, settle: float) -> dict[str, Any]:
        """Open waiting /new tunnels up to each level; RSS per tunnel and a fresh pairing probe."""
        await self.probe(3)  # warm the relay's code paths before the baseline
        await asyncio.sleep(settle)
        base = rss_bytes(self.pids)
        results = [{"waiting": 0, "rss_bytes": base, **await self.probe(probes)}]
        conns: list[Conn] = []
        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                conns.append(await self.dialer.new(os.urandom(16), OP_TIMEOUT))

        try:
            for level in levels:
                self.meter.start()
                outcome = await asyncio.gather(
                    *(one() for _ in range(level - len(conns))), return_exceptions=True
                )
                meter = self.meter.stop()
                failed = [o for o in outcome if isinstance(o, BaseException)]
                if failed:
                    raise WireError(
                        f"{len(failed)} waiting tunnels failed at level {level}: {failed[0]}"
                    )
                opened = len(outcome)
                await asyncio.sleep(settle)
                rss = rss_bytes(self.pids)
                alive = sum(1 for c in conns if not c.closed.done())
                results.append(
                    {
                        "waiting": level,
                        "alive": alive,
                        "rss_bytes": rss,
                        "rss_delta_bytes": rss - base,
                        "bytes_per_waiting_tunnel": round((rss - base) / level, 1),
                        # Growth since the previous level: less blurred by freed heap reuse.
                        "marginal_bytes_per_waiting_tunnel": round(
                            (rss - results[-1]["rss_bytes"]) / (level - results[-1]["waiting"]), 1
                        ),
                        "open_per_s": round(opened / meter["wall_s"], 1),
                        "relay_cpu_us_per_open": round(meter["relay_cpu_s"] * 1e6 / opened, 2)
                        if opened
                        else None,
                        **await self.probe(probes),
                    }
                )
        finally:
            await close_all(conns, timeout=15.0)
        return {"levels": results}

    # -- (d) full hybrid transaction -----------------------------------------------------------

    async def transaction(self, inflight: int, duration: float, limit: int) -> dict[str, Any]:
        from bench.transaction import Transaction

        txn = Transaction(self.dialer)
        await self.run_workers(txn.run, 1, 0.0, 2)  # warm-up (imports, key caches)
        self.meter.start()
        latencies, errors = await self.run_workers(txn.run, inflight, duration, limit)
        meter = self.meter.stop()
        n = len(latencies)
        total = meter["relay_cpu_s"] + meter["loadgen_cpu_s"]
        return {
            "inflight": inflight,
            "transactions": n,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "transactions_per_s": round(n / meter["wall_s"], 1) if meter["wall_s"] else None,
            "relay_share": round(meter["relay_cpu_s"] / total, 3) if total else None,
            **summarize(latencies),
            **per_unit(meter, n, "transaction"),
            **meter,
        }


async def serve(gen: LoadGen) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        op = command.pop("op")
        try:
            result = {"ok": True, **await getattr(gen, op)(**command)}
        except (WireError, OSError, TimeoutError) as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # report, keep serving: the orchestrator decides what to do
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="relay benchmark load generator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=("ws", "tcp"), default="ws")
    parser.add_argument("--pids", required=True, help="relay process ids, comma-separated")
    parser.add_argument("--cores", default="", help="CPU cores to pin to, comma-separated")
    args = parser.parse_args(argv)
    if args.cores:
        pin({int(c) for c in args.cores.split(",")})
    raise_nofile_limit()
    gen = LoadGen(args.host, args.port, args.kind, [int(p) for p in args.pids.split(",")])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(gen))
    else:
        uvloop.run(serve(gen))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
