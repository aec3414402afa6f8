"""Even UDP ports for plain-RTP legs, handed out from a configured range."""

from collections import deque

from mediaserver.errors import MediaServerError, PortsExhaustedError, SettingsError

# RFC 3550 §11: RTP takes an even port and RTCP the odd one above it. Legs here multiplex RTCP on
# the RTP port (RFC 5761), but handing out only even ports keeps a peer that still sends RTCP to
# port + 1 from hitting another call's socket.
_PORT_STEP = 2
_HIGHEST_PORT = 65535


# Every port of the configured range is in use (or could not be bound): an overload (503).
PortRangeExhaustedError = PortsExhaustedError


class PortNotAllocatedError(MediaServerError, ValueError):
    """A port was released that the allocator had not handed out."""


class PortAllocator:
    """Hands out even ports of [min_port, max_port], each to one leg at a time."""

    def __init__(self, min_port: int, max_port: int) -> None:
        if not 1 <= min_port <= max_port <= _HIGHEST_PORT:
            raise SettingsError(
                f"RTP port range {min_port}-{max_port} must satisfy 1 <= min <= max <= 65535"
            )
        first = min_port + min_port % _PORT_STEP
        ports = range(first, max_port + 1, _PORT_STEP)
        if not ports:
            raise SettingsError(f"RTP port range {min_port}-{max_port} holds no even port")
        self.min_port = min_port
        self.max_port = max_port
        # First in, first out: a released port goes to the back, so stray packets still aimed at
        # a finished call are unlikely to reach the next one.
        self._free: deque[int] = deque(ports)
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        """How many ports the range holds."""
        return len(self._free) + len(self._in_use)

    @property
    def in_use(self) -> int:
        """How many ports are handed out now."""
        return len(self._in_use)

    def allocate(self) -> int:
        """Take the free port that has been free longest."""
        if not self._free:
            raise PortRangeExhaustedError(
                f"all {self.capacity} RTP ports of {self.min_port}-{self.max_port} are in use"
            )
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a port back; it is handed out again after every other free port."""
        if port not in self._in_use:
            raise PortNotAllocatedError(f"RTP port {port} is not allocated")
        self._in_use.remove(port)
        self._free.append(port)
