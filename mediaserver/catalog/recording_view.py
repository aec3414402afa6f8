"""One recording as the API shows it, wherever it is in its life, and its JSON forms."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mediaserver.jobs.state import summarize_jobs
from mediaserver.recording.call import CallStatus
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.manifest import Manifest, format_utc

RECORDINGS_PATH = "/v1/recordings"
# Query value of ?channel= -> the manifest file role that holds it.
CHANNEL_ROLES = {"stereo": "stereo", "left": "left", "right": "right"}
PEAKS_ROLE = "peaks"
STORED_STATUSES = frozenset({CallStatus.STORED, CallStatus.RECOVERED})
# A call that carried no media keeps its manifest in the store, and nothing else.
KEPT_STATUSES = STORED_STATUSES | {CallStatus.EMPTY}


@dataclass(frozen=True, slots=True)
class RecordingView:
    """One recording as the API shows it, wherever it is in its life."""

    call_id: str
    status: CallStatus
    created_at: datetime
    duration_ms: float | None
    manifest: Manifest | None = None  # stored, or built and waiting for an upload retry
    manifest_key: str | None = None  # set when the manifest is in the store
    details: dict[str, Any] = field(default_factory=dict)  # what is known of a live call

    @property
    def sort_key(self) -> tuple[datetime, str]:
        """Position in a listing (newest first means descending)."""
        return self.created_at, self.call_id

    @property
    def is_stored(self) -> bool:
        """True when the audio can be served from the store."""
        return self.status in STORED_STATUSES and self.manifest_key is not None

    @property
    def is_kept(self) -> bool:
        """True when the store holds the recording's manifest (with or without audio)."""
        return self.status in KEPT_STATUSES and self.manifest_key is not None

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata the call was created with, where it is known."""
        if self.manifest is not None:
            return dict(self.manifest.storage.get("metadata") or {})
        return dict(self.details.get("metadata") or {})

    @property
    def end_reason(self) -> str | None:
        """Why the call ended, once its manifest says."""
        return None if self.manifest is None else self.manifest.end_reason


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (no offset means UTC); ValueError otherwise."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """The manifest's time format: ISO 8601 UTC, microseconds, 'Z' (as format_utc writes it)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_links(view: RecordingView) -> dict[str, Any]:
    """Where the manifest and, once stored, the audio and peaks of a recording are served."""
    base = f"{RECORDINGS_PATH}/{view.call_id}"
    links: dict[str, Any] = {"manifest": base}
    if view.is_stored:
        links["audio"] = {channel: f"{base}/audio?channel={channel}" for channel in CHANNEL_ROLES}
        if view.manifest is not None and any(f.role == PEAKS_ROLE for f in view.manifest.files):
            links["peaks"] = f"{base}/peaks"
        links["analysis"] = f"{base}/analysis"
        links["transcript"] = f"{base}/transcript"
    return links


def build_list_item(view: RecordingView) -> dict[str, Any]:
    """A recording as one item of a listing."""
    manifest = view.manifest
    files = () if manifest is None else manifest.files
    codecs = (
        view.details.get("codecs", {})
        if manifest is None
        else {report.channel: report.codec for report in manifest.channels}
    )
    return {
        "call_id": view.call_id,
        "status": view.status.value,
        "created_at": format_time(view.created_at),
        "duration_ms": view.duration_ms,
        "end_reason": view.end_reason,
        "codecs": codecs,
        "metadata": view.metadata,
        "files": [
            {"role": entry.role, "size_bytes": entry.size_bytes, "key": entry.key}
            for entry in files
        ],
        "jobs": {} if manifest is None else summarize_jobs(manifest.jobs),
        "legs": {} if manifest is None else _leg_transports(manifest.legs),
        "links": build_links(view),
    }


# What a listing shows of each leg; the manifest has the whole record.
_LISTED_LEG_FIELDS = ("transport", "codec", "payload_type")


def _leg_transports(legs: dict[str, Any]) -> dict[str, Any]:
    """What carried each leg and in which codec, for a listing (None where the leg never said)."""
    return {
        name: {key: leg.get(key) for key in _LISTED_LEG_FIELDS}
        for name, leg in legs.items()
        if isinstance(leg, dict)
    }


def build_detail(view: RecordingView) -> dict[str, Any]:
    """A recording's manifest (with its current status), or what is known of it so far."""
    if view.manifest is not None and view.status in KEPT_STATUSES | {CallStatus.UPLOAD_FAILED}:
        body = view.manifest.to_dict()
        body["status"] = view.status.value
    else:
        body = {
            "call_id": view.call_id,
            "status": view.status.value,
            "created_at": format_time(view.created_at),
            "duration_ms": view.duration_ms,
            "files": [],
            **view.details,
        }
    body["links"] = build_links(view)
    return body


class LiveCall(Protocol):
    """What the catalog reads of a call still recording (a CallRecording)."""

    @property
    def call_id(self) -> str:
        """The call's id."""
        ...

    @property
    def status(self) -> CallStatus:
        """Recording or finalizing."""
        ...

    @property
    def wall_start_ns(self) -> int:
        """When it opened (UTC epoch ns)."""
        ...

    @property
    def mono_start_ns(self) -> int:
        """When it opened (monotonic ns)."""
        ...

    @property
    def open_channels(self) -> frozenset[Channel]:
        """Channels still recording."""
        ...

    @property
    def codecs(self) -> dict[Channel, Codec]:
        """Each channel's codec."""
        ...


def build_live_view(call: LiveCall, now_monotonic_ns: int) -> RecordingView:
    """A call still recording: duration so far, open channels, codecs."""
    return RecordingView(
        call_id=call.call_id,
        status=call.status,
        # Through format_utc, so the time is exactly the one its manifest will carry.
        created_at=parse_time(format_utc(call.wall_start_ns)),
        duration_ms=max(0, now_monotonic_ns - call.mono_start_ns) / 1e6,
        details={
            "open_channels": sorted(channel.value for channel in call.open_channels),
            "codecs": {channel.value: codec.value for channel, codec in call.codecs.items()},
        },
    )


def build_stored_view(manifest: Manifest, manifest_key: str) -> RecordingView:
    """A recording whose manifest is in the store."""
    return RecordingView(
        call_id=manifest.call_id,
        status=manifest.status,
        created_at=parse_time(manifest.created_at),
        duration_ms=manifest.duration_ms,
        manifest=manifest,
        manifest_key=manifest_key,
    )
