"""Both channels' segments merged into one dialogue: the transcript document and its WebVTT."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mediaserver.analysis.turns import Speaker
from mediaserver.transcription.backend import Segment

DECIMALS = 3
_SPEAKER_ORDER = {Speaker.CALLER: 0, Speaker.AGENT: 1}
# W3C WebVTT §4.2.2: cue text escapes these three characters.
_VTT_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))


def merge_dialogue(segments: Iterable[Segment]) -> list[Segment]:
    """Segments of both speakers in the order they were said, empty ones dropped."""
    return sorted(
        (s for s in segments if s.text.strip()),
        key=lambda s: (s.start_s, _SPEAKER_ORDER[s.speaker], s.end_s),
    )


def build_transcript(
    *, backend: str, model: str, language: str | None, segments: Sequence[Segment]
) -> dict[str, Any]:
    """The transcript document (`conversation_{id}_transcript.json`) of a merged dialogue."""
    return {
        "status": "completed",
        "backend": backend,
        "model": model,
        "language": language,
        "segments": [_segment_dict(s) for s in segments],
        "text": "\n".join(f"{s.speaker.value}: {s.text.strip()}" for s in segments),
    }


def build_webvtt(segments: Sequence[Segment]) -> str:
    """The dialogue as WebVTT, one cue per segment with a <v caller> or <v agent> voice tag."""
    lines = ["WEBVTT", ""]
    for segment in segments:
        end_s = max(segment.end_s, segment.start_s + 0.001)  # §4.2.1: end after start
        lines.append(f"{format_vtt_time(segment.start_s)} --> {format_vtt_time(end_s)}")
        lines.append(f"<v {segment.speaker.value}>{_escape(segment.text.strip())}")
        lines.append("")
    return "\n".join(lines)


def format_vtt_time(seconds: float) -> str:
    """A WebVTT timestamp, hh:mm:ss.ttt (W3C WebVTT §4.2.1)."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    secs, millis = divmod(rest_ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def count_words(document: Mapping[str, Any]) -> dict[Speaker, int]:
    """Words said by each speaker according to a transcript document."""
    counts = dict.fromkeys(Speaker, 0)
    for segment in document.get("segments", ()):
        words = segment.get("words")
        count = len(words) if words is not None else len(str(segment.get("text", "")).split())
        counts[Speaker(segment["speaker"])] += count
    return counts


def _segment_dict(segment: Segment) -> dict[str, Any]:
    """One segment as JSON (words only when the backend gave them)."""
    body: dict[str, Any] = {
        "speaker": segment.speaker.value,
        "start_s": round(segment.start_s, DECIMALS),
        "end_s": round(segment.end_s, DECIMALS),
        "text": segment.text.strip(),
    }
    if segment.words is not None:
        body["words"] = [
            {
                "text": w.text,
                "start_s": round(w.start_s, DECIMALS),
                "end_s": round(w.end_s, DECIMALS),
            }
            for w in segment.words
        ]
    return body


def _escape(text: str) -> str:
    """Cue text with &, < and > escaped."""
    for raw, escaped in _VTT_ESCAPES:
        text = text.replace(raw, escaped)
    return text
