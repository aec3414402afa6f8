"""Timeline test input: packets described by timing and duration, placed by compute_timeline."""

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mediaserver.recording.timeline import Timeline, TimelineConfig, compute_timeline
from mediaserver.rtp.media_packet import MediaPacket

# Payload sizes the timeline reads as "audio" or "silence" (config.silence_payload_bytes is 8).
_AUDIO_PAYLOAD = bytes(20)
_SILENCE_PAYLOAD = bytes(3)


@dataclass(frozen=True, slots=True)
class TimedPacket:
    """A packet as a test describes it: its timing, its audio duration and the test's own id."""

    arrival_ns: int
    rtp_timestamp: int
    sequence: int
    ssrc: int
    duration: int
    index: int
    silence_hint: bool = False


def place(packets: Sequence[TimedPacket], *, origin_ns: int, config: TimelineConfig) -> Timeline:
    """Place the packets; every placement's index is the test's id of its packet."""
    media = [
        MediaPacket(
            p.arrival_ns,
            p.rtp_timestamp,
            p.sequence,
            p.ssrc,
            111,
            False,
            _SILENCE_PAYLOAD if p.silence_hint else _AUDIO_PAYLOAD,
        )
        for p in packets
    ]
    timeline = compute_timeline(
        media, [p.duration for p in packets], origin_ns=origin_ns, config=config
    )
    placements = tuple(replace(pl, index=packets[pl.index].index) for pl in timeline.placements)
    return replace(timeline, placements=placements)
