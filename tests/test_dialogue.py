"""Transcript segments merged into one dialogue, and its WebVTT (pure)."""

from mediaserver.analysis.turns import Speaker
from mediaserver.transcription.backend import Segment, Word
from mediaserver.transcription.dialogue import (
    build_transcript,
    build_webvtt,
    count_words,
    format_vtt_time,
    merge_dialogue,
)

C, A = Speaker.CALLER, Speaker.AGENT


def test_dialogue_is_in_time_order_and_empty_segments_are_dropped() -> None:
    """Both channels interleaved by start time."""
    segments = [
        Segment(A, 2.0, 3.0, "fine thanks"),
        Segment(C, 0.5, 1.5, "hello how are you"),
        Segment(C, 4.0, 4.2, "   "),
        Segment(C, 3.5, 5.0, "good"),
    ]
    assert [s.text for s in merge_dialogue(segments)] == [
        "hello how are you",
        "fine thanks",
        "good",
    ]


def test_transcript_document() -> None:
    """Status, backend, model, language, segments with optional words, dialogue text."""
    words = (Word("hello", 0.5, 0.9), Word("there", 1.0, 1.4))
    dialogue = [Segment(C, 0.5, 1.4, "hello there", words), Segment(A, 2.0, 3.0, "hi")]
    doc = build_transcript(backend="pocketsphinx", model="en-us", language=None, segments=dialogue)
    assert doc["status"] == "completed"
    assert (doc["backend"], doc["model"], doc["language"]) == ("pocketsphinx", "en-us", None)
    assert doc["segments"][0] == {
        "speaker": "caller",
        "start_s": 0.5,
        "end_s": 1.4,
        "text": "hello there",
        "words": [
            {"text": "hello", "start_s": 0.5, "end_s": 0.9},
            {"text": "there", "start_s": 1.0, "end_s": 1.4},
        ],
    }
    assert "words" not in doc["segments"][1]
    assert doc["text"] == "caller: hello there\nagent: hi"
    assert count_words(doc) == {C: 2, A: 1}


def test_webvtt_has_voice_tags_escaped_text_and_hour_timestamps() -> None:
    """W3C WebVTT: header, hh:mm:ss.ttt cues, <v> voice spans, & < > escaped."""
    vtt = build_webvtt(
        [Segment(C, 3661.5, 3662.25, "a < b & c"), Segment(A, 3663.0, 3663.0, "yes")]
    )
    assert vtt == (
        "WEBVTT\n\n"
        "01:01:01.500 --> 01:01:02.250\n<v caller>a &lt; b &amp; c\n\n"
        "01:01:03.000 --> 01:01:03.001\n<v agent>yes\n"
    )
    assert format_vtt_time(0.0004) == "00:00:00.000"
