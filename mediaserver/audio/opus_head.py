"""Ogg Opus header packets: OpusHead and OpusTags (RFC 7845 §5)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from mediaserver.errors import OggError

# RFC 7845 §5.1: identification header layout.
OPUS_HEAD_MAGIC = b"OpusHead"
OPUS_HEAD_VERSION = 1
_HEAD = struct.Struct("<8sBBHIhB")
_HEAD_STREAMS = struct.Struct("<BB")
# RFC 7845 §5.1: a major version (upper four bits) other than 0 is incompatible.
_INCOMPATIBLE_VERSION_MASK = 0xF0
# RFC 7845 §5.1.1.1: family 0 is one stream, mono or stereo, with an implied mapping.
MAPPING_FAMILY_RTP = 0
# RFC 7845 §5.1.1.2: family 1 is Vorbis channel order, 1..8 channels, explicit mapping table.
MAPPING_FAMILY_VORBIS = 1
_MAX_VORBIS_CHANNELS = 8
# RFC 7845 §5.1.1: a mapping table entry of 255 is a silent channel.
SILENT_CHANNEL = 255

# RFC 7845 §5.2: comment header layout.
OPUS_TAGS_MAGIC = b"OpusTags"
_U32 = struct.Struct("<I")

# RFC 7845 §5.1: the sample rate of the original input; 48 kHz is what the decoder outputs anyway.
DEFAULT_INPUT_SAMPLE_RATE_HZ = 48_000


@dataclass(frozen=True, slots=True)
class OpusHead:
    """The fields of an OpusHead packet; family 0 fills the implied stream counts and mapping."""

    channel_count: int = 1
    pre_skip_samples: int = 0
    input_sample_rate_hz: int = DEFAULT_INPUT_SAMPLE_RATE_HZ
    # RFC 7845 §5.1: Q7.8 fixed point dB applied to the decoded output.
    output_gain_q8_db: int = 0
    mapping_family: int = MAPPING_FAMILY_RTP
    stream_count: int = 1
    coupled_count: int = 0
    channel_mapping: bytes = b"\x00"
    version: int = OPUS_HEAD_VERSION


@dataclass(frozen=True, slots=True)
class OpusTags:
    """The vendor string and `(field, value)` user comments of an OpusTags packet."""

    vendor: str
    comments: tuple[tuple[str, str], ...] = ()


def build_opus_head(head: OpusHead) -> bytes:
    """Return the OpusHead packet for `head` (RFC 7845 §5.1); ValueError if it is inconsistent."""
    problem = _find_head_problem(head)
    if problem is not None:
        raise ValueError(problem)
    packet = _HEAD.pack(
        OPUS_HEAD_MAGIC,
        head.version,
        head.channel_count,
        head.pre_skip_samples,
        head.input_sample_rate_hz,
        head.output_gain_q8_db,
        head.mapping_family,
    )
    if head.mapping_family == MAPPING_FAMILY_RTP:
        return packet
    return packet + _HEAD_STREAMS.pack(head.stream_count, head.coupled_count) + head.channel_mapping


def parse_opus_head(data: bytes) -> OpusHead:
    """Parse an OpusHead packet (RFC 7845 §5.1); OggError if it is malformed."""
    if len(data) < _HEAD.size or not data.startswith(OPUS_HEAD_MAGIC):
        raise OggError("first packet is not an OpusHead header")
    (
        _,
        version,
        channel_count,
        pre_skip_samples,
        input_sample_rate_hz,
        output_gain_q8_db,
        mapping_family,
    ) = _HEAD.unpack_from(data)
    if mapping_family == MAPPING_FAMILY_RTP:
        # RFC 7845 §5.1.1.1: the stream count, coupled count and mapping are implied.
        stream_count = 1
        coupled_count = max(channel_count - 1, 0)
        channel_mapping = bytes(range(channel_count))
    else:
        mapping_end = _HEAD.size + _HEAD_STREAMS.size + channel_count
        if len(data) < mapping_end:
            raise OggError("OpusHead channel mapping table is truncated")
        stream_count, coupled_count = _HEAD_STREAMS.unpack_from(data, _HEAD.size)
        channel_mapping = bytes(data[_HEAD.size + _HEAD_STREAMS.size : mapping_end])
    head = OpusHead(
        channel_count=channel_count,
        pre_skip_samples=pre_skip_samples,
        input_sample_rate_hz=input_sample_rate_hz,
        output_gain_q8_db=output_gain_q8_db,
        mapping_family=mapping_family,
        stream_count=stream_count,
        coupled_count=coupled_count,
        channel_mapping=channel_mapping,
        version=version,
    )
    problem = _find_head_problem(head)
    if problem is not None:
        raise OggError(problem)
    return head


def build_opus_tags(vendor: str, comments: Sequence[tuple[str, str]] = ()) -> bytes:
    """Return the OpusTags packet with `vendor` and `FIELD=value` comments (RFC 7845 §5.2)."""
    parts = [OPUS_TAGS_MAGIC, *_build_string(vendor), _U32.pack(len(comments))]
    for field, value in comments:
        # RFC 7845 §5.2 / Vorbis comment: the field name is ASCII 0x20..0x7D without '='.
        if not field or "=" in field or not all(0x20 <= ord(c) <= 0x7D for c in field):
            raise ValueError(f"invalid comment field name {field!r}")
        parts += _build_string(f"{field}={value}")
    return b"".join(parts)


def parse_opus_tags(data: bytes) -> OpusTags:
    """Parse an OpusTags packet (RFC 7845 §5.2); OggError if it is malformed."""
    if not data.startswith(OPUS_TAGS_MAGIC):
        raise OggError("second packet is not an OpusTags header")
    vendor, offset = _parse_string(data, len(OPUS_TAGS_MAGIC))
    if len(data) < offset + _U32.size:
        raise OggError("OpusTags comment count is truncated")
    (comment_count,) = _U32.unpack_from(data, offset)
    offset += _U32.size
    comments: list[tuple[str, str]] = []
    for _ in range(comment_count):
        comment, offset = _parse_string(data, offset)
        field, separator, value = comment.partition("=")
        if not separator:
            raise OggError("OpusTags comment has no '=' between field and value")
        comments.append((field, value))
    # RFC 7845 §5.2: bytes after the comments are binary data a reader may ignore.
    return OpusTags(vendor=vendor, comments=tuple(comments))


def _find_head_problem(head: OpusHead) -> str | None:
    if head.version & _INCOMPATIBLE_VERSION_MASK or not 0 <= head.version <= 0xFF:
        return f"OpusHead version {head.version} is not compatible with version 1"
    if not 0 <= head.pre_skip_samples <= 0xFFFF:
        return "OpusHead pre-skip does not fit 16 bits"
    if not 0 <= head.input_sample_rate_hz <= 0xFFFFFFFF:
        return "OpusHead input sample rate does not fit 32 bits"
    if not -0x8000 <= head.output_gain_q8_db <= 0x7FFF:
        return "OpusHead output gain does not fit 16 bits"
    if head.channel_count < 1:
        return "OpusHead channel count is 0"
    if head.mapping_family == MAPPING_FAMILY_RTP:
        if head.channel_count > 2:
            return "OpusHead mapping family 0 allows only 1 or 2 channels"
        expected = (1, head.channel_count - 1, bytes(range(head.channel_count)))
        if (head.stream_count, head.coupled_count, head.channel_mapping) != expected:
            return "OpusHead mapping family 0 has one stream and the identity mapping"
        return None
    if not 0 <= head.mapping_family <= 0xFF:
        return f"OpusHead mapping family {head.mapping_family} does not fit 8 bits"
    if head.mapping_family == MAPPING_FAMILY_VORBIS and head.channel_count > _MAX_VORBIS_CHANNELS:
        return "OpusHead mapping family 1 allows at most 8 channels"
    if head.channel_count > 0xFF:
        return "OpusHead channel count does not fit 8 bits"
    # RFC 7845 §5.1.1: N >= 1 streams, M <= N coupled, N + M <= 255 decoded channels.
    if head.stream_count < 1:
        return "OpusHead stream count is 0"
    if not 0 <= head.coupled_count <= head.stream_count:
        return "OpusHead coupled stream count exceeds the stream count"
    if head.stream_count + head.coupled_count > SILENT_CHANNEL:
        return "OpusHead streams decode to more than 255 channels"
    if len(head.channel_mapping) != head.channel_count:
        return "OpusHead channel mapping table length differs from the channel count"
    decoded_channel_count = head.stream_count + head.coupled_count
    for index in head.channel_mapping:
        if index != SILENT_CHANNEL and index >= decoded_channel_count:
            return f"OpusHead channel mapping refers to decoded channel {index} that is absent"
    return None


def _build_string(text: str) -> tuple[bytes, bytes]:
    encoded = text.encode()
    return _U32.pack(len(encoded)), encoded


def _parse_string(data: bytes, offset: int) -> tuple[str, int]:
    if len(data) < offset + _U32.size:
        raise OggError("OpusTags string length is truncated")
    (size,) = _U32.unpack_from(data, offset)
    start = offset + _U32.size
    if len(data) < start + size:
        raise OggError("OpusTags string is truncated")
    try:
        text = bytes(data[start : start + size]).decode()
    except UnicodeDecodeError as error:
        raise OggError("OpusTags string is not valid UTF-8") from error
    return text, start + size
