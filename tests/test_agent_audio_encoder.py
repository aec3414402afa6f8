"""The agent's live encoder: an utterance after a pause is heard from its first frame."""

import av
import numpy as np
import numpy.typing as npt

from mediaserver.audio.opus_silence import silence_packet
from mediaserver.audio.transcoder import AgentAudioEncoder
from mediaserver.recording.channel import Codec

RATE_HZ = 8000
FRAME = 160


def _tone_frames(count: int) -> list[npt.NDArray[np.int16]]:
    t = np.arange(count * FRAME) / RATE_HZ
    tone = (8000 * np.sin(2 * np.pi * 1300 * t)).astype(np.int16)
    return [tone[i * FRAME : (i + 1) * FRAME] for i in range(count)]


def _decoded_rms(packets: list[bytes]) -> list[float]:
    """Each packet's level as FFmpeg's Opus decoder (the oracle) plays them in a row."""
    decoder = av.CodecContext.create("opus", "r")
    levels = []
    for packet in packets:
        frames = decoder.decode(av.Packet(packet))
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64)
        levels.append(float(np.sqrt(np.mean(pcm**2))))
    return levels


def _utterance_after_pause(encoder: AgentAudioEncoder, *, start_afresh: bool) -> list[float]:
    """Levels of a second utterance, after a second of the server's silence frames."""
    packets = [encoder.encode_frame(frame) for frame in _tone_frames(5)]
    packets += [silence_packet(960)] * 50
    if start_afresh:
        encoder.start_utterance()
    packets += [encoder.encode_frame(frame) for frame in _tone_frames(5)]
    return _decoded_rms(packets)[-5:]


def test_an_utterance_after_a_pause_is_at_full_level_from_its_second_frame() -> None:
    """Reset, the encoder's second frame is as loud as the tone; kept, it ramps in for ~60 ms."""
    fresh = _utterance_after_pause(AgentAudioEncoder(Codec.OPUS, RATE_HZ), start_afresh=True)
    stale = _utterance_after_pause(AgentAudioEncoder(Codec.OPUS, RATE_HZ), start_afresh=False)
    steady = fresh[-1]
    assert fresh[1] > 0.9 * steady  # the first holds the encoder's 6.5 ms lookahead of silence
    assert stale[1] < 0.6 * steady  # what a caller heard before: the onset ramped in
    assert stale[2] < 0.8 * steady


def test_g711_needs_no_fresh_start() -> None:
    """G.711 has no state: starting an utterance changes nothing."""
    encoder = AgentAudioEncoder(Codec.PCMU, RATE_HZ)
    frame = _tone_frames(1)[0]
    first = encoder.encode_frame(frame)
    encoder.start_utterance()
    assert encoder.encode_frame(frame) == first
