"""A call's events (keys pressed, recording paused) placed on its recording's time line."""

# Events are noted live with the server's monotonic time (events.jsonl in the spool). A key is
# placed by media time where it can be: RFC 4733 §2.3 gives an event the RTP timestamp of its
# start on the audio's clock, and senders use the audio's SSRC, so it goes where the caller's
# audio packet of nearby timestamp was placed. A key sent on a stream of its own falls back to
# its arrival: when its last packet came, less its duration.

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.plan import OPUS_RATE_HZ, RecordingPlan, to_48k

_TIMESTAMP_MODULUS = 1 << 32
_TIMESTAMP_HALF = 1 << 31
# A key more than this far (in media time) from any placed audio packet of its SSRC is placed
# by arrival: the audio around it was lost, or belongs to another run.
MAX_MEDIA_DISTANCE_S = 2.0


@dataclass(frozen=True, slots=True)
class PausedSpan:
    """Recording paused from `start_ns` to `end_ns` (monotonic), with what the time line does."""

    start_ns: int
    end_ns: int
    behavior: str  # "silence" or "skip"


def compute_paused_spans(events: Sequence[dict[str, Any]], end_ns: int) -> list[PausedSpan]:
    """Pair pause and resume events; a pause never resumed lasts until the call's end."""
    spans = []
    started: tuple[int, str] | None = None
    for event in events:
        kind = event.get("type")
        at_ns = event.get("at_ns")
        if not isinstance(at_ns, int):
            continue
        if kind == "pause" and started is None:
            started = (at_ns, str(event.get("behavior", "silence")))
        elif kind == "resume" and started is not None:
            spans.append(PausedSpan(started[0], max(at_ns, started[0]), started[1]))
            started = None
    if started is not None:
        spans.append(PausedSpan(started[0], max(end_ns, started[0]), started[1]))
    return spans


def compute_skip_spans(spans: Sequence[PausedSpan]) -> list[tuple[int, int]]:
    """The spans to cut from the time line (paused with pause_behavior skip)."""
    return [(span.start_ns, span.end_ns) for span in spans if span.behavior == "skip"]


def describe_paused_spans(spans: Sequence[PausedSpan], plan: RecordingPlan) -> list[dict[str, Any]]:
    """Paused spans as the manifest lists them, in seconds on the recording's time line."""
    described = []
    for span in spans:
        start_s = _seconds(plan.position_48k(span.start_ns))
        end_s = _seconds(plan.position_48k(span.end_ns))
        entry: dict[str, Any] = {"behavior": span.behavior, "start_s": start_s, "end_s": end_s}
        if span.behavior == "skip":
            entry["removed_s"] = round((span.end_ns - span.start_ns) / 1e9, 3)
        described.append(entry)
    return described


def place_dtmf_events(
    events: Sequence[dict[str, Any]], plan: RecordingPlan
) -> list[dict[str, Any]]:
    """Keys pressed as the manifest lists them: digit, start on the time line, duration."""
    if not any(event.get("type") == "dtmf" for event in events):
        return []
    caller = next(c for c in plan.channels if c.input.channel is Channel.CALLER)
    packets = caller.input.packets

    def placed() -> Iterator[tuple[int, int, int]]:
        for placement in caller.timeline.placements:
            packet = packets[placement.index]
            yield placement.start, packet.ssrc, packet.rtp_timestamp

    return place_dtmf_keys(events, plan, caller.input.codec, placed)


def place_dtmf_keys(
    events: Sequence[dict[str, Any]],
    frame: RecordingPlan,
    caller_codec: Codec,
    caller_placed: Callable[[], Iterable[tuple[int, int, int]]],
) -> list[dict[str, Any]]:
    """place_dtmf_events given the caller's placements as (start, SSRC, RTP timestamp)."""
    # `frame` gives the time line (origin, span, cuts); its channels are not read.
    keys = [event for event in events if event.get("type") == "dtmf"]
    if not keys:
        return []
    rate_hz = caller_codec.clock_rate_hz
    max_distance = int(MAX_MEDIA_DISTANCE_S * rate_hz)
    placed = []
    for event in keys:
        duration_ms = float(event.get("duration_ms", 0.0))
        at_48k = None
        timestamp, ssrc = event.get("rtp_timestamp"), event.get("ssrc")
        if isinstance(timestamp, int) and isinstance(ssrc, int):
            best: tuple[int, int] | None = None  # (distance, start in clock units)
            for start, packet_ssrc, packet_timestamp in caller_placed():
                if packet_ssrc != ssrc:
                    continue
                offset = (timestamp - packet_timestamp + _TIMESTAMP_HALF) % _TIMESTAMP_MODULUS
                offset -= _TIMESTAMP_HALF
                if abs(offset) <= max_distance and (best is None or abs(offset) < best[0]):
                    best = (abs(offset), start + offset)
            if best is not None:
                at_48k = min(max(0, to_48k(best[1], caller_codec)), frame.span_samples)
        if at_48k is None:
            ended_ns = int(event.get("ended_ns", frame.origin_ns))
            at_48k = frame.position_48k(ended_ns - int(duration_ms * 1_000_000))
        entry: dict[str, Any] = {
            "type": "dtmf",
            "digit": event.get("digit"),
            "at_s": _seconds(at_48k),
            "duration_ms": duration_ms,
        }
        if event.get("redacted"):
            entry["redacted"] = True
        placed.append(entry)
    return placed  # in the order the keys were pressed


def _seconds(samples_48k: int) -> float:
    """48 kHz samples as seconds with millisecond precision."""
    return round(samples_48k / OPUS_RATE_HZ, 3)
