"""Live-path codec adapters: caller payloads to agent PCM, agent PCM to caller payloads."""

import av
import numpy as np
import numpy.typing as npt

from mediaserver.audio.g711 import decode_pcma, decode_pcmu, encode_pcma, encode_pcmu
from mediaserver.audio.libopus import OpusDecoder, OpusFrameEncoder
from mediaserver.recording.channel import Codec

Pcm = npt.NDArray[np.int16]
FRAME_MS = 20
# libopus complexity for the agent's live audio: 0 costs about a third of 5 at 8 kHz input, and
# the agent's speech is narrowband μ-law or synthesized anyway (setting agent_opus_complexity).
DEFAULT_LIVE_COMPLEXITY = 0


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
        # libopus decodes straight to the agent's rate; G.711 is 8 kHz and resampled if need be.
        self._opus = OpusDecoder(out_rate_hz) if codec is Codec.OPUS else None
        self._resampler = _Resampler(codec.clock_rate_hz, out_rate_hz)

    def decode(self, payload: bytes) -> Pcm:
        """Decode one payload; a payload the decoder rejects is an OpusPacketError."""
        if self._opus is not None:
            return self._opus.decode(payload)
        pcm = decode_pcmu(payload) if self.codec is Codec.PCMU else decode_pcma(payload)
        return self._resampler.resample(pcm)


class AgentAudioEncoder:
    """Encodes 20 ms frames of agent PCM to one caller payload each."""

    def __init__(
        self,
        codec: Codec,
        in_rate_hz: int,
        *,
        bitrate_bps: int = 32000,
        complexity: int = DEFAULT_LIVE_COMPLEXITY,
    ) -> None:
        self.codec = codec
        self.in_rate_hz = in_rate_hz
        self.frame_samples = in_rate_hz * FRAME_MS // 1000
        self.duration = codec.clock_rate_hz * FRAME_MS // 1000  # in the codec's RTP clock
        self._opus = (
            OpusFrameEncoder(in_rate_hz, bitrate_bps=bitrate_bps, complexity=complexity)
            if codec is Codec.OPUS
            else None
        )
        self._resampler = (
            _Resampler(in_rate_hz, codec.clock_rate_hz) if self._opus is None else None
        )
        self._g711_pending = np.zeros(0, np.int16)

    def start_utterance(self) -> None:
        """The frames to come follow a pause the caller heard as silence: encode them afresh."""
        # An Opus encoder that kept its state through the pause codes the first frames as if
        # the last utterance went on: the caller's decoder, which played silence meanwhile,
        # ramps them in over ~60 ms (-8 dB in the first frame), and the encoder's lookahead
        # brings back the last 6.5 ms of the previous utterance. Reset, it starts as new.
        if self._opus is not None:
            self._opus.reset()

    def encode_frame(self, pcm: Pcm) -> bytes:
        """Encode exactly one 20 ms frame."""
        if pcm.size != self.frame_samples:
            raise ValueError(f"expected {self.frame_samples} samples, got {pcm.size}")
        if self._opus is not None:
            return self._opus.encode(pcm)
        assert self._resampler is not None
        # Keep G.711 payloads exactly 160 samples: resampling may give ±1 sample per chunk.
        pending = np.concatenate([self._g711_pending, self._resampler.resample(pcm)])
        frame, self._g711_pending = pending[: self.duration], pending[self.duration :]
        if frame.size < self.duration:
            frame = np.concatenate([frame, np.zeros(self.duration - frame.size, np.int16)])
        return encode_pcmu(frame) if self.codec is Codec.PCMU else encode_pcma(frame)
