"""The Transcriber interface every backend implements, and the values it deals in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mediaserver.analysis.turns import Speaker
from mediaserver.analysis.vad import Span


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word and when it was said (recording time line, seconds)."""

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of one speaker's speech and its text (recording time line, seconds)."""

    speaker: Speaker
    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True, slots=True)
class ChannelAudio:
    """One channel to transcribe: its Ogg Opus file, where it sits, where its speech is."""

    speaker: Speaker
    path: Path
    offset_s: float  # where the file's first sample is on the recording's time line
    speech: tuple[Span, ...]  # on the file's own time line
    duration_s: float


class Transcriber(Protocol):
    """Turns one channel's audio into timed text."""

    @property
    def backend(self) -> str:
        """The backend's name as the transcript shows it."""
        ...

    @property
    def model(self) -> str:
        """The model used."""
        ...

    async def transcribe(self, channel: ChannelAudio, language: str | None) -> list[Segment]:
        """Segments of the channel on the recording's time line; TranscriptionError on failure."""
        ...
