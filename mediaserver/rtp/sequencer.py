"""Numbering of the packets a call sends: one sequencer per call, driven by the pacer's ticks."""

import secrets

from mediaserver.rtp.media_packet import MediaPacket

_SEQUENCE_MODULUS = 1 << 16  # RFC 3550 §5.1: 16-bit sequence numbers
_TIMESTAMP_MODULUS = 1 << 32  # and 32-bit timestamps, both wrapping


class RtpSequencer:
    """Gives each sent frame its sequence number, timestamp and marker from the pacer's tick."""

    # The timestamp follows the tick, not the frames sent: a tick with nothing to send still
    # moves the media clock by one frame, so silences keep their length at the receiver
    # (RFC 3550 §5.1: the sampling clock runs on). The first packet after a silence carries
    # the marker (RFC 3551 §4.1).

    __slots__ = ("_last_tick", "_sequence", "_timestamp_origin", "samples_per_tick", "ssrc")

    def __init__(
        self,
        samples_per_tick: int,
        *,
        ssrc: int | None = None,
        first_sequence: int | None = None,
        timestamp_origin: int | None = None,
    ) -> None:
        # RFC 3550 §5.1: SSRC, first sequence number and first timestamp are random.
        self.samples_per_tick = samples_per_tick
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self._sequence = secrets.randbits(16) if first_sequence is None else first_sequence
        self._timestamp_origin = (
            secrets.randbits(32) if timestamp_origin is None else timestamp_origin
        )
        self._last_tick: int | None = None

    def number(self, tick: int, payload: bytes, payload_type: int) -> MediaPacket:
        """The packet that carries `payload` as the frame of `tick` (arrival_ns left at 0)."""
        marker = self._last_tick is None or tick > self._last_tick + 1
        self._last_tick = tick
        timestamp = (self._timestamp_origin + tick * self.samples_per_tick) % _TIMESTAMP_MODULUS
        packet = MediaPacket(0, timestamp, self._sequence, self.ssrc, payload_type, marker, payload)
        self._sequence = (self._sequence + 1) % _SEQUENCE_MODULUS
        return packet
