"""Turns from speech spans, and what they say about a call: latency, interruptions, silences."""

# The two channels are the two speakers, so who spoke when is exact and overlap is measurable.
# Definitions (the API documents them in the README):
# - a turn is one channel's speech with pauses shorter than `turn_gap_s` merged;
# - a response latency belongs to an agent turn that is the first to start after a caller turn
#   ended, with no caller turn going on at that moment: agent start - that caller end;
# - an interruption is a turn that starts while the other side's turn is still going, when the
#   two overlap by at least `min_overlap_s`; it is attributed to the side that started it;
# - a silence is a stretch longer than `min_silence_s` where neither side speaks, between the
#   first and the last speech of the call.

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from mediaserver.analysis.vad import Span


class Speaker(Enum):
    """Who a channel is."""

    CALLER = "caller"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Turn:
    """One speaker's stretch of speech, short pauses included."""

    speaker: Speaker
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        """How long the turn lasts."""
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class Interruption:
    """A turn begun over the other side's turn."""

    by: Speaker
    at_s: float
    overlap_s: float


def compute_turns(spans: Sequence[Span], speaker: Speaker, turn_gap_s: float) -> list[Turn]:
    """Merge a channel's speech spans whose pauses are shorter than `turn_gap_s`."""
    turns: list[Turn] = []
    for span in sorted(spans):
        if turns and span.start_s - turns[-1].end_s < turn_gap_s:
            last = turns[-1]
            turns[-1] = Turn(speaker, last.start_s, max(last.end_s, span.end_s))
        else:
            turns.append(Turn(speaker, span.start_s, span.end_s))
    return turns


def merge_turns(*sides: Sequence[Turn]) -> list[Turn]:
    """Both sides' turns in order of start (the caller first on a tie)."""
    order = {Speaker.CALLER: 0, Speaker.AGENT: 1}
    return sorted(
        (turn for side in sides for turn in side),
        key=lambda t: (t.start_s, order[t.speaker], t.end_s),
    )


def compute_response_latencies(turns: Sequence[Turn]) -> list[float]:
    """Agent start minus caller end, for each agent turn that answers a finished caller turn."""
    callers = sorted((t for t in turns if t.speaker is Speaker.CALLER), key=lambda t: t.start_s)
    agents = sorted((t for t in turns if t.speaker is Speaker.AGENT), key=lambda t: t.start_s)
    # One side's turns never overlap each other, so sorted by start they are sorted by end too.
    caller_starts = [t.start_s for t in callers]
    caller_ends = [t.end_s for t in callers]
    latencies = []
    for index, agent in enumerate(agents):
        if _covering(callers, caller_starts, agent.start_s) is not None:
            continue  # starts over the caller: an interruption, never a latency
        ended = bisect_right(caller_ends, agent.start_s)
        if not ended:
            continue  # the agent spoke first (a greeting)
        caller_end_s = caller_ends[ended - 1]
        if index and agents[index - 1].start_s >= caller_end_s:
            continue  # not the first agent turn after that caller turn
        latencies.append(agent.start_s - caller_end_s)
    return latencies


def compute_interruptions(turns: Sequence[Turn], min_overlap_s: float) -> list[Interruption]:
    """Turns that start inside the other side's turn and overlap it by `min_overlap_s` or more."""
    by_side = {
        side: sorted((t for t in turns if t.speaker is side), key=lambda t: t.start_s)
        for side in Speaker
    }
    starts = {side: [t.start_s for t in side_turns] for side, side_turns in by_side.items()}
    found = []
    for turn in sorted(turns, key=lambda t: t.start_s):
        other_side = Speaker.AGENT if turn.speaker is Speaker.CALLER else Speaker.CALLER
        other = _covering(by_side[other_side], starts[other_side], turn.start_s)
        if other is None:
            continue
        overlap_s = min(turn.end_s, other.end_s) - turn.start_s
        if overlap_s >= min_overlap_s:
            found.append(Interruption(turn.speaker, turn.start_s, overlap_s))
    return found


def _covering(side_turns: Sequence[Turn], starts: Sequence[float], at_s: float) -> Turn | None:
    """The turn of one side going on at `at_s` (started strictly before, not yet ended)."""
    index = bisect_left(starts, at_s)
    if index and side_turns[index - 1].end_s > at_s:
        return side_turns[index - 1]
    return None


def compute_overlap_s(first: Sequence[Span], second: Sequence[Span]) -> float:
    """Total time both sides speak at once (spans of one side must not overlap each other)."""
    total = 0.0
    i = j = 0
    a, b = sorted(first), sorted(second)
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i].end_s, b[j].end_s) - max(a[i].start_s, b[j].start_s))
        if a[i].end_s < b[j].end_s:
            i += 1
        else:
            j += 1
    return total


def compute_silences(spans: Sequence[Span], min_silence_s: float) -> list[Span]:
    """Stretches longer than `min_silence_s` with no speech on any side, inside the speech."""
    silences = []
    covered_until_s: float | None = None
    for span in sorted(spans):
        if covered_until_s is not None and span.start_s - covered_until_s > min_silence_s:
            silences.append(Span(covered_until_s, span.start_s))
        covered_until_s = (
            span.end_s if covered_until_s is None else max(covered_until_s, span.end_s)
        )
    return silences


def compute_percentiles(values: Sequence[float], fractions: Sequence[float]) -> list[float]:
    """Percentiles interpolated linearly between the closest ranks (numpy's default)."""
    if not values:
        return []
    return [float(p) for p in np.percentile(np.array(values), [f * 100 for f in fractions])]
