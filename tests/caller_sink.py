"""A caller-media sink for transport tests: keeps what a transport delivers (a test peer)."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class CallerPacket:
    """One packet as the transport handed it to the sink."""

    arrival_ns: int
    rtp_timestamp: int
    ssrc: int
    sequence: int
    payload_type: int
    marker: bool
    payload: bytes


class CollectingSink:
    """A call-session stand-in: keeps every delivered packet and every end of the leg."""

    def __init__(self) -> None:
        self.packets: list[CallerPacket] = []
        self.ended: list[str] = []
        self._changed = asyncio.Event()

    def on_caller_packet(
        self,
        *,
        arrival_ns: int,
        rtp_timestamp: int,
        ssrc: int,
        sequence: int,
        payload_type: int,
        marker: bool,
        payload: bytes,
    ) -> None:
        """Keep the packet."""
        self.packets.append(
            CallerPacket(arrival_ns, rtp_timestamp, ssrc, sequence, payload_type, marker, payload)
        )
        self._changed.set()

    def on_caller_ended(self, reason: str) -> None:
        """Keep the reason."""
        self.ended.append(reason)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        """Wait until the predicate holds after a delivery or an end."""

        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout_s)

    async def wait_for_packets(self, count: int) -> None:
        """Wait until `count` packets have been delivered."""
        await self.wait_for(lambda: len(self.packets) >= count)

    async def wait_for_end(self) -> None:
        """Wait until the transport ends the leg."""
        await self.wait_for(lambda: bool(self.ended))
