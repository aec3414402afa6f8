"""Latency histograms: buckets, quantiles, the node's totals and the Prometheus form."""

import pytest

from mediaserver.latency_histogram import BUCKET_BOUNDS_NS, LatencyHistogram, RelayLatency

MS = 1_000_000


def test_quantiles_fall_in_the_right_bucket() -> None:
    """1..100 ms, one each: p50 near 50 ms, p99 near 99 ms, within a bucket's width."""
    histogram = LatencyHistogram()
    for value in range(1, 101):
        histogram.observe(value * MS)
    assert histogram.count == 100
    assert histogram.sum_ns == 5050 * MS
    assert histogram.quantile_ms(0.5) == pytest.approx(50, abs=5)
    assert histogram.quantile_ms(0.99) == pytest.approx(99, abs=5)


@pytest.mark.parametrize(("value_ms", "width_ms"), [(0.1, 0.25), (4.9, 0.25), (19.5, 1.0)])
def test_fine_buckets_keep_small_latencies_apart(value_ms: float, width_ms: float) -> None:
    """Sub-millisecond and tick-sized figures come back within their bucket's width."""
    histogram = LatencyHistogram()
    for _ in range(10):
        histogram.observe(round(value_ms * MS))
    p50 = histogram.quantile_ms(0.5)
    assert p50 is not None
    assert abs(p50 - value_ms) <= width_ms


def test_beyond_the_last_bound_reads_as_the_last_bound() -> None:
    """Seven seconds is "more than 5 s", not a made-up figure."""
    histogram = LatencyHistogram()
    histogram.observe(7000 * MS)
    assert histogram.quantile_ms(0.5) == 5000


def test_nothing_counted_has_no_quantile() -> None:
    """An empty histogram says so rather than 0."""
    assert LatencyHistogram().summary_ms() == {"p50": None, "p99": None, "count": 0}


def test_a_call_counts_into_the_node() -> None:
    """Each call's histograms add to the node's; calls stay apart."""
    node = RelayLatency()
    first, second = RelayLatency(node), RelayLatency(node)
    first.caller_to_agent.observe(2 * MS)
    second.caller_to_agent.observe(4 * MS)
    second.agent_to_caller.observe(15 * MS)
    assert node.caller_to_agent.count == 2
    assert node.agent_to_caller.count == 1
    assert first.agent_to_caller.count == 0
    assert node.caller_to_agent.sum_ns == 6 * MS


def test_prometheus_buckets_are_cumulative_and_end_with_inf() -> None:
    """Counts at or below each bound, +Inf the total."""
    histogram = LatencyHistogram()
    for value_ms in (0.5, 1, 3, 30, 2000):
        histogram.observe(value_ms * MS)
    buckets = dict(histogram.cumulative((0.001, 0.005, 0.05, 1.0)))
    assert buckets == {"0.001": 2, "0.005": 3, "0.05": 4, "1.0": 4, "+Inf": 5}


def test_negative_latency_counts_as_zero() -> None:
    """Clocks read out of order must not land below the first bucket."""
    histogram = LatencyHistogram()
    histogram.observe(-5)
    assert histogram.counts[0] == 1
    assert histogram.sum_ns == 0
    assert BUCKET_BOUNDS_NS[0] == 250_000
