"""Prometheus metrics for one relay instance, in its own registry.

Counters on the forwarding path are plain integers on ``Stats`` (an attribute increment, no lock,
no label lookup per message); a custom collector turns them into Prometheus families only when
``/metrics`` is scraped. The pairing-latency histogram is a regular ``prometheus_client`` metric,
observed once per pairing.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "hybrid_relay"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Direction labels: "to_initiator" carries authenticator messages, "to_authenticator" the reverse.
TO_INITIATOR = "to_initiator"
TO_AUTHENTICATOR = "to_authenticator"


class Stats:
    """Running totals; the server increments these directly."""

    def __init__(self) -> None:
        self.tunnels_opened = 0
        self.pairings = 0
        # [messages, bytes] to the initiator, then [messages, bytes] to the authenticator; indexed
        # like Tunnel.counts so that both directions share one pump.
        self.forwarded = [0, 0, 0, 0]
        self.connections_accepted = 0
        self.refusals: Counter[str] = Counter()
        self.tunnel_closes: Counter[str] = Counter()

    @property
    def messages_to_initiator(self) -> int:
        return self.forwarded[0]

    @property
    def bytes_to_initiator(self) -> int:
        return self.forwarded[1]

    @property
    def messages_to_authenticator(self) -> int:
        return self.forwarded[2]

    @property
    def bytes_to_authenticator(self) -> int:
        return self.forwarded[3]


class _StatsCollector(Collector):
    def __init__(self, stats: Stats, gauges: Callable[[], dict[str, tuple[str, float]]]):
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        build = GaugeMetricFamily(
            f"{PREFIX}_build_info",
            "Relay version and runtime; the value is always 1.",
            labels=["version", "python", "trio"],
        )
        build.add_metric([_version(), platform.python_version(), trio.__version__], 1)
        yield build
        for name, (doc, value) in self._gauges().items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        yield CounterMetricFamily(
            f"{PREFIX}_connections_accepted", "TCP connections accepted.", s.connections_accepted
        )
        yield CounterMetricFamily(
            f"{PREFIX}_tunnels_opened", "Tunnels opened by /cable/new.", s.tunnels_opened
        )
        yield CounterMetricFamily(
            f"{PREFIX}_pairings", "Tunnels joined by /cable/connect.", s.pairings
        )
        refusals = CounterMetricFamily(
            f"{PREFIX}_refusals",
            "Requests refused before or at upgrade, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(s.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        closes = CounterMetricFamily(
            f"{PREFIX}_tunnel_closes", "Tunnels ended, by reason.", labels=["reason"]
        )
        for reason, count in sorted(s.tunnel_closes.items()):
            closes.add_metric([reason], count)
        yield closes
        messages = CounterMetricFamily(
            f"{PREFIX}_messages_forwarded",
            "Messages forwarded, by direction.",
            labels=["direction"],
        )
        messages.add_metric([TO_INITIATOR], s.messages_to_initiator)
        messages.add_metric([TO_AUTHENTICATOR], s.messages_to_authenticator)
        yield messages
        data = CounterMetricFamily(
            f"{PREFIX}_bytes_forwarded",
            "Payload bytes forwarded, by direction.",
            labels=["direction"],
        )
        data.add_metric([TO_INITIATOR], s.bytes_to_initiator)
        data.add_metric([TO_AUTHENTICATOR], s.bytes_to_authenticator)
        yield data


def _version() -> str:
    from relay.version import __version__

    return __version__


class RelayMetrics:
    """The registry of one relay instance."""

    def __init__(self, stats: Stats, gauges: Callable[[], dict[str, tuple[str, float]]]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(stats, gauges))
        # process_cpu_seconds_total, process_open_fds, process_max_fds, memory, start time.
        ProcessCollector(registry=self.registry)
        self.pairing_latency = Histogram(
            f"{PREFIX}_pairing_latency_seconds",
            "Time from /cable/new upgrade to the initiator joining.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
