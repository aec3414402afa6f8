"""Admission control: a call the node cannot carry cleanly is refused, never recorded wrong."""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from mediaserver.clock import Clock
from mediaserver.errors import OverloadedError

log = structlog.get_logger(__name__)

# Fewer calls carrying media than this say too little about what one costs (the node's own work
# dominates).
MIN_CALLS_TO_MEASURE = 5


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """What the node takes on."""

    max_calls: int  # live calls, whatever their load
    max_cpu_share: float  # of one core (the event loop runs on one), after the new call; 0: off
    max_loop_lag_ms: float  # a high percentile of the loop's lag over the last seconds; 0: off
    call_cpu_share: float  # what a call is assumed to cost until calls carrying media are measured


@dataclass(frozen=True, slots=True)
class LoadSample:
    """The node's load as last measured."""

    live_calls: int
    media_calls: int  # live calls whose caller's audio is flowing: the ones the CPU shows
    cpu_share: float  # of one core, over the last window
    loop_lag_ms: float  # a high percentile of the loop's lag over the last seconds
    cpu_share_per_call: float  # measured on calls carrying media, 0.0 when unknown


class RefusalReason:
    """Why a call was refused, as counted in the metrics."""

    MAX_CALLS = "max_calls"
    CPU = "cpu"
    LOOP_LAG = "loop_lag"


def project_cpu_share(limits: AdmissionLimits, load: LoadSample, *, new_calls: int) -> float:
    """The share of a core the live calls and `new_calls` more will cost, as admission sees it."""
    # The CPU measured is what calls carrying media cost (trailing those that started a moment
    # ago: whichever is higher, what the window saw or their count at the per-call rate). Calls
    # admitted whose media has not started yet cost nothing so far: they are counted at the
    # per-call rate, or a burst of set-ups would all be admitted before any of them is heard.
    per_call = load.cpu_share_per_call or limits.call_cpu_share
    waiting = max(0, load.live_calls - load.media_calls)
    carrying = max(load.cpu_share, load.media_calls * per_call)
    return carrying + (waiting + new_calls) * per_call


def decide_admission(limits: AdmissionLimits, load: LoadSample) -> str | None:
    """None to admit one more call, or the reason to refuse it."""
    if load.live_calls >= limits.max_calls:
        return RefusalReason.MAX_CALLS
    if limits.max_loop_lag_ms and load.loop_lag_ms > limits.max_loop_lag_ms:
        return RefusalReason.LOOP_LAG
    if not limits.max_cpu_share:
        return None
    projected = project_cpu_share(limits, load, new_calls=1)
    if projected > limits.max_cpu_share:
        return RefusalReason.CPU
    return None


class LoadMonitor:
    """Samples the process's CPU time and the loop's lag, and admits or refuses calls with them."""

    def __init__(
        self,
        limits: AdmissionLimits,
        *,
        clock: Clock,
        lag_ms: Callable[[], float],
        media_calls: Callable[[], int],
        window_s: float = 5.0,
        interval_s: float = 0.5,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._lag_ms = lag_ms
        self._media_calls = media_calls
        self._window_s = window_s
        self._interval_s = interval_s
        self._samples: deque[tuple[int, float, int]] = deque()  # (mono ns, cpu s, media calls)
        self.refused: dict[str, int] = {}
        self.last_refusal: str | None = None

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self._sample()
            await self._clock.sleep(self._interval_s)

    def _sample(self) -> None:
        """Record CPU time now; forget samples older than the window."""
        now_ns = self._clock.monotonic_ns()
        self._samples.append((now_ns, time.process_time(), self._media_calls()))
        horizon = now_ns - int(self._window_s * 1e9)
        while len(self._samples) > 2 and self._samples[0][0] < horizon:
            self._samples.popleft()

    def load(self, live_calls: int) -> LoadSample:
        """The load over the window, with `live_calls` live now."""
        cpu_share = 0.0
        per_call = 0.0
        if len(self._samples) >= 2:
            (t0, cpu0, _), (t1, cpu1, _) = self._samples[0], self._samples[-1]
            if t1 > t0:
                cpu_share = (cpu1 - cpu0) / ((t1 - t0) / 1e9)
            # The cost of a call, read off the calls carrying media the window held on average:
            # with the node's fixed cost in it, an overestimate at low counts (the safe side).
            mean_calls = sum(calls for _, _, calls in self._samples) / len(self._samples)
            if mean_calls >= MIN_CALLS_TO_MEASURE:
                per_call = cpu_share / mean_calls
        media_calls = min(live_calls, self._media_calls())
        return LoadSample(live_calls, media_calls, cpu_share, self._lag_ms(), per_call)

    def admit(self, live_calls: int) -> None:
        """Raise OverloadedError (503) unless one more call fits."""
        reason = decide_admission(self.limits, self.load(live_calls))
        self.last_refusal = reason
        if reason is None:
            return
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("call.refused", reason=reason, live_calls=live_calls)
        raise OverloadedError(f"the node takes no more calls now ({reason}); try another node")

    def ready(self, live_calls: int) -> bool:
        """Whether a load balancer should send this node new calls now."""
        return decide_admission(self.limits, self.load(live_calls)) is None
