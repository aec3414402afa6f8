"""The audit log on local disk: one JSON-lines file per UTC day, appended to and fsynced."""

# Files are opened O_APPEND and never rewritten: every batch of events is one write() of whole
# lines followed by fsync() before anyone is told the events are recorded (a new day's file also
# fsyncs its directory, so the file itself survives a power cut). A process killed mid-write
# leaves at most a torn last line, which readers skip. Retention removes whole day files only.

import asyncio
import os
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import structlog

from mediaserver.audit.event import AuditEvent, parse_event_lines
from mediaserver.storage_backends.local import fsync_directory

log = structlog.get_logger(__name__)

_PREFIX = "audit-"
_SUFFIX = ".jsonl"


def day_file_name(day: date) -> str:
    """The file name of one day's events."""
    return f"{_PREFIX}{day.isoformat()}{_SUFFIX}"


def parse_day_file_name(name: str) -> date | None:
    """The day a file name stands for, or None for any other file."""
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    try:
        return date.fromisoformat(name[len(_PREFIX) : -len(_SUFFIX)])
    except ValueError:
        return None


class FileAuditSink:
    """Audit events in `<directory>/audit-YYYY-MM-DD.jsonl`; file work runs in threads."""

    def __init__(self, directory: Path) -> None:
        """Keep the files under `directory` (created on first write)."""
        self.directory = directory

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Append events to their days' files, durably."""
        await asyncio.to_thread(self._append, events)

    async def days(self) -> list[date]:
        """Every day with a file, oldest first."""
        return await asyncio.to_thread(self._days)

    async def read_day(self, day: date) -> list[AuditEvent]:
        """One day's events in the order they were written."""
        return await asyncio.to_thread(self._read_day, day)

    async def delete_day(self, day: date) -> None:
        """Remove one day's file."""
        await asyncio.to_thread(self._delete_day, day)

    def _append(self, events: Sequence[AuditEvent]) -> None:
        """Append events to their days' files, durably."""
        by_day: dict[date, list[bytes]] = {}
        for event in events:
            by_day.setdefault(event.day, []).append(event.to_json_line())
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(self.directory.parent)
        for day, lines in sorted(by_day.items()):
            path = self.directory / day_file_name(day)
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                data = b"".join(lines)
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_directory(self.directory)

    def _days(self) -> list[date]:
        """Every day with a file, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (parse_day_file_name(entry.name) for entry in os.scandir(self.directory))
        return sorted(day for day in found if day is not None)

    def _read_day(self, day: date) -> list[AuditEvent]:
        """One day's events in the order they were written."""
        path = self.directory / day_file_name(day)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        events, unreadable = parse_event_lines(data)
        if unreadable:
            log.warning("audit.unreadable_lines", file=str(path), lines=unreadable)
        return events

    def _delete_day(self, day: date) -> None:
        """Remove one day's file."""
        (self.directory / day_file_name(day)).unlink(missing_ok=True)
        fsync_directory(self.directory)
