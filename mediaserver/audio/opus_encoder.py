"""Encode mono 16-bit PCM (G.711 calls, agent audio) to Opus packets with libopus."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

# RFC 7845 §4: Opus durations and granule positions count 48 kHz samples.
OPUS_RATE_HZ = 48000
# RFC 6716 §2: the input rates libopus encodes natively (it resamples nothing itself).
OPUS_INPUT_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
# RFC 6716 §2.1.4: Opus frame durations; 2.5 ms is left out as durations here are whole ms.
OPUS_FRAME_DURATIONS_MS = (5, 10, 20, 40, 60)
# RFC 7845 §5.1: OpusHead is "OpusHead", version (1 byte), channel count (1 byte), then the
# pre-skip as a little-endian uint16 in 48 kHz samples at offset 10.
_OPUS_HEAD_MAGIC = b"OpusHead"
_PRE_SKIP = struct.Struct("<H")
_PRE_SKIP_OFFSET = 10
# libopus complexity runs from 0 (fastest) to 10 (best quality).
MAX_COMPLEXITY = 10


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One Opus packet and the audio it decodes to, in 48 kHz samples."""

    payload: bytes
    duration_samples: int


class OpusEncoder:
    """Turns a stream of mono int16 PCM chunks of any size into whole Opus packets."""

    # libopus takes 8/12/16/24 kHz input as it is, so nothing is resampled here; packet
    # durations are still reported in 48 kHz units, as Ogg Opus granule positions need.

    def __init__(
        self,
        *,
        input_rate_hz: int,
        bitrate_bps: int = 32000,
        frame_duration_ms: int = 20,
        complexity: int = 10,
    ) -> None:
        if input_rate_hz not in OPUS_INPUT_RATES_HZ:
            raise ValueError(f"Opus cannot take {input_rate_hz} Hz input")
        if frame_duration_ms not in OPUS_FRAME_DURATIONS_MS:
            raise ValueError(f"Opus cannot encode {frame_duration_ms} ms frames")
        if not 0 <= complexity <= MAX_COMPLEXITY:
            raise ValueError(f"Opus complexity must be 0..{MAX_COMPLEXITY}, got {complexity}")
        # "libopus" by name: "opus" would pick FFmpeg's own, experimental encoder.
        context = av.CodecContext.create("libopus", "w")
        assert isinstance(context, AudioCodecContext)
        context.sample_rate = input_rate_hz
        context.layout = "mono"
        context.format = "s16"
        context.bit_rate = bitrate_bps
        context.time_base = Fraction(1, input_rate_hz)
        context.options = {
            "compression_level": str(complexity),
            "frame_duration": str(frame_duration_ms),
        }
        context.open()
        self._context = context
        self._input_rate_hz = input_rate_hz
        self._frame_samples = input_rate_hz * frame_duration_ms // 1000
        self._packet_duration_samples = OPUS_RATE_HZ * frame_duration_ms // 1000
        self._pending = np.zeros(0, dtype=np.int16)
        self._next_pts = 0
        self._pre_skip = _parse_pre_skip(bytes(context.extradata or b""))

    @property
    def pre_skip(self) -> int:
        """Encoder lookahead in 48 kHz samples: what OpusHead's pre-skip field must say."""
        return self._pre_skip

    @property
    def input_duration_samples(self) -> int:
        """Input audio accepted so far, in 48 kHz samples (for trimming the final granule)."""
        return (self._next_pts + len(self._pending)) * OPUS_RATE_HZ // self._input_rate_hz

    def encode(self, samples: npt.NDArray[np.int16]) -> list[EncodedPacket]:
        """Encode every whole frame now available; keep the remainder for the next call."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(f"expected 1-D int16 samples, got {samples.ndim}-D {samples.dtype}")
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        whole_samples = len(pending) - len(pending) % self._frame_samples
        self._pending = pending[whole_samples:].copy()
        if not whole_samples:
            return []
        return self._encode_frame(pending[:whole_samples])

    def flush(self) -> list[EncodedPacket]:
        """Encode the buffered remainder and drain the encoder's lookahead; the encoder ends."""
        packets = self._encode_frame(self._pending) if len(self._pending) else []
        self._pending = np.zeros(0, dtype=np.int16)
        return packets + self._packets(None)

    def _encode_frame(self, samples: npt.NDArray[np.int16]) -> list[EncodedPacket]:
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._input_rate_hz
        frame.time_base = Fraction(1, self._input_rate_hz)
        frame.pts = self._next_pts
        self._next_pts += len(samples)
        return self._packets(frame)

    def _packets(self, frame: AudioFrame | None) -> list[EncodedPacket]:
        # Every packet libopus makes here is one frame of the configured duration (RFC 6716
        # §3.1 code 0); a short final frame is padded, and the container trims it.
        return [
            EncodedPacket(bytes(packet), self._packet_duration_samples)
            for packet in self._context.encode(frame)
        ]


def _parse_pre_skip(opus_head: bytes) -> int:
    """Read the pre-skip field of an OpusHead packet (RFC 7845 §5.1)."""
    if not opus_head.startswith(_OPUS_HEAD_MAGIC):
        raise ValueError("libopus produced no OpusHead header")
    (pre_skip,) = _PRE_SKIP.unpack_from(opus_head, _PRE_SKIP_OFFSET)
    return int(pre_skip)
