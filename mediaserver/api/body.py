"""Request bodies: every handler reads JSON and text bodies here, within limits, or gets a 4xx."""

# json.loads alone is not safe on untrusted input: 5,000 nested brackets raise RecursionError,
# a 5,000-digit integer raises ValueError (CPython's int_max_str_digits), and 1e999, NaN and
# Infinity parse to floats that json.dumps later writes as the invalid JSON tokens `Infinity` and
# `NaN`. Each of those is answered here with a 400 that says what was wrong, before or while
# parsing, in time linear in the body's size (which aiohttp already bounds by max_body_bytes).

import json
import math
import re
from typing import Any

from aiohttp import web

from mediaserver.api.errors import ApiError

JSON = "application/json"
# RFC 8259 §8.1: JSON exchanged between systems is UTF-8; application/json and application/sdp
# define no charset parameter, so only the names of UTF-8 (and its subset US-ASCII) are accepted.
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
MAX_JSON_DEPTH = 32
# RFC 7493 §2.2 (I-JSON): integers beyond ±(2**53 - 1) are not exact in most JSON readers
# (browsers among them), so a larger one would be silently rounded by whoever reads it back.
MAX_JSON_INTEGER = 2**53 - 1
_MAX_INTEGER_CHARS = len(str(MAX_JSON_INTEGER)) + 1  # a sign, then at most 16 digits
_SHOWN_CHARS = 24  # how much of an offending token an error message quotes

# A JSON string (escapes included) or, unterminated, everything up to the end: never backtracks,
# so removing strings before counting brackets stays linear in the body's size.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# A \uD800-\uDFFF escape: half of a surrogate pair, or a lone surrogate (checked after parsing).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _JsonLimitError(ValueError):
    """A JSON token this API refuses (raised from json.loads' hooks)."""


def check_json_depth(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `max_depth` before json.loads recurses into it."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    # Each pass removes the innermost pairs, one level of nesting: balanced brackets of depth d
    # are gone after d passes, each a C-speed scan.
    for _ in range(max_depth):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    # What is left is a pair nested deeper still, or brackets that never close. A few unclosed
    # ones are a syntax error that json.loads describes better (its recursion stays within
    # twice the limit); many would recurse as deep as they go.
    opened = brackets.count(b"[") + brackets.count(b"{")
    if b"[]" in brackets or b"{}" in brackets or opened > max_depth:
        raise ApiError(
            400,
            "bad_request",
            f"body is not acceptable JSON: it nests deeper than {max_depth} levels",
        )


def _shown(token: str) -> str:
    """A token cut short for an error message."""
    return token if len(token) <= _SHOWN_CHARS else f"{token[:_SHOWN_CHARS]}..."


def _parse_integer(token: str) -> int:
    """An integer token within the I-JSON range (checked by length before any conversion)."""
    value = int(token) if len(token) <= _MAX_INTEGER_CHARS else None
    if value is None or abs(value) > MAX_JSON_INTEGER:
        raise _JsonLimitError(
            f"number {_shown(token)} is outside ±{MAX_JSON_INTEGER} (RFC 7493 §2.2);"
            " send larger values as strings"
        )
    return value


def _parse_float(token: str) -> float:
    """A finite number token (1e999 would become infinity)."""
    value = float(token)
    if not math.isfinite(value):
        raise _JsonLimitError(f"number {_shown(token)} is too large to be finite")
    return value


def _refuse_constant(token: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259 §6)."""
    raise _JsonLimitError(f"{token} is not a JSON number (RFC 8259 §6)")


def parse_json(data: bytes) -> Any:
    """A UTF-8 JSON document within this API's limits; ApiError 400 that says why otherwise."""
    text = decode_utf8(data, "JSON")
    check_json_depth(data)
    try:
        value = json.loads(
            text,
            parse_int=_parse_integer,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except _JsonLimitError as exc:
        raise ApiError(400, "bad_request", f"body is not acceptable JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "bad_request",
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    if _SURROGATE_ESCAPE.search(data):
        _check_no_lone_surrogates(value)
    return value


def _check_no_lone_surrogates(value: Any) -> None:
    """Refuse strings with unpaired surrogates (RFC 7493 §2.1): no UTF-8 writer can store them."""
    # json.loads joins escaped pairs into one code point, so only lone halves fail to encode.
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "bad_request",
            "body is not acceptable JSON:"
            " a string has an unpaired surrogate escape (RFC 7493 §2.1)",
        ) from None


def decode_utf8(data: bytes, what: str) -> str:
    """Bytes as UTF-8 text; ApiError 400 naming the first bad byte otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            "bad_request",
            f"{what} body is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
        ) from None


def check_content_type(request: web.Request, media_type: str) -> None:
    """Refuse (415) another media type, or a charset other than UTF-8."""
    if request.content_type != media_type:
        raise ApiError(415, "unsupported_media_type", f"send the body as {media_type}")
    charset = request.charset
    if charset is not None and charset.lower() not in UTF8_CHARSETS:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{media_type} bodies must be UTF-8; charset {_shown(charset)} is not supported",
        )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; a clear 415/400 otherwise (an empty body is {})."""
    # body_exists, not can_read_body: a middleware may have read (and cached) it already.
    if not request.body_exists:
        return {}
    check_content_type(request, JSON)
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return body


async def read_text(request: web.Request, media_type: str, what: str) -> str:
    """A text body of `media_type` (e.g. an SDP offer) as UTF-8; a clear 415/400 otherwise."""
    check_content_type(request, media_type)
    return decode_utf8(await request.read(), what)
