"""The audit log in an object store shared by several nodes: one object per node per batch."""

# GCS objects cannot be appended to, and rewriting a shared day object from several nodes would
# need a lock and could lose a line to any bug. So each node writes every batch it commits as a
# new object, `audit/YYYY/MM/DD/<first event id>.jsonl`, and never touches it again: the log is
# append-only by construction, nodes never contend, and object names sort by time (the event id
# starts with the time in ns, then the node). Batches are group commits: one object per event
# when the server is quiet, many events per object under load, so the object count follows the
# request rate only up to one object per write round trip. Retention deletes whole day prefixes;
# a bucket lifecycle rule on `audit/` can do the same (README, "Retention").

import asyncio
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import structlog

from mediaserver.audit.event import AuditEvent, parse_event_lines
from mediaserver.errors import ObjectNotFoundError
from mediaserver.storage_backends.keys import JSON_LINES_CONTENT_TYPE
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)

AUDIT_PREFIX = "audit/"
_DAY_KEY = re.compile(r"audit/([0-9]{4})/([0-9]{2})/([0-9]{2})/[^/]+\.jsonl")


def day_prefix(day: date) -> str:
    """The key prefix of one day's batches."""
    return f"{AUDIT_PREFIX}{day:%Y/%m/%d}/"


def parse_day_key(key: str) -> date | None:
    """The day of a batch object's key, or None for any other key."""
    match = _DAY_KEY.fullmatch(key)
    if match is None:
        return None
    try:
        return date(*(int(part) for part in match.groups()))
    except ValueError:
        return None


class StoreAuditSink:
    """Audit batches as objects under `audit/` of a store."""

    def __init__(self, store: ObjectStore, scratch_dir: Path) -> None:
        """Write through `store`; the store takes files, made in `scratch_dir`."""
        self.store = store
        self.scratch_dir = scratch_dir

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Store one object per day the batch touches."""
        by_day: dict[date, list[AuditEvent]] = {}
        for event in events:
            by_day.setdefault(event.day, []).append(event)
        for day, day_events in sorted(by_day.items()):
            key = f"{day_prefix(day)}{day_events[0].id}.jsonl"
            data = b"".join(event.to_json_line() for event in day_events)
            path = await asyncio.to_thread(_write_temp, self.scratch_dir, data)
            try:
                await self.store.put_file(key, path, content_type=JSON_LINES_CONTENT_TYPE)
            finally:
                await asyncio.to_thread(path.unlink, missing_ok=True)

    async def days(self) -> list[date]:
        """Every day with a batch, oldest first."""
        objects = await self.store.list_objects(AUDIT_PREFIX)
        return sorted({day for info in objects if (day := parse_day_key(info.key)) is not None})

    async def read_day(self, day: date) -> list[AuditEvent]:
        """One day's events, in id order."""
        events: list[AuditEvent] = []
        for info in await self.store.list_objects(day_prefix(day)):
            try:
                data = await self.store.get_range(info.key)
            except ObjectNotFoundError:
                continue  # expired meanwhile
            batch, unreadable = parse_event_lines(data)
            if unreadable:
                log.warning("audit.unreadable_lines", key=info.key, lines=unreadable)
            events += batch
        events.sort(key=lambda event: event.id)
        return events

    async def delete_day(self, day: date) -> None:
        """Delete one day's batches."""
        for info in await self.store.list_objects(day_prefix(day)):
            try:
                await self.store.delete(info.key)
            except ObjectNotFoundError:
                continue


def _write_temp(directory: Path, data: bytes) -> Path:
    """A temporary file holding `data`."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".audit.", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Path(name)
