"""GET /v1/recordings queries: validated parameters, keyset cursors, and which views match."""

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from mediaserver.catalog.recording_view import RecordingView, format_time, parse_time
from mediaserver.errors import RecordingQueryError
from mediaserver.recording.call import CallStatus

DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 500
MAX_TEXT_LENGTH = 200
MAX_END_REASON_LENGTH = 64
# A '+' in an unencoded query string arrives as a space: "...T10:00:00 00:00" meant "+00:00".
_DECODED_PLUS_OFFSET = re.compile(r" ([0-9]{2}(?::?[0-9]{2})?)$")
_END_REASON_PATTERN = re.compile(rf"[a-z0-9_]{{1,{MAX_END_REASON_LENGTH}}}")
_DURATION_PATTERN = re.compile(r"[0-9]{1,7}(\.[0-9]{1,3})?")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A validated GET /v1/recordings query: created_at in [created_from, created_to), filters."""

    created_from: datetime | None
    created_to: datetime | None
    after: tuple[datetime, str] | None  # the last (created_at, call_id) of the previous page
    limit: int
    statuses: frozenset[CallStatus] | None = None
    end_reason: str | None = None
    text: str | None = None  # matched, case-insensitively, against the call id and metadata
    min_duration_ms: float | None = None


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """Validate the list query, raising a RecordingQueryError that names the bad parameter."""
    created_from = _parse_time_param(params, "from")
    created_to = _parse_time_param(params, "to")
    if created_from is not None and created_to is not None and created_from > created_to:
        raise RecordingQueryError("query parameter from must not be after to")
    limit_text = params.get("limit")
    limit = DEFAULT_PAGE_LIMIT
    if limit_text is not None:
        if (
            not re.fullmatch(r"[0-9]{1,3}", limit_text)
            or not 1 <= int(limit_text) <= MAX_PAGE_LIMIT
        ):
            raise RecordingQueryError(
                f"query parameter limit must be an integer from 1 to {MAX_PAGE_LIMIT}"
            )
        limit = int(limit_text)
    cursor = params.get("cursor")
    after = None if cursor is None else parse_cursor(cursor)
    return ListQuery(
        created_from,
        created_to,
        after,
        limit,
        statuses=_parse_statuses(params.get("status")),
        end_reason=_parse_end_reason(params.get("end_reason")),
        text=_parse_text(params.get("q")),
        min_duration_ms=_parse_min_duration(params.get("min_duration_s")),
    )


def build_cursor(created_at: datetime, call_id: str) -> str:
    """An opaque cursor naming the position after one item."""
    raw = json.dumps([format_time(created_at), call_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """Read a cursor back, raising a RecordingQueryError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_text, call_id = json.loads(raw)
        if not isinstance(created_text, str) or not isinstance(call_id, str):
            raise TypeError(cursor)
        return parse_time(created_text), call_id
    except (binascii.Error, ValueError, TypeError):
        raise RecordingQueryError(
            "query parameter cursor is not a cursor this API returned"
        ) from None


def accepts(query: ListQuery, view: RecordingView) -> bool:
    """True if a recording belongs in the listing the query asks for."""
    if query.created_from is not None and view.created_at < query.created_from:
        return False
    if query.created_to is not None and view.created_at >= query.created_to:
        return False
    if query.after is not None and view.sort_key >= query.after:
        return False
    if query.statuses is not None and view.status not in query.statuses:
        return False
    if query.end_reason is not None and view.end_reason != query.end_reason:
        return False
    if query.min_duration_ms is not None and (view.duration_ms or 0.0) < query.min_duration_ms:
        return False
    return query.text is None or query.text in _searchable_text(view)


def day_may_match(query: ListQuery, day: date) -> bool:
    """False if no recording started on this UTC day can be in the listing."""
    if query.created_from is not None and day < query.created_from.date():
        return False
    if query.created_to is not None and day > query.created_to.date():
        return False
    return query.after is None or day <= query.after[0].date()


def _searchable_text(view: RecordingView) -> str:
    """What the text filter looks in: the call id and the metadata, keys and values, lower case."""
    metadata = json.dumps(view.metadata, ensure_ascii=False, sort_keys=True)
    return f"{view.call_id}\n{metadata}".casefold()


def _parse_time_param(params: Mapping[str, str], name: str) -> datetime | None:
    """One optional time parameter."""
    text = params.get(name)
    if text is None:
        return None
    try:
        return parse_time(_DECODED_PLUS_OFFSET.sub(r"+\1", text.strip()))
    except ValueError:
        raise RecordingQueryError(
            f"query parameter {name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z"
        ) from None


def _parse_statuses(text: str | None) -> frozenset[CallStatus] | None:
    """?status=stored,recovered: any of the named statuses."""
    if text is None or not text.strip():
        return None
    statuses = set()
    for name in text.split(","):
        try:
            statuses.add(CallStatus(name.strip()))
        except ValueError:
            choices = ", ".join(status.value for status in CallStatus)
            raise RecordingQueryError(
                f"query parameter status must be a comma-separated list of {choices}"
            ) from None
    return frozenset(statuses)


def _parse_end_reason(text: str | None) -> str | None:
    """?end_reason=hangup: one end reason, as the manifest writes it."""
    if text is None or not text.strip():
        return None
    if not _END_REASON_PATTERN.fullmatch(text.strip()):
        raise RecordingQueryError(
            "query parameter end_reason must be an end reason such as hangup or expired "
            "(lower case letters, digits, _)"
        )
    return text.strip()


def _parse_text(text: str | None) -> str | None:
    """?q=: free text, matched case-insensitively."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_TEXT_LENGTH:
        raise RecordingQueryError(
            f"query parameter q must be at most {MAX_TEXT_LENGTH} characters, got {len(text)}"
        )
    return text.strip().casefold()


def _parse_min_duration(text: str | None) -> float | None:
    """?min_duration_s=30: recordings at least this long, in milliseconds."""
    if text is None or not text.strip():
        return None
    if not _DURATION_PATTERN.fullmatch(text.strip()):
        raise RecordingQueryError(
            "query parameter min_duration_s must be a number of seconds such as 30 or 2.5"
        )
    value_ms = float(text) * 1000
    assert math.isfinite(value_ms)  # at most 7 digits and 3 decimals
    return value_ms
