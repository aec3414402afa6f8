"""A plain-RTP caller for end-to-end tests: sends paced packets, keeps what it receives."""

import asyncio
import struct
import time
from dataclasses import dataclass, field

_HEADER = struct.Struct("!BBHII")


@dataclass(slots=True)
class ReceivedPacket:
    """An RTP packet the caller got back, with its arrival time."""

    arrival_ns: int
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass(slots=True)
class RtpCaller(asyncio.DatagramProtocol):
    """Sends RTP at real-time pace to the server's port and records the replies."""

    payload_type: int = 111
    ssrc: int = 0x1234ABCD
    received: list[ReceivedPacket] = field(default_factory=list)
    # Of `received`, the packets that carry sound: the server sends silence frames in between.
    audio: list[ReceivedPacket] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    got_packet: asyncio.Event = field(default_factory=asyncio.Event)
    got_audio: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket."""
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Keep every RTP packet the server sends."""
        if len(data) < 12 or data[1] & 0x7F in range(72, 96):
            return  # RTCP
        _, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        packet = ReceivedPacket(
            time.monotonic_ns(), second & 0x7F, sequence, timestamp, ssrc, data[12:]
        )
        self.received.append(packet)
        self.got_packet.set()
        if not is_silence(packet.payload):
            self.audio.append(packet)
            self.got_audio.set()

    def send_packet(
        self, sequence: int, timestamp: int, payload: bytes, marker: bool = False
    ) -> None:
        """Send one RTP packet."""
        assert self.transport is not None
        header = _HEADER.pack(
            0x80, (0x80 if marker else 0) | self.payload_type, sequence, timestamp, self.ssrc
        )
        self.transport.sendto(header + payload)

    async def send_stream(
        self, payloads: list[bytes], *, samples_per_packet: int = 960
    ) -> list[int]:
        """Send payloads every 20 ms on an absolute schedule; returns each one's send time (ns)."""
        sent: list[int] = []
        start = time.monotonic()
        for index, payload in enumerate(payloads):
            delay = start + index * 0.020 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.monotonic_ns())
            self.send_packet(index & 0xFFFF, index * samples_per_packet, payload, marker=index == 0)
        return sent


# The filler frames the server sends while the agent is silent: Opus TOC config 31 (CELT
# fullband 20 ms, RFC 6716 §3.1) with a CELT frame that decodes to digital silence; for G.711,
# 160 zero samples (μ-law 0xFF, A-law 0xD5, RFC 3551 §4.5.14).
SILENCE_FRAMES = frozenset({b"\xf8\xff\xfe", b"\xff" * 160, b"\xd5" * 160})


def is_silence(payload: bytes) -> bool:
    """Whether a payload is one of the server's silence fillers (not the agent's own audio)."""
    return payload in SILENCE_FRAMES


async def open_caller(host: str, port: int, payload_type: int = 111) -> RtpCaller:
    """A caller socket connected to the server's RTP port."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: RtpCaller(payload_type=payload_type), remote_addr=(host, port)
    )
    return protocol
