"""The spool: where a call's journals, description and built files live until they are stored."""

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mediaserver.encryption.sealed_journal import (
    SealedJournalReader,
    is_sealed_journal,
    open_sealed_journal,
)
from mediaserver.errors import EncryptionKeyUnavailableError, JournalError
from mediaserver.recording.call_record import (
    CallRecord,
    build_event_line,
    parse_call_record,
    parse_event_lines,
)
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.manifest import Manifest, parse_manifest

_CALL_FILE = "call.json"
_RECORD_FILE = "record.json"
_EVENTS_FILE = "events.jsonl"
_MANIFEST_FILE = "manifest.json"
_ENVELOPE_FILE = "envelope.json"  # with encryption: the data key the journals are sealed with
_OUTPUT_FILES = {
    "left": "left.opus",
    "right": "right.opus",
    "stereo": "merged.opus",
    "peaks": "peaks.json",
}


@dataclass(frozen=True, slots=True)
class CallDescription:
    """What is known about a call when it opens, written beside its journals."""

    call_id: str
    wall_start_ns: int
    mono_start_ns: int
    codecs: dict[Channel, Codec]
    metadata: dict[str, Any]
    retention_days: int | None = None  # the call's own retention (POST /v1/calls), if it set one

    def to_json(self) -> str:
        """JSON form."""
        data = {
            "call_id": self.call_id,
            "wall_start_ns": self.wall_start_ns,
            "mono_start_ns": self.mono_start_ns,
            "codecs": {c.value: codec.value for c, codec in self.codecs.items()},
            "metadata": self.metadata,
        }
        if self.retention_days is not None:
            data["retention_days"] = self.retention_days
        return json.dumps(data)


def parse_call_description(text: str) -> CallDescription:
    """Read a call description back."""
    try:
        data = json.loads(text)
        retention_days = data.get("retention_days")
        return CallDescription(
            call_id=str(data["call_id"]),
            wall_start_ns=int(data["wall_start_ns"]),
            mono_start_ns=int(data["mono_start_ns"]),
            codecs={Channel(c): Codec(v) for c, v in data["codecs"].items()},
            metadata=dict(data.get("metadata", {})),
            retention_days=None if retention_days is None else int(retention_days),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(f"call description is malformed: {exc}") from None


class CallSpool:
    """One call's spool directory; the only code that knows its layout."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def call_id(self) -> str:
        """The call the directory belongs to (its name)."""
        return self.directory.name

    def journal_path(self, channel: Channel) -> Path:
        """Where a channel's journal lives."""
        return self.directory / f"{channel.value}.journal"

    def output_path(self, role: str) -> Path:
        """Where an output file (left, right, stereo, peaks) is built."""
        return self.directory / _OUTPUT_FILES[role]

    @property
    def manifest_path(self) -> Path:
        """Where the built recording's manifest is kept until it is stored."""
        return self.directory / _MANIFEST_FILE

    def exists(self) -> bool:
        """Whether the directory is there."""
        return self.directory.exists()

    def is_call(self) -> bool:
        """Whether the directory holds a call (its description was written)."""
        return (self.directory / _CALL_FILE).is_file()

    def create(self, description: CallDescription) -> None:
        """Make the directory (it must not exist) and write the description."""
        self.directory.mkdir(parents=True)
        (self.directory / _CALL_FILE).write_text(description.to_json())

    def read_description(self) -> CallDescription:
        """The call's description."""
        return parse_call_description((self.directory / _CALL_FILE).read_text())

    def journal_identity(self, channel: Channel) -> str:
        """What a sealed journal's segments are bound to: the call and the channel."""
        return f"{self.call_id}/{channel.value}"

    def read_journal(self, channel: Channel, data_key: bytes | None) -> bytes:
        """A channel's journal as written (unsealed with `data_key`); empty if it is missing."""
        path = self.journal_path(channel)
        if not path.exists():
            return b""
        data = path.read_bytes()
        if not is_sealed_journal(data):
            return data
        if data_key is None:
            raise self._key_unavailable(channel)
        return open_sealed_journal(data, data_key, self.journal_identity(channel))

    def open_journal(self, channel: Channel, data_key: bytes | None) -> BinaryIO | None:
        """A channel's journal to read from the start (unsealed in memory); None if missing."""
        path = self.journal_path(channel)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        prefix = handle.read(16)
        if not prefix:  # created but never written: a channel that sent nothing
            handle.close()
            return None
        handle.seek(0)
        if not is_sealed_journal(prefix):
            return handle
        try:
            if data_key is None:
                raise self._key_unavailable(channel)
            # Authenticated whole, then read a segment at a time: memory of one segment.
            reader = SealedJournalReader(handle, data_key, self.journal_identity(channel))
        except BaseException:
            handle.close()
            raise
        return io.BufferedReader(reader)

    def _key_unavailable(self, channel: Channel) -> EncryptionKeyUnavailableError:
        """The error for a sealed journal whose data key cannot be unwrapped here."""
        return EncryptionKeyUnavailableError(
            f"the {channel.value} journal of call {self.call_id} is sealed and its data key"
            " cannot be unwrapped here: recover it where encryption_private_key_path is set"
        )

    def write_envelope(self, envelope_json: str) -> None:
        """Keep the wrapped data key the journals are sealed with (a crash's recovery needs it)."""
        # Whole or not at all (`mediaserver rekey` rewrites it while the server may run).
        temporary = self.directory / f".{_ENVELOPE_FILE}.tmp"
        temporary.write_text(envelope_json)
        os.replace(temporary, self.directory / _ENVELOPE_FILE)

    def read_envelope(self) -> str | None:
        """The wrapped data key of sealed journals, or None (journals in plain)."""
        try:
            return (self.directory / _ENVELOPE_FILE).read_text()
        except FileNotFoundError:
            return None

    def write_record(self, record: CallRecord) -> None:
        """Write the call's record at its end (a few hundred bytes)."""
        (self.directory / _RECORD_FILE).write_text(record.to_json())

    def read_record(self) -> CallRecord | None:
        """The call's record, or None when the call never ended (a crash) or it is torn."""
        try:
            return parse_call_record((self.directory / _RECORD_FILE).read_text())
        except FileNotFoundError:
            return None
        except JournalError:
            return None

    def append_event(self, event: dict[str, Any]) -> None:
        """Add one event to the call's event log, written through at once (events are rare)."""
        with (self.directory / _EVENTS_FILE).open("a") as handle:
            handle.write(build_event_line(event))

    def read_events(self) -> list[dict[str, Any]]:
        """The call's events in the order they happened (none if it had none)."""
        try:
            return parse_event_lines((self.directory / _EVENTS_FILE).read_text())
        except FileNotFoundError:
            return []

    def write_manifest(self, manifest: Manifest) -> Path:
        """Write the manifest beside the built files; returns its path."""
        self.manifest_path.write_text(manifest.to_json())
        return self.manifest_path

    def read_manifest(self) -> Manifest | None:
        """The manifest of a built recording, or None when there is none (or it is torn)."""
        try:
            return parse_manifest(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None

    def read_built_manifest(self) -> Manifest | None:
        """The manifest, if every file it lists is still here (built but not yet stored)."""
        manifest = self.read_manifest()
        if manifest is None:
            return None
        if all((self.directory / f.name).exists() for f in manifest.files):
            return manifest
        return None

    def remove(self) -> None:
        """Delete the directory and everything in it."""
        shutil.rmtree(self.directory)


class Spool:
    """The spool root: one directory per call whose recording is not stored yet."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def call(self, call_id: str) -> CallSpool:
        """A call's spool (which may not exist yet)."""
        return CallSpool(self.root / call_id)

    def ensure(self) -> None:
        """Create the root if it is missing."""
        self.root.mkdir(parents=True, exist_ok=True)

    def list_calls(self) -> list[CallSpool]:
        """Every call directory with a description, sorted by call id."""
        if not self.root.is_dir():
            return []
        found = (CallSpool(p) for p in sorted(self.root.iterdir()) if p.is_dir())
        return [spool for spool in found if spool.is_call()]
