"""Tests for the stereo merge, checked with opusinfo, PyAV decoding and FFT tone detection."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.ogg_page import build_lacing_values, build_ogg_page
from mediaserver.audio.opus_head import OpusHead, build_opus_head, build_opus_tags
from mediaserver.audio.stereo_merge import MergeResult, merge_stereo
from mediaserver.errors import MergeError

from audio_oracle import assert_valid_opus, decode_ogg, find_onset, run_opusinfo

RATE_HZ = 48000
MS = RATE_HZ // 1000


def burst(
    duration_s: float, frequency_hz: float, start_s: float, length_s: float
) -> npt.NDArray[np.int16]:
    """Silence with one sine burst at `start_s`."""
    samples = np.zeros(round(duration_s * RATE_HZ), dtype=np.int16)
    start = round(start_s * RATE_HZ)
    t = np.arange(round(length_s * RATE_HZ)) / RATE_HZ
    samples[start : start + len(t)] = (np.sin(2 * np.pi * frequency_hz * t) * 12000).astype(
        np.int16
    )
    return samples


def write_opus(path: Path, samples: npt.NDArray[np.int16], *, frame_samples: int = 4800) -> Path:
    """Encode mono 48 kHz PCM to Ogg Opus with PyAV's libopus and Ogg muxer."""
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RATE_HZ, layout="mono")
        stream.bit_rate = 64000
        for start in range(0, len(samples), frame_samples):
            chunk = samples[start : start + frame_samples]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE_HZ
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decoded_format(path: Path) -> tuple[int, int]:
    """(channels, sample rate) of a file's decoded audio."""
    with av.open(str(path)) as container:
        frame = next(container.decode(audio=0))
        return len(frame.layout.channels), frame.sample_rate


def tone_level(samples: npt.NDArray[np.float32], frequency_hz: float) -> float:
    """Amplitude of one frequency over a whole stretch of audio (single-bin DFT)."""
    t = np.arange(len(samples)) / RATE_HZ
    return float(abs(np.dot(samples, np.exp(-2j * np.pi * frequency_hz * t))) * 2 / len(samples))


def write_header_only_opus(path: Path) -> Path:
    """An Ogg Opus file whose stream ends after OpusHead and OpusTags: zero audio packets."""
    pages = [
        (0x02, build_opus_head(OpusHead(channel_count=1, pre_skip_samples=312))),  # BOS
        (0x00, build_opus_tags("test")),
        (0x04, b""),  # EOS, no packets
    ]
    path.write_bytes(
        b"".join(
            build_ogg_page(
                header_type=header_type,
                granule_position=0,
                serial=1,
                sequence=sequence,
                lacing_values=build_lacing_values(len(body)) if body else b"",
                body=body,
            )
            for sequence, (header_type, body) in enumerate(pages)
        )
    )
    return path


def write_writer_empty_opus(path: Path) -> Path:
    """The channel file our own writer makes for a silent channel: zero samples of audio."""
    with path.open("wb") as out:
        OggOpusWriter(out, channel_count=1, pre_skip_samples=312).close()
    return path


@pytest.fixture
def call_files(tmp_path: Path) -> tuple[Path, Path]:
    """Left: 440 Hz burst at 1.0 s; right: 1000 Hz burst at 2.0 s; both 3 s and a bit."""
    duration_s = 3.0 + 123 / RATE_HZ
    left = write_opus(tmp_path / "left.opus", burst(duration_s, 440, 1.0, 0.3))
    right = write_opus(tmp_path / "right.opus", burst(duration_s, 1000, 2.0, 0.3))
    return left, right


def test_each_burst_lands_on_its_own_channel_at_its_time(
    call_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Left's 440 Hz burst is on FL at 1.0 s ±5 ms only; right's 1000 Hz burst on FR at 2.0 s."""
    out = tmp_path / "stereo.opus"
    merge_stereo(*call_files, out)
    stereo = decode_ogg(out)
    fl, fr = stereo[0], stereo[1]
    assert find_onset(fl, 440, around_s=1.0) == pytest.approx(1.0, abs=0.005)
    assert find_onset(fr, 1000, around_s=2.0) == pytest.approx(2.0, abs=0.005)
    assert find_onset(fl, 1000, around_s=2.0) is None
    assert find_onset(fr, 440, around_s=1.0) is None
    at_1s = slice(round(1.05 * RATE_HZ), round(1.25 * RATE_HZ))
    at_2s = slice(round(2.05 * RATE_HZ), round(2.25 * RATE_HZ))
    assert tone_level(fl[at_1s], 440) > 100 * tone_level(fr[at_1s], 440)
    assert tone_level(fr[at_2s], 1000) > 100 * tone_level(fl[at_2s], 1000)


def test_output_is_valid_stereo_48khz_ogg_opus(
    call_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """The output passes opusinfo, decodes with ffmpeg, and has 2 channels at 48 kHz."""
    out = tmp_path / "stereo.opus"
    merge_stereo(*call_files, out)
    assert_valid_opus(out)
    assert "Channels: 2" in run_opusinfo(out).stdout
    assert decoded_format(out) == (2, RATE_HZ)
    ffmpeg = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ffmpeg.returncode == 0
    assert ffmpeg.stderr == ""


def test_decoded_duration_equals_the_inputs(call_files: tuple[Path, Path], tmp_path: Path) -> None:
    """Pre-skip and end trimming leave exactly the inputs' decoded length (within one frame)."""
    out = tmp_path / "stereo.opus"
    result = merge_stereo(*call_files, out)
    input_samples = decode_ogg(call_files[0]).shape[1]
    output_samples = decode_ogg(out).shape[1]
    assert abs(output_samples - input_samples) <= 20 * MS
    assert result.duration_samples == output_samples
    assert result == MergeResult(out, output_samples, out.stat().st_size, result.elapsed_s)


def test_clicks_keep_their_sample_positions(tmp_path: Path) -> None:
    """A click at sample N of either input is at sample N ±1 ms of its output channel."""
    left_pcm = np.zeros(2 * RATE_HZ, dtype=np.int16)
    right_pcm = np.zeros(2 * RATE_HZ, dtype=np.int16)
    left_click, right_click = 30011, 71777
    left_pcm[left_click : left_click + 3] = 30000
    right_pcm[right_click : right_click + 3] = 30000
    out = tmp_path / "stereo.opus"
    merge_stereo(
        write_opus(tmp_path / "l.opus", left_pcm, frame_samples=1111),
        write_opus(tmp_path / "r.opus", right_pcm, frame_samples=960),
        out,
    )
    stereo = decode_ogg(out)
    assert abs(int(np.argmax(np.abs(stereo[0]))) - left_click) <= MS
    assert abs(int(np.argmax(np.abs(stereo[1]))) - right_click) <= MS


def test_shorter_input_is_padded_with_silence(tmp_path: Path) -> None:
    """With a 1.5 s right and a 3 s left, the output lasts 3 s and FR is silent after 1.5 s."""
    left = write_opus(tmp_path / "l.opus", burst(3.0, 440, 0.0, 3.0))
    right = write_opus(tmp_path / "r.opus", burst(1.5, 1000, 0.0, 1.5))
    out = tmp_path / "stereo.opus"
    merge_stereo(left, right, out)
    assert_valid_opus(out)
    stereo = decode_ogg(out)
    assert abs(stereo.shape[1] - 3 * RATE_HZ) <= 20 * MS
    fr = stereo[1]
    assert tone_level(fr[RATE_HZ // 2 : RATE_HZ], 1000) > 0.2
    assert np.abs(fr[round(1.6 * RATE_HZ) :]).max() < 0.01
    assert tone_level(stereo[0][2 * RATE_HZ : round(2.5 * RATE_HZ)], 440) > 0.2


def test_longer_right_input_sets_the_duration(tmp_path: Path) -> None:
    """The right channel being the longer one works the same way round."""
    left = write_opus(tmp_path / "l.opus", burst(0.5, 440, 0.0, 0.5))
    right = write_opus(tmp_path / "r.opus", burst(2.0, 1000, 0.0, 2.0))
    out = tmp_path / "stereo.opus"
    result = merge_stereo(left, right, out)
    assert abs(result.duration_samples - 2 * RATE_HZ) <= 20 * MS
    assert np.abs(decode_ogg(out)[0][round(0.6 * RATE_HZ) :]).max() < 0.01


@pytest.mark.parametrize("make_empty", [write_header_only_opus, write_writer_empty_opus])
def test_channel_without_audio_becomes_silence(
    make_empty: Callable[[Path], Path], call_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """A left file with no audio merges as silence under the right channel's full length."""
    empty = make_empty(tmp_path / "empty.opus")
    out = tmp_path / "stereo.opus"
    result = merge_stereo(empty, call_files[1], out)
    assert_valid_opus(out)
    stereo = decode_ogg(out)
    assert abs(stereo.shape[1] - decode_ogg(call_files[1]).shape[1]) <= 20 * MS
    assert result.duration_samples == stereo.shape[1]
    assert np.abs(stereo[0]).max() < 0.01
    assert find_onset(stereo[1], 1000, around_s=2.0) == pytest.approx(2.0, abs=0.005)


@pytest.mark.parametrize("make_empty", [write_header_only_opus, write_writer_empty_opus])
def test_two_channels_without_audio_give_a_valid_silent_file(
    make_empty: Callable[[Path], Path], tmp_path: Path
) -> None:
    """With no audio on either side the output is still valid stereo Ogg Opus, one sample long."""
    empty = make_empty(tmp_path / "empty.opus")
    out = tmp_path / "stereo.opus"
    result = merge_stereo(empty, empty, out)
    assert_valid_opus(out)
    stereo = decode_ogg(out)
    assert stereo.shape == (2, 1)
    assert result.duration_samples == 1
    assert np.abs(stereo).max() < 0.01


def test_missing_file_raises(call_files: tuple[Path, Path], tmp_path: Path) -> None:
    """A missing channel file is named in the MergeError."""
    with pytest.raises(MergeError, match=r"right channel file .*nope\.opus does not exist"):
        merge_stereo(call_files[0], tmp_path / "nope.opus", tmp_path / "stereo.opus")


def test_wav_input_raises_not_opus(call_files: tuple[Path, Path], tmp_path: Path) -> None:
    """A readable but non-Opus file (WAV) is refused, and no output or temp file is left."""
    wav_path = tmp_path / "left.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(16000))
    out = tmp_path / "stereo.opus"
    with pytest.raises(MergeError, match=r"left channel file .* not Opus"):
        merge_stereo(wav_path, call_files[1], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["left.opus", "left.wav", "right.opus"]


@pytest.mark.parametrize(
    "content", [b"", b"this is not audio" * 100, b"OggS" + bytes(200)], ids=["empty", "text", "ogg"]
)
def test_garbage_input_raises(
    content: bytes, call_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Empty, non-media and broken-Ogg files raise MergeError, never an FFmpeg error."""
    garbage = tmp_path / "garbage.opus"
    garbage.write_bytes(content)
    with pytest.raises(MergeError, match="left channel file"):
        merge_stereo(garbage, call_files[1], tmp_path / "stereo.opus")


def test_encoder_settings_reach_libopus(call_files: tuple[Path, Path], tmp_path: Path) -> None:
    """frame_duration_ms=60 gives 60 ms packets; a lower bit rate gives a smaller file."""
    out_60 = tmp_path / "stereo60.opus"
    merge_stereo(*call_files, out_60, frame_duration_ms=60, bitrate_bps=24000, complexity=0)
    assert_valid_opus(out_60)
    assert "60.0ms (max),   60.0ms (avg)" in run_opusinfo(out_60).stdout
    out_64k = tmp_path / "stereo64k.opus"
    merge_stereo(*call_files, out_64k, bitrate_bps=64000)
    assert out_60.stat().st_size < out_64k.stat().st_size / 2


@pytest.mark.parametrize(
    ("frame_duration_ms", "complexity", "message"), [(30, 10, "30 ms"), (20, -1, "complexity")]
)
def test_settings_opus_cannot_use_raise(
    frame_duration_ms: int,
    complexity: int,
    message: str,
    call_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Frame durations and complexities Opus does not have raise MergeError up front."""
    out = tmp_path / "stereo.opus"
    with pytest.raises(MergeError, match=message):
        merge_stereo(*call_files, out, frame_duration_ms=frame_duration_ms, complexity=complexity)
