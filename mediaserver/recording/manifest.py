"""The manifest: what a recording contains and everything that happened while placing its audio."""

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mediaserver.recording.call import CallStatus

MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One output file of a recording."""

    name: str
    role: str  # "left", "right" or "stereo"
    channels: int
    duration_ms: float
    size_bytes: int
    sha256: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelReport:
    """One channel's codec and placement statistics."""

    channel: str
    side: str
    codec: str
    stats: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    """Everything an operator needs to know about one recording."""

    call_id: str
    status: CallStatus
    created_at: str
    ended_at: str
    media_started_at: str | None
    duration_ms: float
    stereo_mode: str
    channels: tuple[ChannelReport, ...]
    files: tuple[FileEntry, ...]
    end_reason: str | None = None
    notes: tuple[str, ...] = ()
    storage: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    # Post-call jobs by kind ("analysis", "transcript"): their state as mediaserver.jobs keeps it.
    jobs: dict[str, Any] = field(default_factory=dict)
    # The call's record: each leg as its transport saw it, drops by reason, what happened
    # during the call (keys pressed) and the spans recording was paused, on the file's time line.
    legs: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    events: tuple[dict[str, Any], ...] = ()
    paused: tuple[dict[str, Any], ...] = ()
    # What the server added to the call's audio, each way: p50/p99 in ms and how many frames
    # ({"caller_to_agent": {...}, "agent_to_caller": {...}}; empty when the call never ended).
    latency_ms: dict[str, Any] = field(default_factory=dict)
    # Retention and legal hold: {"retention_days": N} when the call set its own (0: forever),
    # {"hold": {"since", "by", "reason"}} while held (mediaserver.lifecycle.policy reads it).
    lifecycle: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    def to_json(self) -> str:
        """Stable, human-readable JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def format_utc(epoch_ns: int) -> str:
    """ISO 8601 UTC time with microsecond precision."""
    moment = datetime.fromtimestamp(epoch_ns / 1e9, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_manifest(text: str) -> Manifest:
    """Read a manifest back from its JSON."""
    data = json.loads(text)
    return Manifest(
        call_id=data["call_id"],
        status=CallStatus(data["status"]),
        created_at=data["created_at"],
        ended_at=data["ended_at"],
        media_started_at=data.get("media_started_at"),
        duration_ms=data["duration_ms"],
        stereo_mode=data["stereo_mode"],
        channels=tuple(ChannelReport(**c) for c in data["channels"]),
        files=tuple(FileEntry(**f) for f in data["files"]),
        end_reason=data.get("end_reason"),
        notes=tuple(data.get("notes", ())),
        storage=data.get("storage", {}),
        version=data.get("version", MANIFEST_VERSION),
        jobs=data.get("jobs", {}),
        legs=data.get("legs", {}),
        dropped=data.get("dropped", {}),
        latency_ms=data.get("latency_ms", {}),
        events=tuple(data.get("events", ())),
        paused=tuple(data.get("paused", ())),
        lifecycle=data.get("lifecycle", {}),
    )
