"""Live-path codec adapters: caller payloads to agent PCM, agent PCM to caller payloads."""

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

from mediaserver.audio.g711 import decode_pcma, decode_pcmu, encode_pcma, encode_pcmu
from mediaserver.audio.opus_encoder import OpusEncoder
from mediaserver.errors import OpusPacketError
from mediaserver.recording.channel import Codec

Pcm = npt.NDArray[np.int16]
OPUS_RATE_HZ = 48000
FRAME_MS = 20


class _Resampler:
    """Mono int16 rate conversion with PyAV's swresample; a no-op when the rates match."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        self._in_rate_hz = in_rate_hz
        self._resampler = (
            None
            if in_rate_hz == out_rate_hz
            else av.AudioResampler(format="s16", layout="mono", rate=out_rate_hz)
        )

    def resample(self, pcm: Pcm) -> Pcm:
        """Convert one chunk; output length follows the rate ratio over time."""
        if self._resampler is None or pcm.size == 0:
            return pcm
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._in_rate_hz
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16, copy=False) if out else pcm[:0]


class CallerAudioDecoder:
    """Decodes the caller's RTP payloads to mono PCM at the agent's rate."""

    def __init__(self, codec: Codec, out_rate_hz: int) -> None:
        self.codec = codec
        self._opus: AudioCodecContext | None = None
        if codec is Codec.OPUS:
            context = av.CodecContext.create("opus", "r")
            assert isinstance(context, AudioCodecContext)
            context.sample_rate = OPUS_RATE_HZ
            context.layout = "mono"
            self._opus = context
            # FFmpeg decodes Opus to planar float: convert format and rate in one step.
            self._opus_resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate_hz)
        self._resampler = _Resampler(codec.clock_rate_hz, out_rate_hz)

    def decode(self, payload: bytes) -> Pcm:
        """Decode one payload; a payload the decoder rejects is an OpusPacketError."""
        if self.codec is Codec.PCMU:
            pcm = decode_pcmu(payload)
        elif self.codec is Codec.PCMA:
            pcm = decode_pcma(payload)
        else:
            assert self._opus is not None
            try:
                frames = self._opus.decode(av.Packet(payload))
            except av.error.FFmpegError as exc:
                raise OpusPacketError(f"Opus payload does not decode: {exc}") from None
            chunks = [
                out.to_ndarray().reshape(-1)
                for frame in frames
                for out in self._opus_resampler.resample(frame)
            ]
            return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return self._resampler.resample(pcm)


class AgentAudioEncoder:
    """Encodes 20 ms frames of agent PCM to one caller payload each."""

    def __init__(self, codec: Codec, in_rate_hz: int, *, bitrate_bps: int = 32000) -> None:
        self.codec = codec
        self.in_rate_hz = in_rate_hz
        self.frame_samples = in_rate_hz * FRAME_MS // 1000
        self.duration = codec.clock_rate_hz * FRAME_MS // 1000  # in the codec's RTP clock
        self._opus = (
            OpusEncoder(input_rate_hz=in_rate_hz, bitrate_bps=bitrate_bps, complexity=5)
            if codec is Codec.OPUS
            else None
        )
        self._resampler = (
            _Resampler(in_rate_hz, codec.clock_rate_hz) if self._opus is None else None
        )
        self._g711_pending = np.zeros(0, np.int16)

    def encode_frame(self, pcm: Pcm) -> bytes:
        """Encode exactly one 20 ms frame."""
        if pcm.size != self.frame_samples:
            raise ValueError(f"expected {self.frame_samples} samples, got {pcm.size}")
        if self._opus is not None:
            packets = self._opus.encode(pcm)
            # libopus buffers nothing at a fixed 20 ms frame size: one frame in, one packet out.
            assert len(packets) == 1, len(packets)
            return packets[0].payload
        assert self._resampler is not None
        # Keep G.711 payloads exactly 160 samples: resampling may give ±1 sample per chunk.
        pending = np.concatenate([self._g711_pending, self._resampler.resample(pcm)])
        frame, self._g711_pending = pending[: self.duration], pending[self.duration :]
        if frame.size < self.duration:
            frame = np.concatenate([frame, np.zeros(self.duration - frame.size, np.int16)])
        return encode_pcmu(frame) if self.codec is Codec.PCMU else encode_pcma(frame)


def silence(samples: int) -> Pcm:
    """Digital silence."""
    return np.zeros(samples, np.int16)


__all__ = ["AgentAudioEncoder", "CallerAudioDecoder", "Fraction", "Pcm", "silence"]
