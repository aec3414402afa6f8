"""The agent's playout queue: audio and marks in order, 20 ms at a time, cleared on barge-in."""

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

# A frame whose samples all stay within this (-60 dBFS) is silence a catching-up playout may skip.
SILENT_LEVEL = 32
# Ticks the queue may run dry between two frames of audio and still be inside one stream of
# speech (an agent's frame arriving late): beyond, it is a pause, and nothing is left standing.
MAX_UNDERRUN_TICKS = 3
DEFAULT_PARTIAL_HOLD_TICKS = 1


@dataclass(frozen=True, slots=True)
class PlayoutFrame:
    """What one tick plays: a frame of audio (or none) and the marks whose audio has now played."""

    pcm: Pcm | None
    marks: tuple[str, ...]
    arrival_ns: int = 0  # when the newest audio in the frame arrived (0: not given)


_NOTHING = PlayoutFrame(None, ())  # a tick with neither audio nor marks (most silent ticks)


class Playout:
    """Agent audio waiting to be played to the caller, paced by whoever calls `next_frame`."""

    # Audio that streams in real time (an agent that speaks as it thinks, or echoes) sometimes
    # arrives just after the tick that was to play it. That tick plays nothing, and every frame
    # after it plays a frame later than it would have: a standing queue that stays until the
    # agent pauses. The playout counts those ticks and, while it is behind, skips frames of
    # silence with more audio queued after them, until it has caught up. Speech is never skipped.

    def __init__(
        self,
        rate_hz: int,
        *,
        frame_ms: int = 20,
        max_buffered_s: float = 300.0,
        partial_hold_ticks: int = DEFAULT_PARTIAL_HOLD_TICKS,
    ):
        self.rate_hz = rate_hz
        self.frame_samples = rate_hz * frame_ms // 1000
        self.max_buffered_samples = int(max_buffered_s * rate_hz)
        self.partial_hold_ticks = partial_hold_ticks
        self._items: deque[tuple[Pcm, int] | str] = deque()
        self._buffered_samples = 0
        self._held_ticks = 0
        self._dry_ticks = 0  # ticks without audio since the last frame played (while playing)
        self._playing = False
        self.behind_ticks = 0  # frames later than the agent's own timing, for underruns
        self.cleared_samples = 0  # audio dropped by clear() (barge-in): never played, by design
        self.overflow_samples = 0  # audio dropped because the queue was over its limit
        self.skipped_samples = 0  # silence skipped to catch up after underruns

    @property
    def buffered_ms(self) -> float:
        """Audio queued and not yet played."""
        return self._buffered_samples * 1000 / self.rate_hz

    def push_audio(self, pcm: Pcm, arrival_ns: int = 0) -> None:
        """Queue audio that arrived at `arrival_ns`; beyond the limit the oldest is dropped."""
        if pcm.size == 0:
            return
        self._items.append((pcm, arrival_ns))
        self._buffered_samples += pcm.size
        while self._buffered_samples > self.max_buffered_samples:
            head = self._items[0]
            if isinstance(head, str):
                break
            self._items.popleft()
            self._buffered_samples -= head[0].size
            self.overflow_samples += head[0].size

    def push_mark(self, name: str) -> None:
        """Queue a mark: it is reached when all audio queued before it has played."""
        self._items.append(name)

    def clear(self) -> tuple[str, ...]:
        """Drop every queued audio chunk (barge-in); returns the marks queued, now reached."""
        marks = tuple(item for item in self._items if isinstance(item, str))
        self.cleared_samples += self._buffered_samples
        self._items.clear()
        self._buffered_samples = 0
        self._held_ticks = 0
        self._dry_ticks = 0
        self._playing = False
        self.behind_ticks = 0
        return marks

    def next_frame(self) -> PlayoutFrame:
        """Take one frame of audio and the marks reached after it."""
        # A partial frame at the end of the queue is held for `partial_hold_ticks` ticks (more
        # audio may be on its way) and then played padded with silence; a mark behind it
        # completes it at once.
        marks = self._take_marks()
        if self._buffered_samples == 0 or (
            self._audio_before_next_mark() < self.frame_samples
            and not self._mark_pending()
            and self._held_ticks < self.partial_hold_ticks
        ):
            if self._buffered_samples:
                self._held_ticks += 1
            self._note_dry_tick()
            return PlayoutFrame(None, tuple(marks)) if marks else _NOTHING
        if self._dry_ticks:
            self.behind_ticks += self._dry_ticks  # the stream resumed: it now plays that late
        self._dry_ticks = 0
        self._playing = True
        self._held_ticks = 0
        frame, arrival_ns = self._take_samples(self.frame_samples)
        while self.behind_ticks and _is_silent(frame) and self._has_whole_frame():
            self.skipped_samples += frame.size
            self.behind_ticks -= 1
            frame, arrival_ns = self._take_samples(self.frame_samples)
        marks.extend(self._take_marks())
        return PlayoutFrame(frame, tuple(marks), arrival_ns)

    def _note_dry_tick(self) -> None:
        """A tick played no audio: an underrun if the stream goes on soon, else a pause."""
        if not self._playing:
            return
        self._dry_ticks += 1
        if self._dry_ticks > MAX_UNDERRUN_TICKS:
            # A pause: what was queued has all played, so nothing stands behind it any more.
            self._playing = False
            self._dry_ticks = 0
            self.behind_ticks = 0

    def _take_marks(self) -> list[str]:
        """Pop the marks at the front of the queue."""
        marks: list[str] = []
        while self._items and isinstance(head := self._items[0], str):
            self._items.popleft()
            marks.append(head)
        return marks

    def _audio_before_next_mark(self) -> int:
        """Samples queued ahead of the first mark (or all of them)."""
        total = 0
        for item in self._items:
            if isinstance(item, str):
                break
            total += item[0].size
            if total >= self.frame_samples:
                break
        return total

    def _has_whole_frame(self) -> bool:
        """Whether a whole frame of audio is queued before the next mark."""
        return self._audio_before_next_mark() >= self.frame_samples

    def _mark_pending(self) -> bool:
        """Whether a mark waits somewhere in the queue."""
        return any(isinstance(item, str) for item in self._items)

    def _take_samples(self, count: int) -> tuple[Pcm, int]:
        """Pop up to `count` samples before the next mark, padded; and when they arrived."""
        items = self._items
        if items and not isinstance(head := items[0], str) and head[0].size == count:
            # The common case: the agent's chunks are whole frames, played as they came.
            items.popleft()
            self._buffered_samples -= count
            return head
        out = np.zeros(count, np.int16)
        filled = 0
        arrival_ns = 0
        while filled < count and self._items and not isinstance(self._items[0], str):
            head = self._items[0]
            assert not isinstance(head, str)
            pcm, arrival_ns = head
            take = min(count - filled, pcm.size)
            out[filled : filled + take] = pcm[:take]
            filled += take
            if take == pcm.size:
                self._items.popleft()
            else:
                self._items[0] = (pcm[take:], arrival_ns)
        self._buffered_samples -= filled
        return out, arrival_ns


def _is_silent(frame: Pcm) -> bool:
    """Whether every sample of a frame is within the silence level."""
    return int(frame.max()) <= SILENT_LEVEL and int(frame.min()) >= -SILENT_LEVEL
