"""Layout of a call's spool directory: its journals, its description, the files built from them."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediaserver.errors import JournalError
from mediaserver.recording.channel import Channel, Codec

CALL_FILE = "call.json"
MANIFEST_FILE = "manifest.json"
OUTPUT_FILES = {
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

    def to_json(self) -> str:
        """JSON form."""
        return json.dumps(
            {
                "call_id": self.call_id,
                "wall_start_ns": self.wall_start_ns,
                "mono_start_ns": self.mono_start_ns,
                "codecs": {c.value: codec.value for c, codec in self.codecs.items()},
                "metadata": self.metadata,
            }
        )


def parse_call_description(text: str) -> CallDescription:
    """Read a call description back."""
    try:
        data = json.loads(text)
        return CallDescription(
            call_id=str(data["call_id"]),
            wall_start_ns=int(data["wall_start_ns"]),
            mono_start_ns=int(data["mono_start_ns"]),
            codecs={Channel(c): Codec(v) for c, v in data["codecs"].items()},
            metadata=dict(data.get("metadata", {})),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(f"call description is malformed: {exc}") from None


def journal_path(spool_dir: Path, channel: Channel) -> Path:
    """Where a channel's journal lives."""
    return spool_dir / f"{channel.value}.journal"


def output_path(spool_dir: Path, role: str) -> Path:
    """Where an output file (left, right, stereo, peaks) is built."""
    return spool_dir / OUTPUT_FILES[role]
