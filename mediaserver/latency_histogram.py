"""Latencies counted into fixed buckets: O(1) per packet, quantiles and Prometheus buckets read."""

import bisect
from array import array
from collections.abc import Sequence

_NS_PER_MS = 1_000_000


def _bucket_bounds_ns() -> tuple[int, ...]:
    """Upper bounds: 0.25 ms steps to 5 ms, 1 ms to 40 ms, 5 ms to 100 ms, then coarser to 5 s."""
    bounds_us = [*range(250, 5_001, 250), *range(6_000, 40_001, 1_000)]
    bounds_us += [*range(45_000, 100_001, 5_000)]
    bounds_us += [125_000, 150_000, 200_000, 250_000, 300_000, 400_000, 500_000]
    bounds_us += [750_000, 1_000_000, 2_500_000, 5_000_000]
    return tuple(bound * 1_000 for bound in bounds_us)


BUCKET_BOUNDS_NS = _bucket_bounds_ns()
# What /metrics shows (seconds): every one is one of the fine bounds, so its count is exact.
EXPOSED_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0)


class LatencyHistogram:
    """Counts of latencies by bucket, with their sum; optionally added to a parent's as well."""

    # One per call and direction (their quantiles go in the manifest), each also counting into
    # the node's (what /metrics shows): a bisect over ~80 bounds and a few additions a packet.

    __slots__ = ("_parent", "count", "counts", "sum_ns")

    def __init__(self, parent: "LatencyHistogram | None" = None) -> None:
        self.counts = array("q", bytes(8 * (len(BUCKET_BOUNDS_NS) + 1)))  # the last: beyond
        self.count = 0
        self.sum_ns = 0
        self._parent = parent

    def observe(self, latency_ns: int) -> None:
        """Count one latency (a negative one, from clocks read out of order, counts as 0)."""
        latency_ns = max(0, latency_ns)
        index = bisect.bisect_left(BUCKET_BOUNDS_NS, latency_ns)
        self.counts[index] += 1
        self.count += 1
        self.sum_ns += latency_ns
        parent = self._parent
        if parent is not None:
            parent.counts[index] += 1
            parent.count += 1
            parent.sum_ns += latency_ns

    def quantile_ms(self, fraction: float) -> float | None:
        """The latency below which `fraction` of those counted fall (ms), None if none were."""
        if not self.count:
            return None
        rank = fraction * self.count
        seen = 0
        for index, count in enumerate(self.counts):
            if count and seen + count >= rank:
                # Interpolated inside the bucket, as Prometheus' histogram_quantile does.
                lower = BUCKET_BOUNDS_NS[index - 1] if index else 0
                upper = BUCKET_BOUNDS_NS[index] if index < len(BUCKET_BOUNDS_NS) else lower
                share = (rank - seen) / count
                return round((lower + share * (upper - lower)) / _NS_PER_MS, 2)
            seen += count
        return round(BUCKET_BOUNDS_NS[-1] / _NS_PER_MS, 2)

    def summary_ms(self) -> dict[str, float | int | None]:
        """p50, p99 and how many were counted: what a call's manifest keeps."""
        return {"p50": self.quantile_ms(0.5), "p99": self.quantile_ms(0.99), "count": self.count}

    def cumulative(self, bounds_s: Sequence[float] = EXPOSED_BOUNDS_S) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, count at or below it), ending with +Inf."""
        out: list[tuple[str, int]] = []
        seen = 0
        index = 0
        for bound_s in bounds_s:
            bound_ns = round(bound_s * 1e9)
            while index < len(BUCKET_BOUNDS_NS) and BUCKET_BOUNDS_NS[index] <= bound_ns:
                seen += self.counts[index]
                index += 1
            out.append((repr(bound_s), seen))
        out.append(("+Inf", self.count))
        return out


class RelayLatency:
    """What the server adds to a call's audio in each direction: caller → agent, agent → caller."""

    # caller → agent: a caller packet's arrival (the kernel's stamp on plain RTP) to its audio
    # being written to the agent's WebSocket (or handed to the built-in agent). agent → caller:
    # an agent message's arrival to the frame whose audio it completed leaving toward the caller.

    __slots__ = ("agent_to_caller", "caller_to_agent")

    def __init__(self, parent: "RelayLatency | None" = None) -> None:
        self.caller_to_agent: LatencyHistogram
        self.agent_to_caller: LatencyHistogram
        if parent is None:
            self.caller_to_agent, self.agent_to_caller = LatencyHistogram(), LatencyHistogram()
        else:
            self.caller_to_agent = LatencyHistogram(parent.caller_to_agent)
            self.agent_to_caller = LatencyHistogram(parent.agent_to_caller)

    def summary_ms(self) -> dict[str, dict[str, float | int | None]]:
        """p50/p99 (ms) and counts per direction: a call's `latency_ms`."""
        return {
            "caller_to_agent": self.caller_to_agent.summary_ms(),
            "agent_to_caller": self.agent_to_caller.summary_ms(),
        }
