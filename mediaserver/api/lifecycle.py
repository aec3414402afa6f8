"""A stored recording's lifecycle in the API: its retention, legal holds, the deleter."""

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from mediaserver.api.audit import AUDIT_DETAILS
from mediaserver.api.auth import PRINCIPAL
from mediaserver.api.body import read_json_object
from mediaserver.api.errors import ApiError
from mediaserver.api.keys import GCS_MIRROR, JOBS, RECORDER, RECORDING_INDEX, SETTINGS, STORE
from mediaserver.api.recording_lookup import find_recording
from mediaserver.catalog.recording_view import RECORDINGS_PATH, RecordingView
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.lifecycle.deletion import RecordingDeleter, list_object_keys
from mediaserver.lifecycle.holds import write_hold
from mediaserver.lifecycle.policy import (
    HOLD_REASON_MAX_CHARS,
    Retention,
    build_hold,
    compute_retention,
)
from mediaserver.recording.manifest import Manifest, format_utc


def job_states(app: web.Application) -> JobStateStore:
    """Where manifests are read and rewritten under their recordings' locks."""
    jobs = app.get(JOBS)
    if jobs is not None:
        return jobs.states
    return JobStateStore(app[STORE], app[SETTINGS].jobs_path / "scratch")


def recording_deleter(app: web.Application) -> RecordingDeleter:
    """The one deletion routine, forgetting deleted recordings in the listing's index."""
    index = app.get(RECORDING_INDEX)
    return RecordingDeleter(job_states(app), on_deleted=index.forget if index else None)


def compute_view_retention(app: web.Application, view: RecordingView) -> Retention | None:
    """A stored recording's retention under the current settings (None before it is stored)."""
    if view.manifest is None or not view.is_kept:
        return None
    return compute_retention(
        view.manifest.lifecycle, view.created_at, app[SETTINGS].recording_retention_days
    )


async def put_hold(request: web.Request) -> web.Response:
    """PUT /v1/recordings/{id}/hold {reason?}: keep the recording past its retention."""
    body = await read_json_object(request)
    unknown = set(body) - {"reason"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > HOLD_REASON_MAX_CHARS):
        raise ApiError(
            400, "bad_request", f"reason must be text of at most {HOLD_REASON_MAX_CHARS} characters"
        )
    request[AUDIT_DETAILS] = {"reason": reason}
    now = format_utc(request.app[RECORDER].clock.wall_ns())
    hold = build_hold(request[PRINCIPAL].name, now, reason)
    return await _write_hold(request, hold)


async def delete_hold(request: web.Request) -> web.Response:
    """DELETE /v1/recordings/{id}/hold: release the hold; retention applies again."""
    return await _write_hold(request, None)


async def _write_hold(request: web.Request, hold: dict[str, Any] | None) -> web.Response:
    """Write the hold into the manifest, mirror it into GCS, answer with the retention."""
    app = request.app
    view = await find_recording(app[RECORDER], app[RECORDING_INDEX], request.match_info["call_id"])
    if not view.is_kept or view.manifest_key is None:
        raise ApiError(
            409,
            "conflict",
            f"recording {view.call_id} is {view.status.value}: only stored recordings are held",
        )
    manifest = await write_hold(job_states(app), view.call_id, view.manifest_key, hold)
    if manifest is None:
        raise ApiError(404, "not_found", f"no recording {view.call_id}")
    retention = compute_retention(
        manifest.lifecycle, view.created_at, app[SETTINGS].recording_retention_days
    )
    mirror = app.get(GCS_MIRROR)
    if mirror is not None:
        await mirror.mark(list_object_keys(manifest, view.manifest_key), retention)
    now = datetime.fromtimestamp(app[RECORDER].clock.wall_ns() / 1e9, UTC)
    return web.json_response(_hold_body(manifest, retention, now))


def _hold_body(manifest: Manifest, retention: Retention, now: datetime) -> dict[str, Any]:
    """What a hold request answers: expired means the next sweep deletes it."""
    return {
        "call_id": manifest.call_id,
        "retention": retention.to_dict(),
        "expired": retention.is_expired(now),
    }


def add_routes(app: web.Application) -> None:
    """Register the hold routes."""
    app.router.add_put(RECORDINGS_PATH + "/{call_id}/hold", put_hold)
    app.router.add_delete(RECORDINGS_PATH + "/{call_id}/hold", delete_hold)
