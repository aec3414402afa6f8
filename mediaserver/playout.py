"""The agent's playout queue: audio and marks in order, 20 ms at a time, cleared on barge-in."""

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class PlayoutFrame:
    """What one tick plays: a frame of audio (or none) and the marks whose audio has now played."""

    pcm: Pcm | None
    marks: tuple[str, ...]


class Playout:
    """Agent audio waiting to be played to the caller, paced by whoever calls `next_frame`."""

    def __init__(self, rate_hz: int, *, frame_ms: int = 20, max_buffered_s: float = 300.0):
        self.rate_hz = rate_hz
        self.frame_samples = rate_hz * frame_ms // 1000
        self.max_buffered_samples = int(max_buffered_s * rate_hz)
        self._items: deque[Pcm | str] = deque()
        self._buffered_samples = 0
        self._stalled_partial = False
        self.cleared_samples = 0  # audio dropped by clear() (barge-in): never played, by design
        self.overflow_samples = 0  # audio dropped because the queue was over its limit

    @property
    def buffered_ms(self) -> float:
        """Audio queued and not yet played."""
        return self._buffered_samples * 1000 / self.rate_hz

    def push_audio(self, pcm: Pcm) -> None:
        """Queue audio; beyond the buffer limit the oldest audio is dropped."""
        if pcm.size == 0:
            return
        self._items.append(pcm)
        self._buffered_samples += pcm.size
        self._stalled_partial = False
        while self._buffered_samples > self.max_buffered_samples:
            head = self._items[0]
            if isinstance(head, str):
                break
            self._items.popleft()
            self._buffered_samples -= head.size
            self.overflow_samples += head.size

    def push_mark(self, name: str) -> None:
        """Queue a mark: it is reached when all audio queued before it has played."""
        self._items.append(name)

    def clear(self) -> tuple[str, ...]:
        """Drop every queued audio chunk (barge-in); returns the marks queued, now reached."""
        marks = tuple(item for item in self._items if isinstance(item, str))
        self.cleared_samples += self._buffered_samples
        self._items.clear()
        self._buffered_samples = 0
        self._stalled_partial = False
        return marks

    def next_frame(self) -> PlayoutFrame:
        """Take one frame of audio and the marks reached after it."""
        # A partial frame at the end of the queue is held for one tick (more audio may be on its
        # way) and then played padded with silence; a mark behind it completes it at once.
        marks = list(self._take_marks())
        if self._buffered_samples == 0:
            return PlayoutFrame(None, tuple(marks))
        audio_ahead = self._audio_before_next_mark()
        if (
            audio_ahead < self.frame_samples
            and not self._mark_pending()
            and not self._stalled_partial
        ):
            self._stalled_partial = True
            return PlayoutFrame(None, tuple(marks))
        frame = self._take_samples(self.frame_samples)
        self._stalled_partial = False
        marks.extend(self._take_marks())
        return PlayoutFrame(frame, tuple(marks))

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
            total += item.size
        return total

    def _mark_pending(self) -> bool:
        """Whether a mark waits somewhere in the queue."""
        return any(isinstance(item, str) for item in self._items)

    def _take_samples(self, count: int) -> Pcm:
        """Pop up to `count` samples of audio before the next mark, padding with silence."""
        out = np.zeros(count, np.int16)
        filled = 0
        while filled < count and self._items and not isinstance(self._items[0], str):
            head = self._items[0]
            assert not isinstance(head, str)
            take = min(count - filled, head.size)
            out[filled : filled + take] = head[:take]
            filled += take
            if take == head.size:
                self._items.popleft()
            else:
                self._items[0] = head[take:]
        self._buffered_samples -= filled
        return out
