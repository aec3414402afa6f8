"""HTTP byte ranges and entity tags (RFC 9110 sections 13 and 14), as pure functions."""

import re
from dataclasses import dataclass
from enum import Enum

# 19 digits hold any int64 offset; longer numbers are ignored with the header instead of being
# handed to int() (CPython refuses to convert strings over 4300 digits).
_RANGE_SPEC_PATTERN = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")


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


def parse_entity_tags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header (RFC 9110 section 13.1.2), weakness dropped."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def build_content_range(byte_range: ByteRange, size_bytes: int) -> str:
    """The Content-Range value of a partial (or unsatisfiable) answer (RFC 9110 section 14.4)."""
    if byte_range.outcome is RangeOutcome.PARTIAL:
        return f"bytes {byte_range.start}-{byte_range.end - 1}/{size_bytes}"
    return f"bytes */{size_bytes}"
