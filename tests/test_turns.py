"""Turns, latencies, interruptions, overlap and silences from speech spans (pure)."""

import pytest

from mediaserver.analysis.report import AnalysisConfig, apply_word_counts, build_analysis
from mediaserver.analysis.turns import (
    Interruption,
    Speaker,
    Turn,
    compute_interruptions,
    compute_overlap_s,
    compute_percentiles,
    compute_response_latencies,
    compute_silences,
    compute_turns,
    merge_turns,
)
from mediaserver.analysis.vad import Span

C, A = Speaker.CALLER, Speaker.AGENT


def _turns(*items: tuple[Speaker, float, float]) -> list[Turn]:
    return merge_turns([Turn(s, a, b) for s, a, b in items])


def test_pauses_shorter_than_the_gap_join_a_turn() -> None:
    """0.4 s pause: same turn; 0.5 s pause: a new turn (the gap is exclusive)."""
    spans = [Span(0.0, 1.0), Span(1.4, 2.0), Span(2.5, 3.0)]
    assert compute_turns(spans, C, 0.5) == [Turn(C, 0.0, 2.0), Turn(C, 2.5, 3.0)]


def test_merge_orders_by_start_caller_first_on_a_tie() -> None:
    """Both sides' turns in time order."""
    merged = merge_turns([Turn(A, 1.0, 2.0)], [Turn(C, 0.0, 0.5), Turn(C, 1.0, 1.5)])
    assert [(t.speaker, t.start_s) for t in merged] == [(C, 0.0), (C, 1.0), (A, 1.0)]


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        # a plain answer
        ([(C, 0.0, 2.0), (A, 2.8, 4.0)], [0.8]),
        # the agent greets first: no caller turn before it, no latency
        ([(A, 0.0, 1.0), (C, 1.5, 2.0), (A, 2.3, 3.0)], [0.3]),
        # two caller turns, one answer: measured from the later caller end
        ([(C, 0.0, 1.0), (C, 2.0, 3.0), (A, 3.5, 4.0)], [0.5]),
        # two agent turns after one caller turn: only the first is a latency
        ([(C, 0.0, 1.0), (A, 1.5, 2.0), (A, 3.0, 4.0)], [0.5]),
        # the agent starts while the caller talks: an interruption, not a latency
        ([(C, 0.0, 2.0), (A, 1.5, 3.0)], []),
        # the caller barges in; the agent's next turn answers the barge-in
        ([(C, 0.0, 1.0), (A, 1.5, 3.5), (C, 3.0, 4.0), (A, 4.9, 6.0)], [0.5, 0.9]),
    ],
)
def test_response_latencies(
    turns: list[tuple[Speaker, float, float]], expected: list[float]
) -> None:
    """One latency per agent turn that first answers a finished caller turn."""
    assert compute_response_latencies(_turns(*turns)) == pytest.approx(expected)


def test_interruptions_are_attributed_to_who_started_over_the_other() -> None:
    """Caller over agent (0.5 s), agent over caller (0.3 s); a 0.1 s overlap is not counted."""
    turns = _turns(
        (A, 0.0, 3.0),
        (C, 2.5, 4.0),  # caller barges in, overlap 0.5
        (A, 3.7, 5.0),  # agent starts 0.3 s before the caller ends
        (C, 4.95, 6.0),  # 0.05 s overlap: too short
    )
    found = compute_interruptions(turns, 0.2)
    assert found == [
        Interruption(C, 2.5, pytest.approx(0.5)),
        Interruption(A, 3.7, pytest.approx(0.3)),
    ]


def test_interruption_overlap_ends_with_the_shorter_turn() -> None:
    """A short caller turn inside a long agent turn overlaps for its whole length."""
    found = compute_interruptions(_turns((A, 0.0, 10.0), (C, 2.0, 3.0)), 0.2)
    assert found == [Interruption(C, 2.0, pytest.approx(1.0))]


def test_overlap_sums_simultaneous_speech() -> None:
    """Overlap of two span lists."""
    caller = [Span(0.0, 2.0), Span(3.0, 4.0)]
    agent = [Span(1.5, 3.5), Span(10.0, 11.0)]
    assert compute_overlap_s(caller, agent) == pytest.approx(1.0)


def test_silences_only_between_first_and_last_speech() -> None:
    """A 6 s gap counts; the 8 s before the first speech and a 5 s gap do not."""
    spans = [Span(8.0, 9.0), Span(8.5, 10.0), Span(16.0, 17.0), Span(22.0, 23.0)]
    assert compute_silences(spans, 5.0) == [Span(10.0, 16.0)]


def test_percentiles_interpolate_linearly() -> None:
    """p50 of 1..4 is 2.5; p90 is 3.7."""
    assert compute_percentiles([4.0, 1.0, 3.0, 2.0], [0.5, 0.9]) == pytest.approx([2.5, 3.7])
    assert compute_percentiles([], [0.5]) == []


def test_analysis_document_has_every_field_rounded_to_milliseconds() -> None:
    """The document's shape and its figures for a small call."""
    speech = {
        C: [Span(1.0, 2.0), Span(2.2, 3.0004)],
        A: [Span(3.5, 5.0), Span(12.0, 13.0)],
    }
    doc = build_analysis("abc", 20.0, speech, AnalysisConfig())
    assert doc["call_id"] == "abc"
    assert doc["duration_s"] == 20.0
    assert doc["vad"]["engine"] == "webrtcvad"
    assert doc["vad"]["turn_gap_s"] == 0.5
    caller = doc["channels"]["caller"]
    assert caller["speech"] == [[1.0, 2.0], [2.2, 3.0]]
    assert caller["talk_time_s"] == 1.8
    assert caller["talk_ratio"] == 0.09
    assert caller["longest_turn_s"] == 2.0
    assert caller["words_per_minute"] is None
    assert doc["turns"] == [
        {"speaker": "caller", "start_s": 1.0, "end_s": 3.0},
        {"speaker": "agent", "start_s": 3.5, "end_s": 5.0},
        {"speaker": "agent", "start_s": 12.0, "end_s": 13.0},
    ]
    assert doc["response_latency_s"] == {
        "values": [0.5],
        "p50": 0.5,
        "p90": 0.5,
        "p95": 0.5,
        "max": 0.5,
    }
    assert doc["interruptions"] == []
    assert doc["overlap_s"] == 0.0
    assert doc["silences"] == [[5.0, 12.0]]
    assert doc["time_to_first_agent_audio_s"] == 3.5
    with_words = apply_word_counts(doc, {C: 6, A: 10})
    assert with_words["channels"]["caller"]["words_per_minute"] == 200.0
    assert with_words["channels"]["agent"]["words_per_minute"] == 240.0


def test_analysis_of_a_silent_call() -> None:
    """No speech at all: empty lists and nulls, never an error."""
    doc = build_analysis("quiet", 5.0, {C: [], A: []}, AnalysisConfig())
    assert doc["turns"] == []
    assert doc["response_latency_s"] == {
        "values": [],
        "p50": None,
        "p90": None,
        "p95": None,
        "max": None,
    }
    assert doc["time_to_first_agent_audio_s"] is None
    assert doc["channels"]["agent"]["talk_ratio"] == 0.0
