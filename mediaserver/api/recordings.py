"""Recordings API handlers: list, describe, stream (HTTP Range), peaks and delete."""

# The parts that decide what to answer are pure (mediaserver.catalog); where a recording is found
# is recording_lookup.py; these handlers only read the request and write the response.

from collections.abc import AsyncGenerator, AsyncIterator

import structlog
from aiohttp import web

from mediaserver.api.errors import ApiError
from mediaserver.api.keys import RECORDER, RECORDING_INDEX, SETTINGS, STORE
from mediaserver.api.lifecycle import compute_view_retention, recording_deleter
from mediaserver.api.recording_index import RecordingIndex
from mediaserver.api.recording_lookup import collect_page, find_recording
from mediaserver.catalog.byte_range import (
    RangeOutcome,
    build_content_range,
    compute_byte_range,
    parse_entity_tags,
)
from mediaserver.catalog.list_query import parse_list_query
from mediaserver.catalog.recording_view import (
    CHANNEL_ROLES,
    PEAKS_ROLE,
    RECORDINGS_PATH,
    RecordingView,
    build_detail,
    build_list_item,
)
from mediaserver.recording.call import CallStatus
from mediaserver.recording.manifest import FileEntry, Manifest
from mediaserver.storage_backends.keys import OGG_OPUS_CONTENT_TYPE

log = structlog.get_logger(__name__)

_FALSE_WORDS = frozenset({"0", "false", "no"})


async def list_recordings(request: web.Request) -> web.Response:
    """GET /v1/recordings: newest first, filtered, paginated by cursor."""
    query = parse_list_query(request.query)
    page, next_cursor = await collect_page(
        request.app[RECORDER], request.app[RECORDING_INDEX], query
    )
    return web.json_response(
        {"items": [build_list_item(view) for view in page], "next_cursor": next_cursor}
    )


async def get_recording(request: web.Request) -> web.Response:
    """GET /v1/recordings/{id}: the manifest with its status, or what is known of a live call."""
    view = await _find(request)
    body = build_detail(view)
    retention = compute_view_retention(request.app, view)
    if retention is not None:
        body["retention"] = retention.to_dict()
    return web.json_response(body)


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
    # ?redirect=0 streams through this server even where the store could sign a URL: a page that
    # routes the audio through Web Audio needs it from its own origin.
    may_redirect = request.query.get("redirect", "1").lower() not in _FALSE_WORDS
    entry = _stored_file(await _find(request), role)
    etag = f'"{entry.sha256}"'  # the content's SHA-256: a strong validator (RFC 9110 8.8.3)
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if _matches(request, etag):
        return web.Response(status=304, headers=headers)
    store = request.app[STORE]
    assert entry.key is not None  # _stored_file only returns stored files
    if may_redirect:
        expiry_s = request.app[SETTINGS].signed_url_expiry_s
        url = await store.signed_url(entry.key, expires_s=expiry_s)
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
            headers={"Content-Range": build_content_range(byte_range, size_bytes)},
        )
    filename = entry.key.rsplit("/", 1)[-1]
    headers |= {
        "Content-Type": OGG_OPUS_CONTENT_TYPE,
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    status = 200
    if byte_range.outcome is RangeOutcome.PARTIAL:
        status = 206
        headers["Content-Range"] = build_content_range(byte_range, size_bytes)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = byte_range.end - byte_range.start
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response
    await _stream(request, response, store.iter_range(entry.key, byte_range.start, byte_range.end))
    return response


async def get_peaks(request: web.Request) -> web.Response:
    """GET /v1/recordings/{id}/peaks: the waveform peaks (BBC audiowaveform JSON, version 2)."""
    view = await _find(request)
    entry = _stored_file(view, PEAKS_ROLE)
    etag = f'"{entry.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _matches(request, etag):
        return web.Response(status=304, headers=headers)
    assert entry.key is not None
    # Served by this server even on GCS: a few hundred KiB at most, fetched by the console's
    # scripts, which a redirect to another origin would subject to that origin's CORS rules.
    body = await request.app[STORE].get_range(entry.key)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def delete_recording(request: web.Request) -> web.Response:
    """DELETE /v1/recordings/{id}: every object first, the manifest last; 204."""
    view = await _find(request)
    call_id = view.call_id
    if not view.is_kept or view.manifest is None or view.manifest_key is None:
        raise ApiError(
            409,
            "conflict",
            f"recording {call_id} is {view.status.value}: only stored recordings can be deleted",
        )
    # Every object, the manifest last, under the recording's lock; 409 while it is held.
    await recording_deleter(request.app).delete(call_id, view.manifest_key)
    return web.Response(status=204)


async def _find(request: web.Request) -> RecordingView:
    """The recording the path names (a 404 ApiError if there is none)."""
    app = request.app
    return await find_recording(app[RECORDER], app[RECORDING_INDEX], request.match_info["call_id"])


def _stored_file(view: RecordingView, role: str) -> FileEntry:
    """The stored file of one role: a 409 while the recording is not stored, 404 without one."""
    if view.status is CallStatus.EMPTY:
        raise ApiError(
            404, "not_found", f"recording {view.call_id} is empty: the call carried no media"
        )
    if not view.is_stored or view.manifest is None:
        raise ApiError(
            409,
            "conflict",
            f"recording {view.call_id} is {view.status.value}: its files are not stored",
        )
    return _file_with_role(view.manifest, role)


def _file_with_role(manifest: Manifest, role: str) -> FileEntry:
    """The stored file of one role, or a 404 ApiError."""
    for entry in manifest.files:
        if entry.role == role and entry.key is not None:
            return entry
    raise ApiError(404, "not_found", f"recording {manifest.call_id} has no {role} file")


def _matches(request: web.Request, etag: str) -> bool:
    """Whether If-None-Match names this entity tag (a 304 then)."""
    tags = parse_entity_tags(request.headers.get("If-None-Match"))
    return etag in tags or "*" in tags


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
    except ConnectionError:  # reset by the peer, or aiohttp's "Connection lost" on a write
        # Players drop a ranged download whenever they seek or have buffered enough: not an error.
        log.debug("recording.audio_client_left", path=request.path)
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()  # closes the file (or stops GCS reads) if the client left


async def _create_index(app: web.Application) -> None:
    """Build the recording index once the store and the recorder exist."""
    app[RECORDING_INDEX] = RecordingIndex(app[STORE], app[RECORDER].clock)


def add_routes(app: web.Application) -> None:
    """Register the recordings routes (the index is built at start-up, after cleanup_ctx)."""
    # on_startup handlers run after every cleanup_ctx start-up step (aiohttp runs cleanup_ctx
    # first), so the store and recorder are there whatever order modules register in.
    app.on_startup.append(_create_index)
    app.router.add_get(RECORDINGS_PATH, list_recordings)
    app.router.add_get(RECORDINGS_PATH + "/{call_id}", get_recording)
    app.router.add_get(RECORDINGS_PATH + "/{call_id}/audio", get_audio)
    app.router.add_get(RECORDINGS_PATH + "/{call_id}/peaks", get_peaks)
    app.router.add_delete(RECORDINGS_PATH + "/{call_id}", delete_recording)
