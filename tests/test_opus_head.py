"""Tests for the OpusHead and OpusTags header packets (RFC 7845 §5)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.audio.ogg_page import parse_ogg_pages
from mediaserver.audio.opus_head import (
    OpusHead,
    OpusTags,
    build_opus_head,
    build_opus_tags,
    parse_opus_head,
    parse_opus_tags,
)
from mediaserver.errors import OggError


def libopus_extradata(layout: str) -> bytes:
    """The OpusHead that FFmpeg's libopus wrapper produces for a 48 kHz encoder."""
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = 48000
    context.layout = layout
    context.format = "s16"
    context.open()
    assert context.extradata is not None
    return bytes(context.extradata)


@pytest.mark.parametrize(("layout", "channel_count"), [("mono", 1), ("stereo", 2)])
def test_parses_libopus_header(layout: str, channel_count: int) -> None:
    """libopus' own OpusHead parses to its channel count, 312-sample pre-skip and 48 kHz."""
    head = parse_opus_head(libopus_extradata(layout))
    assert head.channel_count == channel_count
    assert head.pre_skip_samples == 312
    assert head.input_sample_rate_hz == 48000
    assert head.mapping_family == 0
    assert head.stream_count == 1
    assert head.coupled_count == channel_count - 1


def test_builds_mono_header_bytes() -> None:
    """A mono family-0 header is 19 bytes laid out as RFC 7845 §5.1, Figure 2."""
    packet = build_opus_head(OpusHead(pre_skip_samples=312, output_gain_q8_db=-256))
    assert packet == (
        b"OpusHead"
        + b"\x01"  # version
        + b"\x01"  # channel count
        + b"\x38\x01"  # pre-skip 312, little-endian
        + b"\x80\xbb\x00\x00"  # input sample rate 48000
        + b"\x00\xff"  # output gain -1 dB in Q7.8
        + b"\x00"  # mapping family 0
    )


def test_builds_two_stream_header_bytes() -> None:
    """A family-1 header adds stream count, coupled count and the mapping table."""
    head = OpusHead(
        channel_count=2,
        pre_skip_samples=312,
        mapping_family=1,
        stream_count=2,
        coupled_count=0,
        channel_mapping=b"\x00\x01",
    )
    packet = build_opus_head(head)
    assert packet[9:] == (
        b"\x02"  # channel count
        + b"\x38\x01\x80\xbb\x00\x00\x00\x00"  # pre-skip, rate, gain
        + b"\x01"  # mapping family 1
        + b"\x02"  # stream count
        + b"\x00"  # coupled count
        + b"\x00\x01"  # channel 0 <- stream 0, channel 1 <- stream 1
    )
    assert parse_opus_head(packet) == head


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"OpusHeaX\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00", "not an OpusHead"),
        (b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00", "not an OpusHead"),
        (b"OpusHead\x10\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00", "version"),
        (b"OpusHead\x01\x00\x38\x01\x80\xbb\x00\x00\x00\x00\x00", "channel count is 0"),
        (b"OpusHead\x01\x03\x38\x01\x80\xbb\x00\x00\x00\x00\x00", "1 or 2 channels"),
        (b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x02\x00\x00", "truncated"),
        (b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x00\x00\x00\x01", "stream count"),
        (b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x01\x02\x00\x01", "coupled"),
        (b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x02\x00\x00\x02", "absent"),
        (b"OpusHead\x01\x09\x38\x01\x80\xbb\x00\x00\x00\x00\x01\x09\x00" + bytes(9), "8 channels"),
    ],
)
def test_rejects_malformed_head(data: bytes, message: str) -> None:
    """Bad magic, version, counts or mapping raise OggError naming the problem."""
    with pytest.raises(OggError, match=message):
        parse_opus_head(data)


def test_mapping_may_mark_a_channel_silent() -> None:
    """A mapping entry of 255 (silent channel, RFC 7845 §5.1.1) is accepted."""
    head = OpusHead(
        channel_count=2,
        mapping_family=1,
        stream_count=1,
        coupled_count=0,
        channel_mapping=b"\x00\xff",
    )
    assert parse_opus_head(build_opus_head(head)) == head


def test_build_rejects_inconsistent_head() -> None:
    """Building a header whose fields contradict each other raises ValueError."""
    with pytest.raises(ValueError, match="family 0"):
        build_opus_head(OpusHead(channel_count=2))
    with pytest.raises(ValueError, match="pre-skip"):
        build_opus_head(OpusHead(pre_skip_samples=70_000))


@st.composite
def valid_heads(draw: st.DrawFn) -> OpusHead:
    """OpusHead values that RFC 7845 allows."""
    pre_skip_samples = draw(st.integers(0, 0xFFFF))
    rate_hz = draw(st.integers(0, 0xFFFFFFFF))
    gain = draw(st.integers(-0x8000, 0x7FFF))
    if draw(st.booleans()):
        channel_count = draw(st.integers(1, 2))
        return OpusHead(
            channel_count=channel_count,
            pre_skip_samples=pre_skip_samples,
            input_sample_rate_hz=rate_hz,
            output_gain_q8_db=gain,
            coupled_count=channel_count - 1,
            channel_mapping=bytes(range(channel_count)),
        )
    channel_count = draw(st.integers(1, 8))
    stream_count = draw(st.integers(1, 8))
    coupled_count = draw(st.integers(0, stream_count))
    decoded = stream_count + coupled_count
    mapping = draw(
        st.lists(
            st.one_of(st.integers(0, decoded - 1), st.just(255)),
            min_size=channel_count,
            max_size=channel_count,
        )
    )
    return OpusHead(
        channel_count=channel_count,
        pre_skip_samples=pre_skip_samples,
        input_sample_rate_hz=rate_hz,
        output_gain_q8_db=gain,
        mapping_family=1,
        stream_count=stream_count,
        coupled_count=coupled_count,
        channel_mapping=bytes(mapping),
    )


@given(valid_heads())
def test_head_round_trips(head: OpusHead) -> None:
    """Any valid header parses back to the same fields."""
    assert parse_opus_head(build_opus_head(head)) == head


@settings(max_examples=300)
@given(st.binary(max_size=40), st.sampled_from([b"", b"OpusHead\x01", b"OpusHead\x01\x02"]))
def test_fuzz_head(tail: bytes, prefix: bytes) -> None:
    """Arbitrary bytes raise OggError or parse to a header whose bytes start the input."""
    data = prefix + tail
    try:
        head = parse_opus_head(data)
    except OggError:
        return
    rebuilt = build_opus_head(head)
    assert data.startswith(rebuilt)


def test_builds_tags_bytes() -> None:
    """OpusTags is magic, vendor, comment count and FIELD=value strings, lengths LE32."""
    packet = build_opus_tags("me", [("TITLE", "call")])
    assert packet == (
        b"OpusTags"
        + b"\x02\x00\x00\x00me"  # vendor
        + b"\x01\x00\x00\x00"  # one comment
        + b"\x0a\x00\x00\x00TITLE=call"
    )


def test_parses_tags_that_ffmpeg_wrote(tmp_path: Path) -> None:
    """The OpusTags of an ffmpeg-written file names libavformat as vendor and keeps comments."""
    path = tmp_path / "tagged.opus"
    subprocess.run(
        [
            *("ffmpeg", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "sine=frequency=440:duration=0.1"),
            *("-c:a", "libopus", "-metadata", "title=grüße", str(path)),
        ],
        check=True,
    )
    second_page = list(parse_ogg_pages(path.read_bytes()))[1]
    tags = parse_opus_tags(second_page.body)
    assert tags.vendor.startswith("Lavf")
    assert ("title", "grüße") in [(field.lower(), value) for field, value in tags.comments]


def test_tags_round_trip_unicode() -> None:
    """Vendor and comments with non-ASCII text survive build and parse."""
    tags = OpusTags(vendor="médiaserveur", comments=(("ARTIST", "Zoë"), ("EMPTY", "")))
    assert parse_opus_tags(build_opus_tags(tags.vendor, tags.comments)) == tags


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"OpusHead", "not an OpusTags"),
        (b"OpusTags\x05\x00\x00\x00ab", "string is truncated"),
        (b"OpusTags\x00\x00", "length is truncated"),
        (b"OpusTags\x00\x00\x00\x00", "comment count is truncated"),
        (b"OpusTags\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00ab", "no '='"),
        (b"OpusTags\x02\x00\x00\x00\xff\xfe\x00\x00\x00\x00", "UTF-8"),
    ],
)
def test_rejects_malformed_tags(data: bytes, message: str) -> None:
    """Truncated strings, missing '=' and invalid UTF-8 raise OggError."""
    with pytest.raises(OggError, match=message):
        parse_opus_tags(data)


def test_build_tags_rejects_bad_field_name() -> None:
    """A field name with '=' or outside printable ASCII cannot be written."""
    with pytest.raises(ValueError, match="field name"):
        build_opus_tags("v", [("A=B", "c")])


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_fuzz_tags(tail: bytes) -> None:
    """Arbitrary bytes after the magic raise OggError or parse to a round-tripping value."""
    try:
        tags = parse_opus_tags(b"OpusTags" + tail)
    except OggError:
        return
    try:
        rebuilt = build_opus_tags(tags.vendor, tags.comments)
    except ValueError:
        return  # a field name this side would not write, e.g. with control characters
    assert parse_opus_tags(rebuilt) == tags
