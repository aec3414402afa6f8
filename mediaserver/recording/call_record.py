"""What a live call knew when it ended (its legs, drops, notes) and what happened in it (events)."""

# Two small files sit beside a call's journals in its spool. `events.jsonl` gets one line per
# event as it happens (a key pressed, recording paused or resumed), so a crash loses none that
# were written; times there are the server's monotonic ns, placed on the recording's time line
# when it is built. `record.json` is written once, when the call ends: the legs as their
# transports saw them, drop counters, notes, the end reason and the time of the end.

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mediaserver.errors import JournalError


@dataclass(frozen=True, slots=True)
class CallRecord:
    """The call's own account of itself at its end."""

    end_reason: str
    ended_wall_ns: int
    ended_mono_ns: int
    legs: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # What the server added to the call's audio each way: {"caller_to_agent": {"p50", "p99",
    # "count"}, "agent_to_caller": {...}}, in milliseconds.
    latency_ms: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """JSON form."""
        return json.dumps(
            {
                "end_reason": self.end_reason,
                "ended_wall_ns": self.ended_wall_ns,
                "ended_mono_ns": self.ended_mono_ns,
                "legs": self.legs,
                "dropped": self.dropped,
                "notes": list(self.notes),
                "latency_ms": self.latency_ms,
            },
            sort_keys=True,
        )


def parse_call_record(text: str) -> CallRecord:
    """Read a call record back; JournalError if it is not one."""
    try:
        data = json.loads(text)
        return CallRecord(
            end_reason=str(data["end_reason"]),
            ended_wall_ns=int(data["ended_wall_ns"]),
            ended_mono_ns=int(data["ended_mono_ns"]),
            legs=dict(data.get("legs", {})),
            dropped={str(k): int(v) for k, v in dict(data.get("dropped", {})).items()},
            notes=tuple(str(note) for note in data.get("notes", ())),
            latency_ms=dict(data.get("latency_ms", {})),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(f"call record is malformed: {exc}") from None


def build_event_line(event: Mapping[str, Any]) -> str:
    """One event as a line of events.jsonl."""
    return json.dumps(dict(event), sort_keys=True, separators=(",", ":")) + "\n"


def parse_event_lines(text: str) -> list[dict[str, Any]]:
    """The events of an events.jsonl, in order; a torn or foreign line is skipped."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            events.append(event)
    return events
