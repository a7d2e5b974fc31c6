"""Prometheus metrics for one relay instance, in its own registry.

Counters on the forwarding path are plain integers on ``Stats`` (an attribute increment, no lock,
no label lookup per message); a custom collector turns them into Prometheus families only when
``/metrics`` is scraped. The pairing-latency histogram (``LatencyHistogram``) is observed once per
pairing and rendered the same way.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class LatencyHistogram(Collector):
    """A histogram observed once per tunnel: a bisect and two additions, no lock.

    ``prometheus_client.Histogram`` takes a lock per bucket update and walks the buckets in
    Python, which cost as much as a tenth of a pairing's CPU. The relay observes from one thread
    only; this renders the same ``_bucket``, ``_count``, ``_sum`` and ``_created`` samples.
    """

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family = HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )
        family.add_sample(f"{self.name}_created", {}, self.created)
        yield family


class RelayMetrics:
    """The registry of one relay instance."""

    def __init__(self, stats: Stats, gauges: Callable[[], dict[str, tuple[str, float]]]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(stats, gauges))
        # process_cpu_seconds_total, process_open_fds, process_max_fds, memory, start time.
        ProcessCollector(registry=self.registry)
        self.pairing_latency = LatencyHistogram(
            f"{PREFIX}_pairing_latency_seconds",
            "Time from /cable/new upgrade to the initiator joining.",
            (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.registry.register(self.pairing_latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)
