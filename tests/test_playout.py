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


def _tone(count: int, level: int = 8000) -> np.ndarray:
    return (level * np.sin(np.arange(count) * 0.3)).astype(np.int16)


def test_frame_carries_the_arrival_of_its_newest_audio() -> None:
    """A frame drawn from two chunks is as old as the later one: it was complete only then."""
    playout = Playout(RATE)
    playout.push_audio(_ramp(1, 100), arrival_ns=1_000)
    playout.push_audio(_ramp(101, 200), arrival_ns=2_000)
    first = playout.next_frame()
    assert first.arrival_ns == 2_000
    assert playout.next_frame().pcm is None  # the partial rest waits a tick
    rest = playout.next_frame()
    assert rest.pcm is not None
    assert rest.arrival_ns == 2_000


def test_a_late_frame_puts_the_playout_behind_until_silence_lets_it_catch_up() -> None:
    """An underrun mid-stream is made up by skipping silence queued later, never speech."""
    playout = Playout(RATE)
    playout.push_audio(_tone(FRAME))
    assert playout.next_frame().pcm is not None
    assert playout.next_frame().pcm is None  # the agent's next frame is late for this tick
    playout.push_audio(_tone(FRAME))
    playout.push_audio(_tone(FRAME))  # and the one after it, on time: one frame now stands
    assert playout.next_frame().pcm is not None
    assert playout.behind_ticks == 1
    assert playout.buffered_ms == 20
    playout.push_audio(np.zeros(FRAME, np.int16))  # the agent pauses...
    playout.push_audio(_tone(FRAME))  # ...briefly
    speech = playout.next_frame().pcm
    assert speech is not None
    assert speech.any()
    frame = playout.next_frame().pcm
    assert frame is not None
    assert frame.any()
    assert playout.skipped_samples == FRAME
    assert playout.behind_ticks == 0
    assert playout.buffered_ms == 0


def test_silence_is_kept_when_nothing_follows_it() -> None:
    """Skipping needs audio behind the silence: an underrun must not be traded for another."""
    playout = Playout(RATE)
    playout.push_audio(_tone(FRAME))
    playout.next_frame()
    playout.next_frame()
    playout.push_audio(np.zeros(FRAME, np.int16))
    frame = playout.next_frame().pcm
    assert frame is not None
    assert not frame.any()
    assert playout.skipped_samples == 0


def test_a_pause_leaves_nothing_standing() -> None:
    """Once the queue has been dry for a pause, later silence is played, not skipped."""
    playout = Playout(RATE)
    playout.push_audio(_tone(FRAME))
    playout.next_frame()
    for _ in range(5):
        assert playout.next_frame().pcm is None
    playout.push_audio(np.zeros(FRAME * 2, np.int16))
    playout.push_audio(_tone(FRAME))
    assert playout.behind_ticks == 0
    frames = [playout.next_frame().pcm for _ in range(3)]
    assert all(f is not None for f in frames)
    assert playout.skipped_samples == 0


def test_partial_hold_can_be_turned_off() -> None:
    """With no hold a partial frame plays padded at the next tick."""
    playout = Playout(RATE, partial_hold_ticks=0)
    playout.push_audio(_ramp(1, 100))
    frame = playout.next_frame().pcm
    assert frame is not None
    assert frame[:100].any()
    assert not frame[100:].any()
