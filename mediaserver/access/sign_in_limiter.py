"""Wrong sign-in tokens counted per client address, so a token cannot be guessed at speed."""

# A sliding window per address: after `max_failures` wrong tokens within `window_s`, every
# attempt from that address is refused until the oldest of them leaves the window (the right
# token too, or a guesser would learn which guess was right by being let in). A right token
# forgets the address's failures. Memory is bounded: at most `max_clients` addresses are
# remembered (the one untouched longest is forgotten first), each with at most `max_failures`
# times.

import math
from collections import OrderedDict, deque

DEFAULT_MAX_CLIENTS = 10_000


class SignInLimiter:
    """Counts wrong tokens per client address in a sliding window; says how long to wait."""

    def __init__(
        self, *, max_failures: int, window_s: float, max_clients: int = DEFAULT_MAX_CLIENTS
    ) -> None:
        """Refuse an address for up to `window_s` after `max_failures` wrong tokens in it."""
        if max_failures < 1 or window_s <= 0 or max_clients < 1:
            raise ValueError("max_failures, window_s and max_clients must be positive")
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after_s(self, client: str, now_s: float) -> int:
        """0 if `client` may try now, else the whole seconds until it may (for Retry-After)."""
        times = self._recent(client, now_s)
        if times is None or len(times) < self.max_failures:
            return 0
        return max(1, math.ceil(times[0] + self.window_s - now_s))

    def record_failure(self, client: str, now_s: float) -> None:
        """`client` sent a wrong token at `now_s`."""
        times = self._recent(client, now_s)
        if times is None:
            times = deque(maxlen=self.max_failures)
            self._failures[client] = times
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        self._failures.move_to_end(client)
        times.append(now_s)

    def record_success(self, client: str) -> None:
        """`client` signed in: its earlier failures no longer count."""
        self._failures.pop(client, None)

    @property
    def tracked_clients(self) -> int:
        """How many addresses have failures remembered."""
        return len(self._failures)

    def _recent(self, client: str, now_s: float) -> deque[float] | None:
        """The client's failures still inside the window (None if there are none)."""
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now_s - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times
