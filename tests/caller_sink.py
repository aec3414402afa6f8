"""A caller-media sink for transport tests: keeps what a transport delivers (a test peer)."""

import asyncio
from collections.abc import Callable

from mediaserver.recording.call import EndReason
from mediaserver.rtp.dtmf_detector import DtmfDigit
from mediaserver.rtp.media_packet import MediaPacket

WAIT_S = 5.0


class CollectingSink:
    """A call-session stand-in: keeps every delivered and sent packet and every end of the leg."""

    def __init__(self) -> None:
        self.packets: list[MediaPacket] = []
        self.sent: list[MediaPacket] = []
        self.ended: list[str] = []
        self.digits: list[str] = []
        self._changed = asyncio.Event()

    def on_caller_packet(self, packet: MediaPacket) -> None:
        """Keep the packet."""
        self.packets.append(packet)
        self._changed.set()

    def on_audio_sent(self, packet: MediaPacket) -> None:
        """Keep what the transport reports it sent."""
        self.sent.append(packet)
        self._changed.set()

    def on_caller_dtmf(self, digit: DtmfDigit, ssrc: int, arrival_ns: int) -> None:
        """Keep the key."""
        self.digits.append(digit.digit)
        self._changed.set()

    def on_caller_ended(self, reason: EndReason) -> None:
        """Keep the reason."""
        self.ended.append(reason.value)
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
