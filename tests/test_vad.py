"""Voice activity: libopus decoding to 16 kHz, and webrtcvad spans with true edges."""

import io
from pathlib import Path

import numpy as np
import pytest

from mediaserver.analysis.channel_speech import (
    compute_channel_spans,
    detect_file_speech,
    extract_file_features,
)
from mediaserver.analysis.vad import Span, VadConfig, compute_speech_spans, detect_speech
from mediaserver.audio.libopus import OpusDecoder, load_libopus
from mediaserver.audio.ogg_opus_decode import decode_ogg_opus, decode_ogg_opus_file
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_silence import build_silence_packets
from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.jobs.analysis_job import plan_parts

from audio_oracle import encode_tone_packets
from spoken_dialogue import RATE_HZ, build_script, caller_timeline, encode_opus, speak

RATE_16K = 16000


def _ogg(packets: list[bytes], pre_skip: int = 312) -> bytes:
    out = io.BytesIO()
    writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=pre_skip)
    for packet in packets:
        writer.write_packet(packet, compute_packet_samples(packet))
    writer.close()
    return out.getvalue()


def test_libopus_is_found_and_decodes_at_16k() -> None:
    """A 20 ms packet decodes to 320 samples at 16 kHz, into a block at an offset too; after a
    reset the decoder decodes as a new one."""
    assert load_libopus() is not None
    [packet, *_] = encode_tone_packets(440.0, 0.1)
    decoder = OpusDecoder(RATE_16K)
    fresh = decoder.decode(packet)
    assert fresh.size == 320
    block = np.zeros(2000, np.int16)
    assert OpusDecoder(RATE_16K).decode_into(packet, block, 10) == 320
    assert np.array_equal(block[10:330], fresh)
    decoder.reset()
    assert np.array_equal(decoder.decode(packet), fresh)


def test_decoded_tone_keeps_its_time_and_frequency() -> None:
    """Silence, then a 1 kHz tone from 0.5 s: decoded at 16 kHz the tone starts at 0.5 s."""
    silence = build_silence_packets(24000)  # 0.5 s of the recorder's own silence packets
    tone = encode_tone_packets(1000.0, 1.0)
    pcm = np.concatenate(list(decode_ogg_opus(io.BytesIO(_ogg(silence + tone, 0)), RATE_16K)))
    assert pcm.size == pytest.approx(1.5 * RATE_16K, abs=400)  # the encoder's flush adds a frame
    assert not pcm[: 8000 - 160].any()  # the silence packets became digital silence
    loud = np.flatnonzero(np.abs(pcm) > 3000)
    # libopus's lookahead (6.5 ms) delays the tone a little: the decoder does not undo it.
    assert 0.5 <= loud[0] / RATE_16K <= 0.52
    spectrum = np.abs(np.fft.rfft(pcm[9000:13000]))
    assert np.argmax(spectrum) * RATE_16K / 4000 == pytest.approx(1000, abs=10)


def test_pre_skip_and_end_trimming_follow_the_granule_positions() -> None:
    """Pre-skip 960 removes 20 ms at the start: 1 s of packets gives 0.98 s of audio."""
    packets = encode_tone_packets(500.0, 1.0, flush=False)
    pcm = np.concatenate(list(decode_ogg_opus(io.BytesIO(_ogg(packets, 960)), RATE_16K)))
    assert pcm.size == RATE_16K - 320


def test_speech_spans_of_real_speech_end_where_the_speech_ends(tmp_path: Path) -> None:
    """espeak speech placed at 1.0 s in 3 s of Opus: one span within 30 ms of the true edges,
    although webrtcvad alone runs on for 60-130 ms after the speech."""
    speech = speak("Thank you for calling.", "agent")
    pcm = np.zeros(RATE_HZ * 3 + speech.size, np.int16)
    pcm[RATE_HZ - 312 : RATE_HZ - 312 + speech.size] = speech  # 312: libopus's lookahead
    path = tmp_path / "speech.opus"
    path.write_bytes(_ogg(encode_opus(pcm)))
    spans, duration_s = detect_file_speech(path, VadConfig())
    assert duration_s == pytest.approx(pcm.size / RATE_HZ, abs=0.03)
    truth_end_s = 1.0 + speech.size / RATE_HZ
    assert len(spans) == 1
    assert spans[0].start_s == pytest.approx(1.0, abs=0.03)
    assert spans[0].end_s == pytest.approx(truth_end_s, abs=0.03)


def test_short_pauses_are_bridged_and_clicks_dropped() -> None:
    """Frames: speech, a 150 ms pause, speech, silence, a 30 ms click: one span, no click."""
    config = VadConfig(min_speech_ms=90, min_silence_ms=300)
    decisions = np.array(
        [True] * 10 + [False] * 5 + [True] * 10 + [False] * 20 + [True] + [False] * 5
    )
    energies = np.repeat(np.where(decisions, 70.0, 0.0), 3).astype(np.float32)
    energies[(45 * 3) : (45 * 3) + 2] = 70.0  # the click is 20 ms loud
    assert compute_speech_spans(decisions, energies, config) == [Span(0.0, 0.75)]


def test_hangover_is_trimmed_by_energy() -> None:
    """webrtcvad says speech for 4 frames after a loud part: the quiet tail is cut off."""
    decisions = np.array([False] * 5 + [True] * 14 + [False] * 5)
    energies = np.zeros(decisions.size * 3, np.float32)
    energies[15:45] = 70.0  # loud from 150 ms to 450 ms; frames 5..19 end at 570 ms
    energies[45:57] = 20.0  # the hang-over: near silence
    assert compute_speech_spans(decisions, energies, VadConfig()) == [Span(0.15, 0.45)]


def test_a_late_onset_is_extended_over_loud_audio() -> None:
    """Loud slices just before webrtcvad's first speech frame belong to the span."""
    decisions = np.array([False] * 10 + [True] * 10 + [False] * 10)
    energies = np.zeros(decisions.size * 3, np.float32)
    energies[24:60] = 60.0  # audible from 240 ms; webrtcvad said speech from 300 ms
    assert compute_speech_spans(decisions, energies, VadConfig()) == [Span(0.24, 0.6)]


def test_silence_in_any_block_size_gives_no_spans() -> None:
    """Digital silence fed in odd block sizes: no speech, and every sample counted."""
    blocks = [np.zeros(n, np.int16) for n in (1, 479, 481, 16000)]
    assert detect_speech(blocks, VadConfig()) == []


@pytest.mark.parametrize(
    "config",
    [
        VadConfig(mode=4),
        VadConfig(frame_ms=25),
        VadConfig(sample_rate_hz=44100),
        VadConfig(trim_db=0),
    ],
)
def test_invalid_vad_settings_are_refused(config: VadConfig) -> None:
    """What webrtcvad cannot do is a ValueError naming it."""
    with pytest.raises(ValueError, match="vad"):
        config.validate()


def test_a_part_of_the_time_line_decodes_as_the_same_samples(tmp_path: Path) -> None:
    """Samples [0.5 s, 1.2 s) decoded alone (80 ms warm-up) match the whole file's decode."""
    path = tmp_path / "tone.opus"
    path.write_bytes(_ogg(encode_tone_packets(300.0, 2.0, flush=False), 960))
    whole = np.concatenate(list(decode_ogg_opus_file(path, RATE_16K))).astype(np.int32)
    part = np.concatenate(
        list(decode_ogg_opus_file(path, RATE_16K, first_sample=8000, end_sample=19200))
    ).astype(np.int32)
    assert part.size == 11200
    assert np.abs(part - whole[8000:19200]).max() <= 2  # the decoder converged in the warm-up


def test_a_channel_analysed_in_parts_gives_the_spans_of_the_whole(tmp_path: Path) -> None:
    """The dialogue's caller channel cut in three parts: the same spans as in one piece."""
    script = build_script()
    path = tmp_path / "caller.opus"
    path.write_bytes(_ogg(encode_opus(caller_timeline(script))))
    config = VadConfig()
    whole, duration_s = detect_file_speech(path, config)
    parts = plan_parts(duration_s, config.frame_ms, 3)
    assert len(parts) == 3
    features = [extract_file_features(path, config, a, b) for a, b in parts]
    assert compute_channel_spans(features, config) == whole
