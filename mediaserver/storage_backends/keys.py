"""Object keys: where a recording's files live in a store, and which keys are acceptable."""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from mediaserver.errors import InvalidKeyError

# GCS caps object names at 1024 bytes of UTF-8; local file systems cap one name at 255 bytes.
# Keys obey both limits so that any key is valid on every backend.
MAX_KEY_LENGTH_BYTES = 1024
MAX_SEGMENT_LENGTH_BYTES = 255

RECORDINGS_PREFIX = "recordings/"

# RFC 7845 section 9: Ogg Opus files are served as audio/ogg.
OGG_OPUS_CONTENT_TYPE = "audio/ogg"
MANIFEST_CONTENT_TYPE = "application/json"
JSON_CONTENT_TYPE = "application/json"
WEBVTT_CONTENT_TYPE = "text/vtt"  # W3C WebVTT §8.1 (IANA registration)
JSON_LINES_CONTENT_TYPE = "application/x-ndjson"  # one JSON value per line (the audit log)
DEFAULT_CONTENT_TYPE = "application/octet-stream"

_CONTENT_TYPES_BY_SUFFIX = {
    ".opus": OGG_OPUS_CONTENT_TYPE,
    ".ogg": OGG_OPUS_CONTENT_TYPE,
    ".json": MANIFEST_CONTENT_TYPE,
    ".vtt": WEBVTT_CONTENT_TYPE,
    ".jsonl": JSON_LINES_CONTENT_TYPE,
}

MANIFEST_SUFFIX = "_manifest.json"
ENVELOPE_SUFFIX = "_envelope.json"
_CALL_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Any object of a recording: recordings/YYYY/MM/DD/conversation_<id>_<what>. Call ids may hold
# "_", so the id is the part the recording's own keys put before their known suffixes.
_RECORDING_KEY_PATTERN = re.compile(
    re.escape(RECORDINGS_PREFIX)
    + r"[0-9]{4}/[0-9]{2}/[0-9]{2}/conversation_([A-Za-z0-9_-]{1,64})_"
    + r"(left\.opus|right\.opus|merged\.opus|peaks\.json|manifest\.json|analysis\.json"
    + r"|transcript\.json|transcript\.vtt|envelope\.json)"
)
_MANIFEST_KEY_PATTERN = re.compile(
    re.escape(RECORDINGS_PREFIX)
    + r"([0-9]{4})/([0-9]{2})/([0-9]{2})/conversation_([A-Za-z0-9_-]{1,64})_manifest\.json"
)
# A segment never starts with a dot: that rules out "." and ".." and keeps the local store's
# hidden temporary files (".name.xxxx.tmp") outside the key space, so they can never be listed.
_SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")


@dataclass(frozen=True, slots=True)
class RecordingKeys:
    """The object keys of one recording's files, all under one UTC date prefix."""

    left: str
    right: str
    merged: str
    peaks: str
    manifest: str
    analysis: str
    transcript: str
    transcript_vtt: str
    envelope: str  # an encrypted recording's wrapped data key

    @property
    def prefix(self) -> str:
        """What every key of the recording starts with."""
        return self.manifest.removesuffix(MANIFEST_SUFFIX)

    def all_keys(self) -> tuple[str, str, str, str, str]:
        """Return every key of the recording's audio and peaks, manifest last."""
        return (self.left, self.right, self.merged, self.peaks, self.manifest)

    def by_role(self) -> dict[str, str]:
        """The key of each file role a manifest lists."""
        return {"left": self.left, "right": self.right, "stereo": self.merged, "peaks": self.peaks}

    def derived_keys(self) -> tuple[str, str, str]:
        """Return the keys of what post-call jobs derive: analysis and transcripts."""
        return (self.analysis, self.transcript, self.transcript_vtt)

    def object_keys(self) -> tuple[str, ...]:
        """Every key of the recording but its manifest, the data key first (a delete's order)."""
        return (self.envelope, *self.by_role().values(), *self.derived_keys())


def validate_call_id(call_id: str) -> str:
    """Return `call_id` if it is 1-64 characters of [A-Za-z0-9_-], else raise InvalidKeyError."""
    if not _CALL_ID_PATTERN.fullmatch(call_id):
        raise InvalidKeyError(f"call id {call_id!r} is not 1-64 characters of [A-Za-z0-9_-]")
    return call_id


def build_recording_keys(call_id: str, started_at: datetime) -> RecordingKeys:
    """Build the seed's file names for a call under `recordings/YYYY/MM/DD/` of its UTC start."""
    validate_call_id(call_id)
    if started_at.tzinfo is None or started_at.utcoffset() is None:
        raise ValueError("started_at must be timezone-aware")
    day = started_at.astimezone(UTC)
    prefix = f"{RECORDINGS_PREFIX}{day:%Y/%m/%d}/conversation_{call_id}"
    return RecordingKeys(
        left=f"{prefix}_left.opus",
        right=f"{prefix}_right.opus",
        merged=f"{prefix}_merged.opus",
        peaks=f"{prefix}_peaks.json",
        manifest=f"{prefix}_manifest.json",
        analysis=f"{prefix}_analysis.json",
        transcript=f"{prefix}_transcript.json",
        transcript_vtt=f"{prefix}_transcript.vtt",
        envelope=f"{prefix}{ENVELOPE_SUFFIX}",
    )


def build_file_name(call_id: str, role: str) -> str:
    """The seed's file name of one role, without the date prefix (what import-pcap writes)."""
    suffix = {"left": "left.opus", "right": "right.opus", "stereo": "merged.opus"}.get(role)
    return f"conversation_{validate_call_id(call_id)}_{suffix or role + '.json'}"


@dataclass(frozen=True, slots=True)
class RecordingObject:
    """Which recording an object key belongs to, and which of its objects it is."""

    call_id: str
    prefix: str  # recordings/YYYY/MM/DD/conversation_<id>
    name: str  # left.opus, manifest.json, envelope.json, ...

    @property
    def envelope_key(self) -> str:
        """The key of the recording's wrapped data key."""
        return f"{self.prefix}{ENVELOPE_SUFFIX}"


def parse_recording_key(key: str) -> RecordingObject | None:
    """The recording an object key belongs to, or None for a key no recording has."""
    match = _RECORDING_KEY_PATTERN.fullmatch(key)
    if match is None:
        return None
    call_id, name = match.groups()
    return RecordingObject(call_id, key.removesuffix("_" + name), name)


def parse_manifest_key(key: str) -> tuple[str, date] | None:
    """(call id, start day) of a manifest key, or None for any other key."""
    match = _MANIFEST_KEY_PATTERN.fullmatch(key)
    if match is None:
        return None
    year, month, day, call_id = match.groups()
    try:
        return call_id, date(int(year), int(month), int(day))
    except ValueError:
        return None


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key on every backend, else raise InvalidKeyError."""
    if not key:
        raise InvalidKeyError("object key is empty")
    if "\x00" in key:
        raise InvalidKeyError("object key contains a NUL character")
    if "\\" in key:
        raise InvalidKeyError(f"object key {key!r} contains a backslash")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key {key!r} is absolute")
    if len(key.encode()) > MAX_KEY_LENGTH_BYTES:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_LENGTH_BYTES} bytes")
    for segment in key.split("/"):
        _validate_segment(key, segment)
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if every whole segment of it is valid (the last may be partial or empty)."""
    if not prefix:
        return prefix
    # A prefix is a key cut anywhere: check it as a key, tolerating an empty last segment.
    validate_key(prefix.removesuffix("/"))
    return prefix


def compute_content_type(key: str) -> str:
    """Return the media type of an object from its key's suffix."""
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""
    return _CONTENT_TYPES_BY_SUFFIX.get(suffix, DEFAULT_CONTENT_TYPE)


def _validate_segment(key: str, segment: str) -> None:
    """Raise InvalidKeyError if one '/'-separated segment of `key` is unsafe."""
    if segment == "..":
        raise InvalidKeyError(f"object key {key!r} contains a '..' segment")
    if not segment:
        raise InvalidKeyError(f"object key {key!r} has an empty segment")
    if len(segment.encode()) > MAX_SEGMENT_LENGTH_BYTES:
        raise InvalidKeyError(
            f"object key has a segment longer than {MAX_SEGMENT_LENGTH_BYTES} bytes"
        )
    if not _SEGMENT_PATTERN.fullmatch(segment):
        raise InvalidKeyError(
            f"object key {key!r} has segment {segment!r} outside [A-Za-z0-9._=+-] "
            "or starting with a dot"
        )
