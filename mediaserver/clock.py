"""The one clock of the server, injected everywhere, so timers run in virtual time under test."""

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for durations, wall time for timestamps people read, and sleeping."""

    def monotonic_ns(self) -> int:
        """Monotonic nanoseconds."""
        ...

    def wall_ns(self) -> int:
        """UTC epoch nanoseconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long on this clock."""
        ...


class SystemClock:
    """The process's real clocks."""

    # The builtins themselves: called on every packet, a Python method around them costs more
    # than the clock read.
    monotonic_ns = staticmethod(time.monotonic_ns)
    wall_ns = staticmethod(time.time_ns)

    async def sleep(self, seconds: float) -> None:
        """Wait on the event loop."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; sleepers wake when it passes their deadline."""

    def __init__(self, monotonic_ns: int = 1_000_000_000, wall_ns: int = 1_790_000_000 * 10**9):
        self._monotonic_ns = monotonic_ns
        self._wall_offset_ns = wall_ns - monotonic_ns
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic_ns(self) -> int:
        """Current manual monotonic time."""
        return self._monotonic_ns

    def wall_ns(self) -> int:
        """Wall time moving in step with the monotonic time."""
        return self._monotonic_ns + self._wall_offset_ns

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced past now + seconds."""
        deadline = self._monotonic_ns + max(0, int(seconds * 1e9))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        if deadline <= self._monotonic_ns:
            self._wake()
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        self._monotonic_ns += int(seconds * 1e9)
        self._wake()

    @property
    def sleepers(self) -> int:
        """Tasks waiting on this clock."""
        return sum(not future.done() for _, _, future in self._sleepers)

    async def run_for(self, seconds: float, *, step_s: float = 0.001) -> None:
        """Advance in small steps, letting woken tasks run between them."""
        target = self._monotonic_ns + int(seconds * 1e9)
        while self._monotonic_ns < target:
            self.advance(min(step_s, (target - self._monotonic_ns) / 1e9))
            for _ in range(3):
                await asyncio.sleep(0)

    def _wake(self) -> None:
        """Resolve the futures of sleepers that are due."""
        while self._sleepers and self._sleepers[0][0] <= self._monotonic_ns:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
