"""The audit trail of recordings' access: the middleware that records it, GET /v1/audit."""

# Every request to a recording route that got past authentication (refusals for a missing scope
# included) becomes one event once its answer is ready: who (the token's name), what (the action
# of the route), which recording, from which address, and the status answered. The event is made
# durable before a buffered answer leaves; if it cannot be, that answer becomes 503
# audit_unavailable. A streamed download has been sent by then: its event, if it cannot be
# written, goes to the server log as audit.event_lost instead.

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from mediaserver.api.auth import PRINCIPAL
from mediaserver.api.errors import ApiError, Handler, error_response
from mediaserver.api.keys import AUDIT
from mediaserver.api.route_scopes import route_template
from mediaserver.audit.audit_log import MAX_QUERY_LIMIT
from mediaserver.audit.event import AuditQuery
from mediaserver.catalog.recording_view import parse_time
from mediaserver.errors import AuditError

log = structlog.get_logger(__name__)

AUDIT_PATH = "/v1/audit"
# What a handler adds to its request's event (a hold's reason, say).
AUDIT_DETAILS = web.RequestKey("audit_details", dict[str, Any])

_RECORDING = "/v1/recordings/{call_id}"
AUDITED_ACTIONS = {
    ("GET", "/v1/recordings"): "recordings.list",
    ("GET", _RECORDING): "recording.read",
    ("GET", _RECORDING + "/audio"): "recording.download",
    ("GET", _RECORDING + "/peaks"): "recording.peaks_read",
    ("GET", _RECORDING + "/analysis"): "analysis.read",
    ("POST", _RECORDING + "/analysis"): "analysis.requested",
    ("GET", _RECORDING + "/transcript"): "transcript.read",
    ("POST", _RECORDING + "/transcript"): "transcript.requested",
    ("DELETE", _RECORDING): "recording.delete",
    ("PUT", _RECORDING + "/hold"): "recording.hold",
    ("DELETE", _RECORDING + "/hold"): "recording.release",
    ("GET", AUDIT_PATH): "audit.read",
}
_MAX_DETAIL_CHARS = 200
_CURSOR_CHARS = 120
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def find_action(request: web.Request) -> str | None:
    """The audited action of a request's route, or None when the route is not audited."""
    method = "GET" if request.method == "HEAD" else request.method
    return AUDITED_ACTIONS.get((method, route_template(request) or ""))


def collect_details(request: web.Request) -> dict[str, Any]:
    """What else the event says: the query, the byte range, the handler's own details."""
    details: dict[str, Any] = {}
    if request.query:
        details["query"] = {k: v[:_MAX_DETAIL_CHARS] for k, v in request.query.items()}
    if "Range" in request.headers:
        details["range"] = request.headers["Range"][:_MAX_DETAIL_CHARS]
    if request.method == "HEAD":
        details["method"] = "HEAD"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:
        details["forwarded_for"] = forwarded[:_MAX_DETAIL_CHARS]
    details.update(request.get(AUDIT_DETAILS, {}))
    return details


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record an event for each answered request to an audited route."""
    action = find_action(request)
    if action is None:
        return await handler(request)
    response = await handler(request)
    principal = request.get(PRINCIPAL)
    audit = request.app.get(AUDIT)
    if principal is None or audit is None:
        return response  # not signed in (401): nothing was disclosed to anyone known
    try:
        await audit.record(
            actor=principal.name,
            action=action,
            recording_id=request.match_info.get("call_id"),
            remote=request.remote,
            status=response.status,
            details=collect_details(request),
        )
    except AuditError as exc:
        if response.prepared:
            log.error(
                "audit.event_lost",
                actor=principal.name,
                action=action,
                recording_id=request.match_info.get("call_id"),
                remote=request.remote,
                status=response.status,
                error=str(exc),
            )
            return response
        return error_response(503, "audit_unavailable", str(exc))
    return response


async def get_audit(request: web.Request) -> web.Response:
    """GET /v1/audit?recording_id=&from=&to=&cursor=&limit=: events, oldest first."""
    query = parse_audit_query(request.query)
    events, next_cursor = await request.app[AUDIT].query(query)
    return web.json_response(
        {"events": [event.to_dict() for event in events], "next_cursor": next_cursor}
    )


def parse_audit_query(params: Any) -> AuditQuery:
    """The query's parameters, each checked (a 400 names the bad one)."""
    unknown = set(params) - {"recording_id", "from", "to", "cursor", "limit"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown parameter(s): {', '.join(sorted(unknown))}")
    limit_text = params.get("limit", "1000")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_QUERY_LIMIT:
        raise ApiError(400, "bad_request", f"limit must be 1..{MAX_QUERY_LIMIT}")
    cursor = params.get("cursor")
    if cursor is not None and (
        len(cursor) > _CURSOR_CHARS or not cursor[:19].isdigit() or not cursor.isascii()
    ):
        raise ApiError(400, "bad_request", "cursor must be a next_cursor this API returned")
    recording_id = params.get("recording_id") or None
    return AuditQuery(
        from_ns=_parse_ns(params.get("from"), "from"),
        to_ns=_parse_ns(params.get("to"), "to"),
        recording_id=recording_id,
        after_id=cursor,
        limit=int(limit_text),
    )


def _parse_ns(value: str | None, name: str) -> int | None:
    """An ISO 8601 time (UTC if no offset) as epoch ns, or None when absent."""
    if value is None or value == "":
        return None
    try:
        moment: datetime = parse_time(value)
    except ValueError:
        raise ApiError(
            400, "bad_request", f"{name} must be an ISO 8601 time such as 2026-11-22T10:00:00Z"
        ) from None
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def add_routes(app: web.Application) -> None:
    """Register the audit log's route."""
    app.router.add_get(AUDIT_PATH, get_audit)
