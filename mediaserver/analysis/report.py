"""The analysis document (`conversation_{id}_analysis.json`) built from both channels' speech."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mediaserver.analysis.turns import (
    Speaker,
    compute_interruptions,
    compute_overlap_s,
    compute_percentiles,
    compute_response_latencies,
    compute_silences,
    compute_turns,
    merge_turns,
)
from mediaserver.analysis.vad import Span, VadConfig

VAD_ENGINE = "webrtcvad"
PERCENTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95}
DECIMALS = 3  # milliseconds: enough for a player to seek to


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Voice activity settings and the thresholds of turns, interruptions and silences."""

    vad: VadConfig = field(default_factory=VadConfig)
    turn_gap_s: float = 0.5
    min_overlap_s: float = 0.2
    min_silence_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ChannelSpeech:
    """One channel's speech spans, on the stereo file's time line."""

    speaker: Speaker
    spans: tuple[Span, ...]
    duration_s: float


def build_analysis(
    call_id: str,
    duration_s: float,
    speech: Mapping[Speaker, Sequence[Span]],
    config: AnalysisConfig,
    word_counts: Mapping[Speaker, int] | None = None,
) -> dict[str, Any]:
    """The analysis document; `word_counts` (from a transcript) fills words_per_minute."""
    turns_by_side = {
        side: compute_turns(speech.get(side, ()), side, config.turn_gap_s) for side in Speaker
    }
    turns = merge_turns(*turns_by_side.values())
    latencies = compute_response_latencies(turns)
    all_spans = [span for side in Speaker for span in speech.get(side, ())]
    channels = {}
    for side in Speaker:
        spans = list(speech.get(side, ()))
        talk_s = sum(span.end_s - span.start_s for span in spans)
        longest_s = max((t.duration_s for t in turns_by_side[side]), default=0.0)
        channels[side.value] = {
            "speech": [[_r(span.start_s), _r(span.end_s)] for span in spans],
            "talk_time_s": _r(talk_s),
            "talk_ratio": _r(talk_s / duration_s) if duration_s > 0 else 0.0,
            "longest_turn_s": _r(longest_s),
            "words_per_minute": _words_per_minute(word_counts, side, talk_s),
        }
    agent_spans = speech.get(Speaker.AGENT, ())
    return {
        "call_id": call_id,
        "duration_s": _r(duration_s),
        "vad": {
            "engine": VAD_ENGINE,
            "mode": config.vad.mode,
            "frame_ms": config.vad.frame_ms,
            "turn_gap_s": config.turn_gap_s,
            "min_speech_ms": config.vad.min_speech_ms,
            "min_silence_ms": config.vad.min_silence_ms,
        },
        "channels": channels,
        "turns": [
            {"speaker": t.speaker.value, "start_s": _r(t.start_s), "end_s": _r(t.end_s)}
            for t in turns
        ],
        "response_latency_s": _latency_summary(latencies),
        "interruptions": [
            {"by": i.by.value, "at_s": _r(i.at_s), "overlap_s": _r(i.overlap_s)}
            for i in compute_interruptions(turns, config.min_overlap_s)
        ],
        "overlap_s": _r(
            compute_overlap_s(speech.get(Speaker.CALLER, ()), speech.get(Speaker.AGENT, ()))
        ),
        "silences": [
            [_r(s.start_s), _r(s.end_s)] for s in compute_silences(all_spans, config.min_silence_s)
        ],
        "time_to_first_agent_audio_s": _r(min(s.start_s for s in agent_spans))
        if agent_spans
        else None,
    }


def apply_word_counts(
    document: Mapping[str, Any], word_counts: Mapping[Speaker, int]
) -> dict[str, Any]:
    """A copy of an analysis document with words_per_minute from a transcript's word counts."""
    updated = dict(document)
    channels = {}
    for name, channel in document["channels"].items():
        side = Speaker(name)
        channels[name] = {
            **channel,
            "words_per_minute": _words_per_minute(word_counts, side, channel["talk_time_s"]),
        }
    updated["channels"] = channels
    return updated


def parse_speech(document: Mapping[str, Any]) -> dict[Speaker, list[Span]]:
    """Each side's speech spans read back from an analysis document."""
    return {
        Speaker(name): [Span(float(a), float(b)) for a, b in channel["speech"]]
        for name, channel in document["channels"].items()
    }


def _latency_summary(values: Sequence[float]) -> dict[str, Any]:
    """The values and their percentiles (null when there are none)."""
    summary: dict[str, Any] = {"values": [_r(v) for v in values]}
    fractions = compute_percentiles(values, list(PERCENTILES.values()))
    for index, name in enumerate(PERCENTILES):
        summary[name] = _r(fractions[index]) if fractions else None
    summary["max"] = _r(max(values)) if values else None
    return summary


def _words_per_minute(
    word_counts: Mapping[Speaker, int] | None, side: Speaker, talk_s: float
) -> float | None:
    """Words per minute of talk time, or None without a transcript (or without talk)."""
    if word_counts is None or talk_s <= 0:
        return None
    return round(word_counts.get(side, 0) / (talk_s / 60), 1)


def _r(seconds: float) -> float:
    """Seconds rounded to milliseconds."""
    return round(float(seconds), DECIMALS)
