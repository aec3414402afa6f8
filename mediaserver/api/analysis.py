"""Analysis and transcript API: the documents post-call jobs produce, and their status."""

# GET answers by the job's state in the recording's manifest:
#   completed -> 200 with the document; queued/processing -> 202 {"status"}; failed -> 200
#   {"status": "failed", "error"}; a recording not stored yet -> 202 {"status": "queued"} when its
#   jobs will be queued once it is; no such job -> 404; unknown recording -> 404.

import re
from typing import Any

from aiohttp import web

from mediaserver.api.body import read_json_object
from mediaserver.api.errors import ApiError
from mediaserver.api.keys import JOBS, RECORDER, RECORDING_INDEX, SETTINGS, STORE
from mediaserver.api.recording_lookup import find_recording
from mediaserver.catalog.recording_view import RECORDINGS_PATH, RecordingView
from mediaserver.errors import ObjectNotFoundError
from mediaserver.excerpt import excerpt
from mediaserver.jobs.plan import DEFAULT_MODELS, build_job_plan, build_transcript_params
from mediaserver.jobs.runner import build_keys
from mediaserver.jobs.state import JobKind, JobState, JobStatus, parse_job_states
from mediaserver.recording.call import CallStatus
from mediaserver.settings import Settings
from mediaserver.storage_backends.keys import JSON_CONTENT_TYPE, WEBVTT_CONTENT_TYPE

TRANSCRIPT_FORMATS = ("json", "vtt")
REQUESTABLE_BACKENDS = ("pocketsphinx", "openai")
_LANGUAGE_PATTERN = re.compile(r"[a-z]{2,3}(-[A-Za-z]{2,4})?")
_MODEL_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,100}")
_NOT_STORED_YET = frozenset({CallStatus.RECORDING, CallStatus.FINALIZING, CallStatus.UPLOAD_FAILED})


def build_job_params(settings: Settings, body: dict[str, Any]) -> dict[str, str]:
    """A requested transcript's backend, model and language: the request's, else the settings'."""
    configured = build_transcript_params(settings)
    default_backend = configured["backend"]
    if default_backend not in REQUESTABLE_BACKENDS:  # "none" only means "not automatically"
        default_backend = REQUESTABLE_BACKENDS[0]
    backend = body.get("backend", default_backend)
    if backend not in REQUESTABLE_BACKENDS:
        raise ApiError(
            400, "bad_request", f"backend must be one of {', '.join(REQUESTABLE_BACKENDS)}"
        )
    default_model = (
        configured["model"] if backend == configured["backend"] else DEFAULT_MODELS[backend]
    )
    model = body.get("model", default_model)
    if not isinstance(model, str) or not _MODEL_PATTERN.fullmatch(model):
        raise ApiError(400, "bad_request", "model must be 1-100 characters of [A-Za-z0-9._:/-]")
    language = body.get("language", configured["language"])
    if not isinstance(language, str) or (language and not _LANGUAGE_PATTERN.fullmatch(language)):
        raise ApiError(400, "bad_request", "language must be a code such as en or en-US")
    return {"backend": backend, "model": model, "language": language}


def is_planned(settings: Settings, kind: JobKind) -> bool:
    """True if every stored recording gets a job of this kind."""
    return any(planned is kind for planned, _ in build_job_plan(settings))


async def get_analysis(request: web.Request) -> web.StreamResponse:
    """GET /v1/recordings/{id}/analysis."""
    return await _answer(request, JobKind.ANALYSIS, "json")


async def get_transcript(request: web.Request) -> web.StreamResponse:
    """GET /v1/recordings/{id}/transcript[?format=json|vtt]."""
    answer_format = request.query.get("format", "json")
    if answer_format not in TRANSCRIPT_FORMATS:
        raise ApiError(
            400,
            "bad_request",
            f"query parameter format must be json or vtt, got {excerpt(answer_format, 20)}",
        )
    return await _answer(request, JobKind.TRANSCRIPT, answer_format)


async def post_transcript(request: web.Request) -> web.Response:
    """POST /v1/recordings/{id}/transcript {backend?, model?, language?}: transcribe again."""
    body = await read_json_object(request)
    unknown = set(body) - {"backend", "model", "language"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    params = build_job_params(request.app[SETTINGS], body)
    return await _request_job(request, JobKind.TRANSCRIPT, params)


async def post_analysis(request: web.Request) -> web.Response:
    """POST /v1/recordings/{id}/analysis: analyse again (after changing the VAD settings, say)."""
    body = await read_json_object(request)
    if body:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(body))}")
    return await _request_job(request, JobKind.ANALYSIS, {})


async def _request_job(request: web.Request, kind: JobKind, params: dict[str, str]) -> web.Response:
    """Queue a job for a stored recording; 202 with its state."""
    call_id = request.match_info["call_id"]
    view = await find_recording(request.app[RECORDER], request.app[RECORDING_INDEX], call_id)
    _refuse_empty(view)
    if not view.is_stored or view.manifest_key is None:
        raise ApiError(
            409, "conflict", f"recording {call_id} is {view.status.value}: it is not stored yet"
        )
    state = await request.app[JOBS].request(
        call_id, view.manifest_key, kind, params, refuse_pending=True
    )
    return web.json_response(
        _pending_body(call_id, kind, state), status=202, headers={"Location": _path(call_id, kind)}
    )


def _refuse_empty(view: RecordingView) -> None:
    """A call that carried no media has nothing to analyse or transcribe (404)."""
    if view.status is CallStatus.EMPTY:
        raise ApiError(
            404,
            "not_found",
            f"recording {view.call_id} is empty: the call carried no media to analyse",
        )


async def _answer(request: web.Request, kind: JobKind, answer_format: str) -> web.StreamResponse:
    """The document, or the job's status, by the rules in the module comment."""
    call_id = request.match_info["call_id"]
    view = await find_recording(request.app[RECORDER], request.app[RECORDING_INDEX], call_id)
    settings = request.app[SETTINGS]
    _refuse_empty(view)
    not_queued_yet = view.status in _NOT_STORED_YET or request.app[JOBS].is_queueing(call_id)
    if not_queued_yet and is_planned(settings, kind):
        return web.json_response(
            {"call_id": call_id, "status": JobStatus.QUEUED.value, "recording": view.status.value},
            status=202,
        )
    state = _state_of(view, kind)
    if state is None:
        raise ApiError(
            404,
            "not_found",
            f"recording {call_id} has no {kind.value}"
            + ("" if kind is JobKind.ANALYSIS else ": POST to this URL to make one"),
        )
    if state.status.is_pending:
        return web.json_response(_pending_body(call_id, kind, state), status=202)
    if state.status is JobStatus.FAILED:
        body = _pending_body(call_id, kind, state)
        body["error"] = state.error.to_dict() if state.error else {"code": "failed", "message": ""}
        return web.json_response(body)
    assert view.manifest is not None
    keys = build_keys(view.manifest)
    key = {
        (JobKind.ANALYSIS, "json"): keys.analysis,
        (JobKind.TRANSCRIPT, "json"): keys.transcript,
        (JobKind.TRANSCRIPT, "vtt"): keys.transcript_vtt,
    }[(kind, answer_format)]
    try:
        data = await request.app[STORE].get_range(key)
    except ObjectNotFoundError:
        raise ApiError(
            404, "not_found", f"the {kind.value} of recording {call_id} is missing from storage"
        ) from None
    content_type = WEBVTT_CONTENT_TYPE if answer_format == "vtt" else JSON_CONTENT_TYPE
    return web.Response(body=data, content_type=content_type, charset="utf-8")


def _state_of(view: RecordingView, kind: JobKind) -> JobState | None:
    """The job's state in a recording's manifest."""
    if view.manifest is None:
        return None
    try:
        return parse_job_states(view.manifest.jobs).get(kind)
    except (KeyError, ValueError, TypeError):
        raise ApiError(
            500, "manifest_malformed", f"the job states of {view.call_id} are unreadable"
        ) from None


def _pending_body(call_id: str, kind: JobKind, state: JobState) -> dict[str, Any]:
    """What a job's status answer says."""
    return {
        "call_id": call_id,
        "kind": kind.value,
        "status": state.status.value,
        "job_id": state.job_id,
        "updated_at": state.updated_at,
        "attempts": state.attempts,
        "params": state.params,
        "links": {"self": _path(call_id, kind)},
    }


def _path(call_id: str, kind: JobKind) -> str:
    """Where a recording's document of this kind is served."""
    return f"{RECORDINGS_PATH}/{call_id}/{kind.value}"


def add_routes(app: web.Application) -> None:
    """Register the analysis and transcript routes."""
    base = RECORDINGS_PATH + "/{call_id}"
    app.router.add_get(base + "/analysis", get_analysis)
    app.router.add_post(base + "/analysis", post_analysis)
    app.router.add_get(base + "/transcript", get_transcript)
    app.router.add_post(base + "/transcript", post_transcript)
