"""Prometheus metrics: counters read from the live objects at scrape time, and event-loop lag."""

import asyncio
import gc
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mediaserver.latency_histogram import LatencyHistogram

LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
Sample = tuple[str, dict[str, str], float]
Report = tuple[str, str, str, Sequence[Sample]]  # name, kind, help, samples


class LoopLagMonitor:
    """Measures how late the event loop wakes a task that asked to sleep a fixed interval."""

    def __init__(self, histogram: Histogram, *, interval_s: float = 0.05) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self.max_lag_s = 0.0
        self._recent: list[float] = []

    async def run(self) -> None:
        """Sleep, measure the overshoot, repeat (cancel to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            lag_s = max(0.0, loop.time() - started - self.interval_s)
            self.histogram.observe(lag_s)
            self.max_lag_s = max(self.max_lag_s, lag_s)
            self._recent.append(lag_s)
            del self._recent[:-1200]

    def percentile_s(
        self, fraction: float, *, window_s: float = 60.0, min_samples: int = 1
    ) -> float:
        """A percentile of the lag samples of the last `window_s` seconds (at most a minute)."""
        count = max(1, int(window_s / self.interval_s))
        recent = self._recent[-count:]
        if len(recent) < max(1, min_samples):
            return 0.0
        ordered = sorted(recent)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _StatsCollector(Collector):
    """Turns the server's plain counters into metric families when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Iterator[Report]]):
        self._read = read

    def collect(self) -> Iterator[Metric]:
        """One family per (name, kind) the server reports."""
        for name, kind, documentation, samples in self._read():
            labels = sorted({key for _, sample_labels, _ in samples for key in sample_labels})
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, documentation, labels=labels)
            else:
                family = GaugeMetricFamily(name, documentation, labels=labels)
            for _, sample_labels, value in samples:
                family.add_metric([sample_labels.get(label, "") for label in labels], value)
            yield family


class _LatencyCollector(Collector):
    """Exposes histograms the server counts itself (O(1) per packet, no lock) at scrape time."""

    # prometheus_client's Histogram.observe costs ~3 µs a call here (a lock and a bucket
    # search); at 50 frames a second each way per call that is a few percent of a core.

    def __init__(self, name: str, documentation: str, histogram: LatencyHistogram) -> None:
        self._name = name
        self._documentation = documentation
        self._histogram = histogram

    def collect(self) -> Iterator[Metric]:
        """One histogram family, its buckets in seconds."""
        histogram = self._histogram
        yield HistogramMetricFamily(
            self._name,
            self._documentation,
            buckets=histogram.cumulative(),
            sum_value=histogram.sum_ns / 1e9,
        )


class GcPauseMonitor:
    """Times each garbage collection by generation: a pause that the loop-lag figure shows too."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started = 0.0

    def __enter__(self) -> "GcPauseMonitor":
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        """gc's callback: called as each collection starts and stops."""
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause_s = time.perf_counter() - self._started
            self.histogram.labels(generation=str(info["generation"])).observe(pause_s)


class Metrics:
    """The server's registry (one per application, no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.loop_lag = Histogram(
            "mediaserver_event_loop_lag_seconds",
            "How late the event loop woke a sleeping task.",
            buckets=LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "mediaserver_gc_pause_seconds",
            "How long each garbage collection held the process, by generation.",
            ["generation"],
            buckets=LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.finalize_seconds = Histogram(
            "mediaserver_finalize_seconds",
            "Time from a call's end to its recording being stored.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "mediaserver_job_seconds",
            "Time one attempt of a post-call job took, by kind and result.",
            ["kind", "result"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.started_at = time.time()

    def observe_job(self, kind: str, result: str, elapsed_s: float) -> None:
        """Count one attempt of a job of `kind` and its duration."""
        self.job_seconds.labels(kind=kind, result=result).observe(elapsed_s)

    def add_stats_source(self, read: Callable[[], Iterator[Report]]) -> None:
        """Register a function that reports counters and gauges at scrape time."""
        self.registry.register(_StatsCollector(read))

    def add_latency_histogram(
        self, name: str, documentation: str, histogram: LatencyHistogram
    ) -> None:
        """Expose a latency histogram the server fills itself (seconds)."""
        self.registry.register(_LatencyCollector(name, documentation, histogram))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
