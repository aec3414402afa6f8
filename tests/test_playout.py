"""Playout queue: 20 ms frames in order, marks after their audio, clear drops audio, not marks."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.playout import Playout

RATE = 8000
FRAME = 160


def _ramp(start: int, count: int) -> np.ndarray:
    return (np.arange(start, start + count) % 30000).astype(np.int16)


def test_frames_come_out_in_order_and_whole() -> None:
    """Audio pushed in odd-sized chunks comes out as exact 20 ms frames, sample for sample."""
    playout = Playout(RATE)
    audio = _ramp(0, FRAME * 5)
    for start in range(0, audio.size, 70):
        playout.push_audio(audio[start : start + 70])
    frames = [playout.next_frame().pcm for _ in range(5)]
    assert all(f is not None and f.size == FRAME for f in frames)
    assert np.array_equal(np.concatenate(frames), audio)  # type: ignore[arg-type]
    assert playout.next_frame().pcm is None


def test_partial_tail_waits_one_tick_then_plays_padded() -> None:
    """A short tail is held one tick for more audio, then played padded with silence."""
    playout = Playout(RATE)
    playout.push_audio(_ramp(1, 100))
    assert playout.next_frame().pcm is None
    frame = playout.next_frame().pcm
    assert frame is not None
    assert np.array_equal(frame[:100], _ramp(1, 100))
    assert not frame[100:].any()


def test_partial_tail_joined_by_more_audio_is_not_padded() -> None:
    """Audio arriving within the tick completes the frame without silence inside."""
    playout = Playout(RATE)
    playout.push_audio(_ramp(1, 100))
    assert playout.next_frame().pcm is None
    playout.push_audio(_ramp(101, 100))
    frame = playout.next_frame().pcm
    assert frame is not None
    assert np.array_equal(frame, _ramp(1, FRAME))


def test_mark_is_reached_with_the_frame_that_ends_its_audio() -> None:
    """A mark comes back with the frame carrying the last audio before it, not earlier."""
    playout = Playout(RATE)
    playout.push_audio(_ramp(0, FRAME * 2))
    playout.push_mark("a")
    playout.push_audio(_ramp(0, FRAME))
    first, second, third = (playout.next_frame() for _ in range(3))
    assert first.marks == ()
    assert second.marks == ("a",)
    assert third.marks == ()


def test_mark_completes_a_partial_frame_at_once() -> None:
    """Audio followed by a mark is played padded right away: the agent said the segment ended."""
    playout = Playout(RATE)
    playout.push_audio(_ramp(0, 50))
    playout.push_mark("end")
    frame = playout.next_frame()
    assert frame.pcm is not None
    assert frame.marks == ("end",)


def test_mark_on_empty_queue_is_reached_immediately() -> None:
    """A mark with no audio before it is reached at the next tick."""
    playout = Playout(RATE)
    playout.push_mark("now")
    assert playout.next_frame().marks == ("now",)


def test_clear_drops_audio_and_returns_pending_marks() -> None:
    """Barge-in: queued audio is gone, its marks are returned so they can be echoed."""
    playout = Playout(RATE)
    playout.push_audio(_ramp(0, FRAME * 250))  # 5 s
    playout.push_mark("after")
    playout.next_frame()
    assert playout.clear() == ("after",)
    assert playout.buffered_ms == 0
    assert playout.cleared_samples == FRAME * 249
    assert playout.next_frame().pcm is None


def test_buffer_limit_drops_oldest_audio() -> None:
    """Beyond the buffer limit the oldest audio is dropped and counted."""
    playout = Playout(RATE, max_buffered_s=1.0)
    for index in range(3):
        playout.push_audio(np.full(RATE, index, np.int16))
    assert playout.buffered_ms == 1000
    assert playout.overflow_samples == 2 * RATE
    frame = playout.next_frame().pcm
    assert frame is not None
    assert (frame == 2).all()


@given(st.lists(st.one_of(st.integers(1, 500), st.text(min_size=1, max_size=3)), max_size=40))
def test_everything_pushed_comes_out_once_in_order(items: list[int | str]) -> None:
    """Any mix of chunks and marks: all audio plays in order, every mark is reached once."""
    playout = Playout(RATE)
    expected_audio = []
    counter = 0
    for item in items:
        if isinstance(item, str):
            playout.push_mark(item)
        else:
            chunk = _ramp(counter, item)
            counter += item
            expected_audio.append(chunk)
            playout.push_audio(chunk)
    played, marks = [], []
    for _ in range(len(items) * 4 + 10):
        frame = playout.next_frame()
        if frame.pcm is not None:
            played.append(frame.pcm)
        marks.extend(frame.marks)
    assert marks == [i for i in items if isinstance(i, str)]
    audio = np.concatenate(played) if played else np.zeros(0, np.int16)
    expected = np.concatenate(expected_audio) if expected_audio else np.zeros(0, np.int16)
    nonzero = audio[audio != 0]
    assert np.array_equal(nonzero, expected[expected != 0])  # padding is silence only
