"""One audit event, its JSON line, and the query that selects events (pure)."""

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from mediaserver.errors import AuditError

# Event ids sort in time order across nodes: arrival time in ns, then the node, then a sequence
# number that keeps events of one node and nanosecond apart.
_ID_TIME_DIGITS = 19
_ID_SEQUENCE_DIGITS = 10


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what to which recording, when, from where, and how it was answered."""

    id: str
    at: str  # ISO 8601 UTC with microseconds, as manifests write times
    actor: str  # the token's name; "retention" for the sweeper
    action: str  # e.g. recording.download, recording.delete, recording.expired
    recording_id: str | None
    remote: str | None  # the peer address (a proxy's, behind one: see forwarded_for)
    status: int | None  # the HTTP status answered; None for the server's own actions
    node: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def at_ns(self) -> int:
        """The event's time in epoch nanoseconds (from its id)."""
        return int(self.id[:_ID_TIME_DIGITS])

    @property
    def day(self) -> date:
        """The UTC day the event belongs to (its file or prefix)."""
        return datetime.fromtimestamp(self.at_ns / 1e9, UTC).date()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "recording_id": self.recording_id,
            "remote": self.remote,
            "status": self.status,
            "node": self.node,
            "details": self.details,
        }

    def to_json_line(self) -> bytes:
        """One line of a JSON-lines file, newline included."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode() + b"\n"


def build_event_id(at_ns: int, node: str, sequence: int) -> str:
    """A sortable, unique event id."""
    return f"{at_ns:0{_ID_TIME_DIGITS}d}.{node}.{sequence:0{_ID_SEQUENCE_DIGITS}d}"


def parse_event(line: bytes | str) -> AuditEvent:
    """An event from its JSON line; AuditError if it is not one."""
    try:
        data = json.loads(line)
        event = AuditEvent(
            id=str(data["id"]),
            at=str(data["at"]),
            actor=str(data["actor"]),
            action=str(data["action"]),
            recording_id=None if data.get("recording_id") is None else str(data["recording_id"]),
            remote=None if data.get("remote") is None else str(data["remote"]),
            status=None if data.get("status") is None else int(data["status"]),
            node=str(data["node"]),
            details=dict(data.get("details") or {}),
        )
        _ = event.at_ns
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"audit line is malformed: {exc}") from None
    return event


def parse_event_lines(data: bytes) -> tuple[list[AuditEvent], int]:
    """The events of a JSON-lines text and how many lines were unreadable (a torn tail included)."""
    events: list[AuditEvent] = []
    unreadable = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            events.append(parse_event(line))
        except AuditError:
            unreadable += 1
    return events, unreadable


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events to return: a time range, one recording, after a cursor, at most `limit`."""

    from_ns: int | None = None
    to_ns: int | None = None  # exclusive
    recording_id: str | None = None
    after_id: str | None = None
    limit: int = 1000

    def accepts(self, event: AuditEvent) -> bool:
        """Whether an event is selected (the cursor included)."""
        at_ns = event.at_ns
        if self.from_ns is not None and at_ns < self.from_ns:
            return False
        if self.to_ns is not None and at_ns >= self.to_ns:
            return False
        if self.recording_id is not None and event.recording_id != self.recording_id:
            return False
        return self.after_id is None or event.id > self.after_id

    def accepts_day(self, day: date) -> bool:
        """Whether any event of a UTC day can be selected."""
        start_ns = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9
        end_ns = start_ns + 86400 * 10**9
        if self.from_ns is not None and end_ns <= self.from_ns:
            return False
        if self.to_ns is not None and start_ns >= self.to_ns:
            return False
        return self.after_id is None or end_ns > int(self.after_id[:_ID_TIME_DIGITS])
