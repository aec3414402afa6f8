"""Waveform peaks: min/max per point and channel, in BBC audiowaveform's JSON format."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.audio.peaks import (
    MAX_POINTS,
    POINT_STEP_SAMPLES,
    PeaksBuilder,
    build_audiowaveform_json,
    choose_samples_per_pixel,
    combine_channels,
    compute_peaks,
)


def test_points_hold_each_channels_min_and_max_interleaved() -> None:
    """Two channels, three samples per point, the last point partial; values in 8 bits."""
    pcm = np.array(
        [
            # left   right
            [0.50, -0.25],
            [-0.50, 0.00],
            [0.25, 0.99],  # point 0 ends here
            [0.00, 0.00],
            [-1.00, 1.00],  # point 1 is partial: full scale clips to 127
        ],
        dtype=np.float32,
    )
    peaks = compute_peaks(pcm, 3)
    document = json.loads(build_audiowaveform_json(peaks))
    assert document == {
        "version": 2,
        "channels": 2,
        "sample_rate": 48000,
        "samples_per_pixel": 3,
        "bits": 8,
        "length": 2,
        # point 0: left min, left max, right min, right max; then point 1 likewise
        "data": [-64, 64, -32, 126, -128, 0, 0, 127],
    }


def test_sixteen_bits_scale_to_the_int16_range() -> None:
    """bits=16 gives audiowaveform's 16-bit values."""
    pcm = np.array([[0.5], [-0.5]], dtype=np.float32)
    assert compute_peaks(pcm, 2, bits=16).to_audiowaveform()["data"] == [-16384, 16384]


@given(
    st.lists(st.integers(0, 700), min_size=1, max_size=12),
    st.integers(1, 500),
    st.integers(0, 2**32 - 1),
)
def test_blocks_of_any_size_give_the_same_peaks_as_one_block(
    block_sizes: list[int], samples_per_pixel: int, seed: int
) -> None:
    """The builder carries partial points across blocks: the split never shows."""
    rng = np.random.default_rng(seed)
    pcm = rng.uniform(-1, 1, size=(sum(block_sizes), 2)).astype(np.float32)
    builder = PeaksBuilder(samples_per_pixel, 2)
    start = 0
    for size in block_sizes:
        builder.add(pcm[start : start + size])
        start += size
    split = builder.build()
    whole = compute_peaks(pcm, samples_per_pixel)
    assert split.length == -(-pcm.shape[0] // samples_per_pixel)
    np.testing.assert_array_equal(split.minima, whole.minima)
    np.testing.assert_array_equal(split.maxima, whole.maxima)


def test_large_inputs_are_reduced_in_batches_with_the_same_result() -> None:
    """A builder past its batch size matches a plain per-point loop."""
    rng = np.random.default_rng(7)
    pcm = rng.uniform(-1, 1, size=(2_000_003, 2)).astype(np.float32)
    builder = PeaksBuilder(21_600, 2)
    for start in range(0, pcm.shape[0], 4800):
        builder.add(pcm[start : start + 4800])
    peaks = builder.build()
    for point in (0, 45, peaks.length - 1):
        segment = pcm[point * 21_600 : (point + 1) * 21_600]
        assert list(peaks.maxima[point]) == [int(np.floor(v * 128)) for v in segment.max(axis=0)]
        assert list(peaks.minima[point]) == [int(np.floor(v * 128)) for v in segment.min(axis=0)]


@pytest.mark.parametrize(
    ("minutes", "expected_spp"),
    [(0.5, POINT_STEP_SAMPLES), (80 / 60, POINT_STEP_SAMPLES), (5, 1920), (60, 21_600)],
)
def test_points_are_capped_so_long_calls_stay_small(minutes: float, expected_spp: int) -> None:
    """100 points per second for short calls, at most MAX_POINTS for long ones."""
    total = round(minutes * 60 * 48000)
    spp = choose_samples_per_pixel(total)
    assert spp == expected_spp
    assert spp % POINT_STEP_SAMPLES == 0
    assert -(-total // spp) <= MAX_POINTS


def test_sixty_minutes_of_speech_like_audio_stay_under_200_kb() -> None:
    """The worst case for the JSON size: every point loud, on both channels."""
    points = MAX_POINTS
    rng = np.random.default_rng(1)
    levels = rng.uniform(-1, 1, size=(points * 2, 2)).astype(np.float32)
    peaks = compute_peaks(levels, 2)  # one point per two samples: any min/max values
    assert peaks.length == points
    assert len(build_audiowaveform_json(peaks)) < 200_000


def test_channels_combine_side_by_side_padded_with_silence() -> None:
    """Mono peaks of two files make one two-channel document of the requested length."""
    left = compute_peaks(np.full((6, 1), 0.5, dtype=np.float32), 3)
    right = compute_peaks(np.full((3, 1), -0.5, dtype=np.float32), 3)
    both = combine_channels([left, right], length=3)
    assert both.to_audiowaveform()["data"] == [64, 64, -64, -64, 64, 64, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="share"):
        combine_channels([left, compute_peaks(np.zeros((3, 1), dtype=np.float32), 2)])


def test_wrong_shapes_are_refused() -> None:
    """A block must have the channel count the builder was made for."""
    builder = PeaksBuilder(10, 2)
    with pytest.raises(ValueError, match="shaped"):
        builder.add(np.zeros((5, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="samples_per_pixel"):
        PeaksBuilder(0, 2)
