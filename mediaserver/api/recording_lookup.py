"""Finding recordings wherever they are: live in the recorder, in the spool, or in the store."""

# Where a recording is looked for, first match wins (read in this order so that a call moving on
# while the request runs is still seen: the spool is released only after the manifest is stored):
# 1. the recorder's live calls: status "recording", with what is known so far;
# 2. the spool, `<spool_root>/<id>/`: its `manifest.json` when that says "upload_failed" (the files
#    are kept there and the sweeper retries the upload), otherwise "finalizing" (being built or
#    uploaded; a spool left by a crash also shows as "finalizing" until start-up recovery ends);
# 3. the store, `recordings/YYYY/MM/DD/conversation_{id}_manifest.json` (the recorder writes the
#    manifest last, so a manifest means every file it lists was stored).
#
# Listing is newest first by (created_at, call_id), with a keyset cursor (stable when recordings
# are added or removed between pages). It lists the bucket once, then reads manifests day by day
# from the newest date prefix, only as many days as the page needs; parsed manifests are cached
# by (key, size, update time), so later pages and repeated listings do not read them again.

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from datetime import date

from mediaserver.api.errors import ApiError
from mediaserver.api.recording_index import RecordingIndex, StoredEntry
from mediaserver.catalog.list_query import ListQuery, accepts, build_cursor, day_may_match
from mediaserver.catalog.recording_view import (
    RecordingView,
    build_live_view,
    build_stored_view,
    parse_time,
)
from mediaserver.errors import JournalError, ObjectNotFoundError, UnknownCallError
from mediaserver.recorder import CALL_ID_PATTERN, Recorder
from mediaserver.recording.call import CallStatus
from mediaserver.recording.manifest import format_utc
from mediaserver.recording.spool import CallSpool, Spool

MANIFEST_FETCH_CONCURRENCY = 8


async def find_recording(recorder: Recorder, index: RecordingIndex, call_id: str) -> RecordingView:
    """The recording with this id, live, spooled or stored; a 404 ApiError if there is none."""
    not_found = ApiError(404, "not_found", f"no recording {call_id}")
    if not CALL_ID_PATTERN.fullmatch(call_id):
        raise not_found  # cannot exist: no call id has this form
    try:
        call = recorder.get_call(call_id)
    except UnknownCallError:
        pass
    else:
        return build_live_view(call, recorder.clock.monotonic_ns())
    spooled = await asyncio.to_thread(read_spool_view, recorder.spool.call(call_id))
    if spooled is not None and spooled.call_id == call_id:
        return spooled
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
    recorder: Recorder, index: RecordingIndex, query: ListQuery
) -> tuple[list[RecordingView], str | None]:
    """One page of recordings, newest first, and the cursor of the next page (None at the end)."""
    # Live calls, then spools, then the store: a call moving on meanwhile is still seen once.
    now_ns = recorder.clock.monotonic_ns()
    known = {call.call_id: build_live_view(call, now_ns) for call in recorder.live_calls()}
    spooled = await asyncio.to_thread(read_spool_views, recorder.spool, set(known))
    known.update({view.call_id: view for view in spooled})
    stored = await index.list_stored()
    accepted = [view for view in known.values() if accepts(query, view)]
    pending: defaultdict[date, list[StoredEntry]] = defaultdict(list)
    for entry in stored:
        if entry.call_id not in known and day_may_match(query, entry.day):
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
        accepted += [view for view in views if view is not None and accepts(query, view)]
        # Every item not read yet started before `day`: stop once the page is full of later ones.
        if sum(1 for view in accepted if view.created_at.date() >= day) >= wanted:
            break
    accepted.sort(key=lambda view: view.sort_key, reverse=True)
    page = accepted[:wanted]
    if len(page) < wanted:
        return page, None
    last = page[query.limit - 1]
    return page[: query.limit], build_cursor(last.created_at, last.call_id)


def read_spool_view(spool: CallSpool) -> RecordingView | None:
    """What a call's spool says about it (blocking: run in a thread)."""
    try:
        description = spool.read_description()
    except (OSError, JournalError):
        return None  # being released, or not a call's spool
    try:
        manifest = spool.read_manifest()  # None: not built yet, or being rewritten right now
    except OSError:
        manifest = None
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


def read_spool_views(spool: Spool, skip: Iterable[str]) -> list[RecordingView]:
    """Every spool's view except the ids in `skip` (blocking: run in a thread)."""
    skipped = set(skip)
    try:
        spools = spool.list_calls()
    except OSError:
        return []
    views = []
    for call_spool in spools:
        name = call_spool.call_id
        if name in skipped or not CALL_ID_PATTERN.fullmatch(name):
            continue
        view = read_spool_view(call_spool)
        if view is not None and view.call_id == name:
            views.append(view)
    return views
