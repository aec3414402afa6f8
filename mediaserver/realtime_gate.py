"""How far ahead of real time a stream's audio may run: a burst's excess is refused."""

_NS_PER_MS = 1_000_000


class RealTimeGate:
    """Admits a stream's frames while they run at most `max_lead_ms` ahead of their arrival."""

    # A stream whose packets arrive faster than real time is a backlog arriving at once: a client
    # flushing the audio it captured before its connection was up (GStreamer's webrtcbin holds
    # its source's buffers until DTLS completes, then sends them all), or a network stall
    # ending. Passed on whole, the backlog becomes a standing delay for a real-time listener,
    # an agent that answers as it hears: its answers then trail the caller by the backlog for
    # the rest of the call. The gate keeps the frames' ends on a clock of their own that never
    # runs behind their arrival; a frame that would end further ahead than the allowance is
    # refused. At a stream's start the allowance grows with the stream's age (from 0 to
    # `max_lead_ms`), so a backlog flushed at connection passes nothing stale.

    __slots__ = ("_end_ns", "_first_ns", "max_lead_ns", "refused", "refused_ns")

    def __init__(self, max_lead_ms: float) -> None:
        self.max_lead_ns = int(max_lead_ms * _NS_PER_MS)  # 0: no limit
        self._first_ns: int | None = None
        self._end_ns = 0
        self.refused = 0
        self.refused_ns = 0

    def admit(self, arrival_ns: int, duration_ns: int) -> bool:
        """Whether a frame of `duration_ns` that arrived at `arrival_ns` goes on."""
        if self._first_ns is None:
            self._first_ns = self._end_ns = arrival_ns
        start_ns = max(arrival_ns, self._end_ns)
        if self.max_lead_ns:
            allowance_ns = min(self.max_lead_ns, arrival_ns - self._first_ns)
            if start_ns - arrival_ns > allowance_ns:
                self.refused += 1
                self.refused_ns += duration_ns
                return False
        self._end_ns = start_ns + duration_ns
        return True
