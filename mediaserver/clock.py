"""Injectable clocks, so expiry and timing are testable in milliseconds."""

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for durations, wall time for timestamps people read."""

    def monotonic_ns(self) -> int:
        """Monotonic nanoseconds."""
        ...

    def wall_ns(self) -> int:
        """UTC epoch nanoseconds."""
        ...


class SystemClock:
    """The process's real clocks."""

    def monotonic_ns(self) -> int:
        """Monotonic nanoseconds."""
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        """UTC epoch nanoseconds."""
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, monotonic_ns: int = 1_000_000_000, wall_ns: int = 1_790_000_000 * 10**9):
        self._monotonic_ns = monotonic_ns
        self._wall_offset_ns = wall_ns - monotonic_ns

    def monotonic_ns(self) -> int:
        """Current manual monotonic time."""
        return self._monotonic_ns

    def wall_ns(self) -> int:
        """Wall time moving in step with the monotonic time."""
        return self._monotonic_ns + self._wall_offset_ns

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._monotonic_ns += int(seconds * 1e9)
