"""Recordings API: list, describe, stream (HTTP Range) and delete call recordings."""

# Where a recording is looked for, first match wins (read in this order so that a call moving on
# while the request runs is still seen: the spool is released only after the manifest is stored):
# 1. the recorder's live calls: status "recording", with what is known so far;
# 2. the spool, `<spool_root>/<id>/`: its `manifest.json` when that says "upload_failed" (the files
#    are kept there and the sweeper retries the upload), otherwise "finalizing" (being built or
#    uploaded; a spool left by a crash also shows as "finalizing" until start-up recovery ends);
# 3. the store, `recordings/YYYY/MM/DD/conversation_{id}_manifest.json` (the recorder writes the
#    manifest last, so a manifest means every file it lists was stored).
#
# Finding a stored recording by id without listing the bucket on every request: RecordingIndex
# keeps id -> manifest key, learned from every listing (GET /v1/recordings lists anyway). On a miss
# it first probes the manifest keys of today and yesterday (UTC, the date prefix is the call's
# start day; a call just stored almost always started then), one `stat` each, and only then lists
# `recordings/` again, at most once per `full_listing_interval_s`. The trade-off: a miss costs two
# metadata requests; an id that does not exist costs a full listing at most once per interval; a
# recording stored by another server process with a start day before yesterday can stay unknown
# (404) until the next listing, i.e. at most `full_listing_interval_s` (or the next list request).
#
# Listing is newest first by (created_at, call_id), with a keyset cursor (stable when recordings
# are added or removed between pages). It lists the bucket once, then reads manifests day by day
# from the newest date prefix, only as many days as the page needs; parsed manifests are cached
# by (key, size, update time), so later pages and repeated listings do not read them again.

import asyncio
import base64
import binascii
import json
import re
from collections import OrderedDict, defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from mediaserver.api.errors import ApiError
from mediaserver.api.keys import RECORDER, SETTINGS, STORE
from mediaserver.clock import Clock
from mediaserver.errors import JournalError, ObjectNotFoundError, UnknownCallError
from mediaserver.recorder import CALL_ID_PATTERN, Recorder
from mediaserver.recording.call import Call, CallStatus
from mediaserver.recording.manifest import FileEntry, Manifest, format_utc, parse_manifest
from mediaserver.recording.spool import CALL_FILE, MANIFEST_FILE, parse_call_description
from mediaserver.storage_backends.keys import (
    OGG_OPUS_CONTENT_TYPE,
    RECORDINGS_PREFIX,
    build_recording_keys,
)
from mediaserver.storage_backends.store import ObjectInfo, ObjectStore

log = structlog.get_logger(__name__)

RECORDINGS_PATH = "/v1/recordings"
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 500
# Query value of ?channel= -> the manifest file role that holds it.
CHANNEL_ROLES = {"stereo": "stereo", "left": "left", "right": "right"}
STORED_STATUSES = frozenset({CallStatus.STORED, CallStatus.RECOVERED})
RECENT_DAYS_PROBED = 2  # today and yesterday, UTC
DEFAULT_FULL_LISTING_INTERVAL_S = 30.0
DEFAULT_MANIFEST_CACHE_ENTRIES = 10_000  # a few KiB each: tens of MiB at most
MANIFEST_FETCH_CONCURRENCY = 8
# 19 digits hold any int64 offset; longer numbers are ignored with the header instead of being
# handed to int() (CPython refuses to convert strings over 4300 digits).
_RANGE_SPEC_PATTERN = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")
_MANIFEST_KEY_PATTERN = re.compile(
    re.escape(RECORDINGS_PREFIX)
    + r"([0-9]{4})/([0-9]{2})/([0-9]{2})/conversation_([A-Za-z0-9_-]{1,64})_manifest\.json"
)
# A '+' in an unencoded query string arrives as a space: "...T10:00:00 00:00" meant "+00:00".
_DECODED_PLUS_OFFSET = re.compile(r" ([0-9]{2}(?::?[0-9]{2})?)$")


# -- byte ranges (pure) -------------------------------------------------------------------------


class RangeOutcome(Enum):
    """How a Range header is answered."""

    WHOLE = "whole"  # no usable Range: 200 with the whole object
    PARTIAL = "partial"  # 206 with Content-Range
    UNSATISFIABLE = "unsatisfiable"  # 416 with Content-Range: bytes */size


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The bytes [start, end) to send and how to answer."""

    outcome: RangeOutcome
    start: int
    end: int


def compute_byte_range(range_header: str | None, size_bytes: int) -> ByteRange:
    """Answer a Range header for an object of `size_bytes` (RFC 9110 section 14.2)."""
    # Only single byte ranges are served partially. Multiple ranges get the whole object with
    # 200, which section 14.2 allows ("a server MAY ignore the Range header field"): audio players
    # ask for one range at a time, and multipart/byteranges would buy nothing but complexity.
    # Malformed headers, other units and invalid ranges (last < first) are ignored likewise.
    whole = ByteRange(RangeOutcome.WHOLE, 0, size_bytes)
    unsatisfiable = ByteRange(RangeOutcome.UNSATISFIABLE, 0, 0)
    if range_header is None:
        return whole
    unit, equals, range_set = range_header.partition("=")
    # RFC 9110 section 14.1: range units are case-insensitive; "bytes" is the only one here.
    if not equals or unit.strip().lower() != "bytes":
        return whole
    specs = range_set.split(",")
    if len(specs) != 1:
        return whole
    match = _RANGE_SPEC_PATTERN.fullmatch(specs[0].strip(" \t"))
    if match is None:
        return whole
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return whole
        # RFC 9110 section 14.1.1: suffix-range "-n" is the last n bytes; "-0" selects none.
        suffix_bytes = int(last_text)
        if suffix_bytes == 0 or size_bytes == 0:
            return unsatisfiable
        return ByteRange(RangeOutcome.PARTIAL, max(0, size_bytes - suffix_bytes), size_bytes)
    start = int(first_text)
    if last_text and int(last_text) < start:
        return whole  # RFC 9110 section 14.1.1: an invalid range-spec
    if start >= size_bytes:
        return unsatisfiable  # section 14.1.1: first-pos at or past the end is unsatisfiable
    end = size_bytes if not last_text else min(int(last_text) + 1, size_bytes)
    return ByteRange(RangeOutcome.PARTIAL, start, end)


# -- query values (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A validated GET /v1/recordings query: created_at in [created_from, created_to)."""

    created_from: datetime | None
    created_to: datetime | None
    after: tuple[datetime, str] | None  # the last (created_at, call_id) of the previous page
    limit: int


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """Validate the list query, raising a 400 ApiError that names the bad parameter."""
    created_from = _parse_time_param(params, "from")
    created_to = _parse_time_param(params, "to")
    if created_from is not None and created_to is not None and created_from > created_to:
        raise ApiError(400, "bad_request", "query parameter from must not be after to")
    limit_text = params.get("limit")
    limit = DEFAULT_PAGE_LIMIT
    if limit_text is not None:
        if (
            not re.fullmatch(r"[0-9]{1,3}", limit_text)
            or not 1 <= int(limit_text) <= MAX_PAGE_LIMIT
        ):
            raise ApiError(
                400,
                "bad_request",
                f"query parameter limit must be an integer from 1 to {MAX_PAGE_LIMIT}",
            )
        limit = int(limit_text)
    cursor = params.get("cursor")
    after = None if cursor is None else parse_cursor(cursor)
    return ListQuery(created_from, created_to, after, limit)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (no offset means UTC); ValueError otherwise."""
    moment = datetime.fromisoformat(_DECODED_PLUS_OFFSET.sub(r"+\1", text.strip()))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """The manifest's time format: ISO 8601 UTC, microseconds, 'Z' (as format_utc writes it)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_cursor(created_at: datetime, call_id: str) -> str:
    """An opaque cursor naming the position after one item."""
    raw = json.dumps([format_time(created_at), call_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """Read a cursor back, raising a 400 ApiError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_text, call_id = json.loads(raw)
        if not isinstance(created_text, str) or not isinstance(call_id, str):
            raise TypeError(cursor)
        return parse_time(created_text), call_id
    except (binascii.Error, ValueError, TypeError):
        raise ApiError(
            400, "bad_request", "query parameter cursor is not a cursor this API returned"
        ) from None


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


def _parse_time_param(params: Mapping[str, str], name: str) -> datetime | None:
    """One optional time parameter."""
    text = params.get(name)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise ApiError(
            400,
            "bad_request",
            f"query parameter {name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z",
        ) from None


# -- what the API shows -------------------------------------------------------------------------


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


def build_links(view: RecordingView) -> dict[str, Any]:
    """Where the manifest and, once stored, the audio of a recording are served."""
    base = f"{RECORDINGS_PATH}/{view.call_id}"
    links: dict[str, Any] = {"manifest": base}
    if view.is_stored:
        links["audio"] = {channel: f"{base}/audio?channel={channel}" for channel in CHANNEL_ROLES}
    return links


def build_list_item(view: RecordingView) -> dict[str, Any]:
    """A recording as one item of a listing."""
    files = () if view.manifest is None else view.manifest.files
    return {
        "call_id": view.call_id,
        "status": view.status.value,
        "created_at": format_time(view.created_at),
        "duration_ms": view.duration_ms,
        "files": [
            {"role": entry.role, "size_bytes": entry.size_bytes, "key": entry.key}
            for entry in files
        ],
        "links": build_links(view),
    }


def build_detail(view: RecordingView) -> dict[str, Any]:
    """A recording's manifest (with its current status), or what is known of it so far."""
    if view.manifest is not None and view.status in STORED_STATUSES | {CallStatus.UPLOAD_FAILED}:
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


def build_live_view(call: Call, now_monotonic_ns: int) -> RecordingView:
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


def read_spool_view(spool_dir: Path) -> RecordingView | None:
    """What a spool directory says about its call (blocking: run in a thread)."""
    try:
        description = parse_call_description((spool_dir / CALL_FILE).read_text())
    except (OSError, JournalError):
        return None  # being released, or not a call's spool
    manifest: Manifest | None = None
    try:
        manifest = parse_manifest((spool_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        manifest = None  # not built yet, or being rewritten right now
    created_at = parse_time(format_utc(description.wall_start_ns))
    if manifest is not None and manifest.status is CallStatus.UPLOAD_FAILED:
        return RecordingView(
            description.call_id, manifest.status, created_at, manifest.duration_ms, manifest
        )
    return RecordingView(
        description.call_id,
        CallStatus.FINALIZING,
        created_at,
        None if manifest is None else manifest.duration_ms,
        details={"metadata": description.metadata},
    )


def read_spool_views(spool_root: Path, skip: Iterable[str]) -> list[RecordingView]:
    """Every spool's view except the ids in `skip` (blocking: run in a thread)."""
    skipped = set(skip)
    try:
        names = sorted(path.name for path in spool_root.iterdir() if path.is_dir())
    except OSError:
        return []
    views = []
    for name in names:
        if name in skipped or not CALL_ID_PATTERN.fullmatch(name):
            continue
        view = read_spool_view(spool_root / name)
        if view is not None and view.call_id == name:
            views.append(view)
    return views


# -- the index of stored manifests --------------------------------------------------------------


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


RECORDING_INDEX = web.AppKey("recording_index", RecordingIndex)


# -- finding recordings -------------------------------------------------------------------------


async def find_recording(app: web.Application, call_id: str) -> RecordingView:
    """The recording with this id, live, spooled or stored; a 404 ApiError if there is none."""
    not_found = ApiError(404, "not_found", f"no recording {call_id}")
    if not CALL_ID_PATTERN.fullmatch(call_id):
        raise not_found  # cannot exist: no call id has this form
    recorder = app[RECORDER]
    try:
        call = recorder.get_call(call_id)
    except UnknownCallError:
        pass
    else:
        return build_live_view(call, recorder.clock.monotonic_ns())
    spooled = await asyncio.to_thread(read_spool_view, recorder.spool_root / call_id)
    if spooled is not None and spooled.call_id == call_id:
        return spooled
    index = app[RECORDING_INDEX]
    key = await index.find_manifest_key(call_id)
    if key is None:
        raise not_found
    try:
        manifest = await index.read_manifest(key)
    except ObjectNotFoundError:
        index.forget(call_id)  # deleted elsewhere since it was indexed
        raise not_found from None
    if manifest is None or manifest.call_id != call_id:
        raise ApiError(500, "manifest_malformed", f"the stored manifest of {call_id} is unreadable")
    return build_stored_view(manifest, key)


async def collect_page(
    app: web.Application, query: ListQuery
) -> tuple[list[RecordingView], str | None]:
    """One page of recordings, newest first, and the cursor of the next page (None at the end)."""
    recorder = app[RECORDER]
    index = app[RECORDING_INDEX]
    # Live calls, then spools, then the store: a call moving on meanwhile is still seen once.
    now_ns = recorder.clock.monotonic_ns()
    known = {call.call_id: build_live_view(call, now_ns) for call in recorder.live_calls()}
    spooled = await asyncio.to_thread(read_spool_views, recorder.spool_root, set(known))
    known.update({view.call_id: view for view in spooled})
    stored = await index.list_stored()
    accepted = [view for view in known.values() if _accepts(query, view)]
    pending: defaultdict[date, list[StoredEntry]] = defaultdict(list)
    for entry in stored:
        if entry.call_id not in known and _day_may_match(query, entry.day):
            pending[entry.day].append(entry)
    wanted = query.limit + 1  # one more than the page tells whether a next page exists
    fetch_slots = asyncio.Semaphore(MANIFEST_FETCH_CONCURRENCY)

    async def resolve(entry: StoredEntry) -> RecordingView | None:
        async with fetch_slots:
            manifest = await index.read_listed_manifest(entry.info)
        if manifest is None or manifest.call_id != entry.call_id:
            return None
        return build_stored_view(manifest, entry.info.key)

    for day in sorted(pending, reverse=True):
        views = await asyncio.gather(*(resolve(entry) for entry in pending[day]))
        accepted += [view for view in views if view is not None and _accepts(query, view)]
        # Every item not read yet started before `day`: stop once the page is full of later ones.
        if sum(1 for view in accepted if view.created_at.date() >= day) >= wanted:
            break
    accepted.sort(key=lambda view: view.sort_key, reverse=True)
    page = accepted[:wanted]
    if len(page) < wanted:
        return page, None
    last = page[query.limit - 1]
    return page[: query.limit], build_cursor(last.created_at, last.call_id)


def _accepts(query: ListQuery, view: RecordingView) -> bool:
    """True if a recording belongs in the listing the query asks for."""
    if query.created_from is not None and view.created_at < query.created_from:
        return False
    if query.created_to is not None and view.created_at >= query.created_to:
        return False
    return query.after is None or view.sort_key < query.after


def _day_may_match(query: ListQuery, day: date) -> bool:
    """False if no recording started on this UTC day can be in the listing."""
    if query.created_from is not None and day < query.created_from.date():
        return False
    if query.created_to is not None and day > query.created_to.date():
        return False
    return query.after is None or day <= query.after[0].date()


# -- handlers -----------------------------------------------------------------------------------


async def list_recordings(request: web.Request) -> web.Response:
    """GET /v1/recordings: newest first, filtered by creation time, paginated by cursor."""
    query = parse_list_query(request.query)
    page, next_cursor = await collect_page(request.app, query)
    return web.json_response(
        {"items": [build_list_item(view) for view in page], "next_cursor": next_cursor}
    )


async def get_recording(request: web.Request) -> web.Response:
    """GET /v1/recordings/{id}: the manifest with its status, or what is known of a live call."""
    view = await find_recording(request.app, request.match_info["call_id"])
    return web.json_response(build_detail(view))


async def get_audio(request: web.Request) -> web.StreamResponse:
    """GET /v1/recordings/{id}/audio: one channel file, ranged, or a redirect to a signed URL."""
    channel = request.query.get("channel", "stereo")
    role = CHANNEL_ROLES.get(channel)
    if role is None:
        raise ApiError(
            400,
            "bad_request",
            f"query parameter channel must be one of {', '.join(CHANNEL_ROLES)}",
        )
    call_id = request.match_info["call_id"]
    view = await find_recording(request.app, call_id)
    if not view.is_stored or view.manifest is None:
        raise ApiError(
            409, "conflict", f"recording {call_id} is {view.status.value}: its audio is not stored"
        )
    entry = _file_with_role(view.manifest, role)
    etag = f'"{entry.sha256}"'  # the content's SHA-256: a strong validator (RFC 9110 8.8.3)
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if_none_match = _entity_tags(request.headers.get("If-None-Match"))
    if etag in if_none_match or "*" in if_none_match:
        return web.Response(status=304, headers=headers)
    store = request.app[STORE]
    assert entry.key is not None  # _file_with_role only returns stored files
    url = await store.signed_url(entry.key, expires_s=request.app[SETTINGS].signed_url_expiry_s)
    if url is not None:
        # 307 keeps the method (HEAD stays HEAD); the client repeats its Range to the store.
        return web.Response(status=307, headers={"Location": url, "Cache-Control": "no-store"})
    size_bytes = (await store.stat(entry.key)).size_bytes
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # RFC 9110 section 13.1.5: changed (or a date): send it all
    byte_range = compute_byte_range(range_header, size_bytes)
    if byte_range.outcome is RangeOutcome.UNSATISFIABLE:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the requested range is outside the {size_bytes} bytes of {channel} audio",
            headers={"Content-Range": f"bytes */{size_bytes}"},
        )
    filename = entry.key.rsplit("/", 1)[-1]
    headers |= {
        "Content-Type": OGG_OPUS_CONTENT_TYPE,
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    status = 200
    if byte_range.outcome is RangeOutcome.PARTIAL:
        status = 206
        last = byte_range.end - 1
        headers["Content-Range"] = f"bytes {byte_range.start}-{last}/{size_bytes}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = byte_range.end - byte_range.start
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response
    await _stream(request, response, store.iter_range(entry.key, byte_range.start, byte_range.end))
    return response


async def delete_recording(request: web.Request) -> web.Response:
    """DELETE /v1/recordings/{id}: every audio object first, the manifest last; 204."""
    call_id = request.match_info["call_id"]
    view = await find_recording(request.app, call_id)
    if not view.is_stored or view.manifest is None or view.manifest_key is None:
        raise ApiError(
            409,
            "conflict",
            f"recording {call_id} is {view.status.value}: only stored recordings can be deleted",
        )
    store = request.app[STORE]
    # Audio first, manifest last: a crash in between leaves a manifest whose files are (partly)
    # gone, still listed and deletable again, never audio that nothing points to. The seed's
    # names are deleted too, so files of an earlier failed upload do not stay behind.
    standard = build_recording_keys(call_id, view.created_at)
    audio_keys = {standard.left, standard.right, standard.merged}
    audio_keys |= {entry.key for entry in view.manifest.files if entry.key is not None}
    audio_keys.discard(view.manifest_key)
    for key in sorted(audio_keys):
        await _delete_if_present(store, key)
    await _delete_if_present(store, view.manifest_key)
    request.app[RECORDING_INDEX].forget(call_id)
    log.info("recording.deleted", call_id=call_id, objects=len(audio_keys) + 1)
    return web.Response(status=204)


def _file_with_role(manifest: Manifest, role: str) -> FileEntry:
    """The stored file of one role, or a 404 ApiError."""
    for entry in manifest.files:
        if entry.role == role and entry.key is not None:
            return entry
    raise ApiError(404, "not_found", f"recording {manifest.call_id} has no {role} file")


def _entity_tags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header (RFC 9110 section 13.1.2), weakness dropped."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


async def _stream(
    request: web.Request, response: web.StreamResponse, chunks: AsyncIterator[bytes]
) -> None:
    """Send chunks as they are read; storage errors before the first byte stay JSON errors."""
    try:
        first = await anext(chunks, b"")
        await response.prepare(request)
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()  # closes the file (or stops GCS reads) if the client left


async def _delete_if_present(store: ObjectStore, key: str) -> None:
    """Delete one object; one already gone is fine (a retried or partial delete)."""
    try:
        await store.delete(key)
    except ObjectNotFoundError:
        return


class _RecorderClock:
    """The recorder's current clock, so that a clock injected into the recorder applies here too."""

    def __init__(self, recorder: Recorder) -> None:
        """Follow `recorder.clock`."""
        self._recorder = recorder

    def monotonic_ns(self) -> int:
        """The recorder's monotonic nanoseconds."""
        return self._recorder.clock.monotonic_ns()

    def wall_ns(self) -> int:
        """The recorder's UTC epoch nanoseconds."""
        return self._recorder.clock.wall_ns()


async def _create_index(app: web.Application) -> None:
    """Build the recording index once the store and the recorder exist."""
    app[RECORDING_INDEX] = RecordingIndex(app[STORE], _RecorderClock(app[RECORDER]))


def add_routes(app: web.Application) -> None:
    """Register the recordings routes (the index is built at start-up, after cleanup_ctx)."""
    # on_startup handlers run after every cleanup_ctx start-up step (aiohttp runs cleanup_ctx
    # first), so the store and recorder are there whatever order modules register in.
    app.on_startup.append(_create_index)
    app.router.add_get(RECORDINGS_PATH, list_recordings)
    app.router.add_get(RECORDINGS_PATH + "/{call_id}", get_recording)
    app.router.add_get(RECORDINGS_PATH + "/{call_id}/audio", get_audio)
    app.router.add_delete(RECORDINGS_PATH + "/{call_id}", delete_recording)
