"""Stored manifests by call id, learned from listings and probes, with parsed manifests cached."""

# Finding a stored recording by id without listing the bucket on every request: RecordingIndex
# keeps id -> manifest key, learned from every listing (GET /v1/recordings lists anyway). On a miss
# it first probes the manifest keys of today and yesterday (UTC, the date prefix is the call's
# start day; a call just stored almost always started then), one `stat` each, and only then lists
# `recordings/` again, at most once per `full_listing_interval_s`. The trade-off: a miss costs two
# metadata requests; an id that does not exist costs a full listing at most once per interval; a
# recording stored by another server process with a start day before yesterday can stay unknown
# (404) until the next listing, i.e. at most `full_listing_interval_s` (or the next list request).

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import structlog

from mediaserver.clock import Clock
from mediaserver.errors import ObjectNotFoundError
from mediaserver.recording.manifest import Manifest, parse_manifest
from mediaserver.storage_backends.keys import (
    RECORDINGS_PREFIX,
    build_recording_keys,
    parse_manifest_key,
)
from mediaserver.storage_backends.store import ObjectInfo, ObjectStore

log = structlog.get_logger(__name__)

RECENT_DAYS_PROBED = 2  # today and yesterday, UTC
DEFAULT_FULL_LISTING_INTERVAL_S = 30.0
DEFAULT_MANIFEST_CACHE_ENTRIES = 10_000  # a few KiB each: tens of MiB at most


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A manifest seen in a listing."""

    call_id: str
    day: date
    info: ObjectInfo


class RecordingIndex:
    """Stored manifests by call id, learned from listings and probes; parsed manifests cached."""

    def __init__(
        self,
        store: ObjectStore,
        clock: Clock,
        *,
        full_listing_interval_s: float = DEFAULT_FULL_LISTING_INTERVAL_S,
        manifest_cache_entries: int = DEFAULT_MANIFEST_CACHE_ENTRIES,
    ) -> None:
        """Index `store`; `clock` gives today's date and paces full listings."""
        self._store = store
        self._clock = clock
        self._full_listing_interval_ns = int(full_listing_interval_s * 1e9)
        self._cache_entries = manifest_cache_entries
        self._keys: dict[str, str] = {}
        self._listed_at_ns: int | None = None
        self._listing_lock = asyncio.Lock()  # concurrent misses share one listing
        self._manifests: OrderedDict[str, tuple[int, datetime, Manifest]] = OrderedDict()
        self.full_listings = 0  # for tests and metrics: how often the whole prefix was listed

    async def list_stored(self) -> list[StoredEntry]:
        """Every stored manifest, from a fresh listing that also replaces the id index."""
        infos = await self._store.list_objects(RECORDINGS_PREFIX)
        entries = []
        for info in infos:
            parsed = parse_manifest_key(info.key)
            if parsed is not None:
                entries.append(StoredEntry(parsed[0], parsed[1], info))
        self._keys = {entry.call_id: entry.info.key for entry in entries}
        self._listed_at_ns = self._clock.monotonic_ns()
        self.full_listings += 1
        return entries

    async def find_manifest_key(self, call_id: str) -> str | None:
        """The manifest key of a stored recording, or None if the store has none (see module)."""
        known = self._keys.get(call_id)
        if known is not None:
            return known
        today = datetime.fromtimestamp(self._clock.wall_ns() / 1e9, UTC)
        for days_back in range(RECENT_DAYS_PROBED):
            key = build_recording_keys(call_id, today - timedelta(days=days_back)).manifest
            try:
                await self._store.stat(key)
            except ObjectNotFoundError:
                continue
            self._keys[call_id] = key
            return key
        async with self._listing_lock:
            if call_id not in self._keys and self._listing_is_stale():
                await self.list_stored()
        return self._keys.get(call_id)

    def forget(self, call_id: str) -> None:
        """Drop a recording that was deleted."""
        key = self._keys.pop(call_id, None)
        if key is not None:
            self._manifests.pop(key, None)

    async def read_listed_manifest(self, info: ObjectInfo) -> Manifest | None:
        """A listed manifest, from the cache while its size and update time are unchanged."""
        cached = self._manifests.get(info.key)
        if cached is not None and cached[:2] == (info.size_bytes, info.updated_at):
            self._manifests.move_to_end(info.key)
            return cached[2]
        try:
            manifest = await self.read_manifest(info.key)
        except ObjectNotFoundError:
            return None  # deleted since the listing
        if manifest is None:
            return None
        self._manifests[info.key] = (info.size_bytes, info.updated_at, manifest)
        while len(self._manifests) > self._cache_entries:
            self._manifests.popitem(last=False)
        return manifest

    async def read_manifest(self, key: str) -> Manifest | None:
        """A manifest read from the store now; None (logged) if it is not a valid manifest."""
        text = await self._store.get_range(key)
        try:
            return parse_manifest(text.decode())
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            log.warning("recordings.manifest_malformed", key=key, error=str(exc))
            return None

    def _listing_is_stale(self) -> bool:
        """True if the last full listing is older than the interval (or there was none)."""
        if self._listed_at_ns is None:
            return True
        return self._clock.monotonic_ns() - self._listed_at_ns >= self._full_listing_interval_ns
