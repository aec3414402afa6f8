"""Lossless stereo: two mono Ogg Opus files muxed as one two-stream Ogg Opus file."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from typing import BinaryIO

from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_silence import silence_packet
from mediaserver.audio.opus_toc import (
    CONFIG_COUNT,
    MAX_FRAME_SIZE,
    compute_packet_samples,
    frame_duration_samples,
)
from mediaserver.errors import MergeError, OggError, OpusPacketError

# RFC 7845 §5.1.1.2: family 1, two uncoupled streams, stream 0 -> left, stream 1 -> right.
STEREO_CHANNEL_COUNT = 2
STEREO_STREAM_COUNT = 2
STEREO_CHANNEL_MAPPING = b"\x00\x01"
# Pre-skips that differ shift one channel against the other by the difference; up to one
# 20 ms frame is accepted (and reported), beyond that the caller re-encodes instead.
DEFAULT_MAX_PRE_SKIP_DIFFERENCE_SAMPLES = 960

# RFC 6716 §3.1: the configuration is the TOC's five high bits, the frame count code the two low.
_CONFIG_SHIFT = 3
_FRAME_COUNT_CODE_MASK = 0x03
_FRAME_SAMPLES_BY_CONFIG = tuple(frame_duration_samples(config) for config in range(CONFIG_COUNT))
# RFC 6716 §3.4 R2: a TOC byte and one frame of at most 1275 bytes.
_MAX_CODE_0_SIZE = 1 + MAX_FRAME_SIZE
# RFC 6716 §3.2.5: frame count byte flags.
_VBR_BIT = 0x80
_PADDING_BIT = 0x40
_FRAME_COUNT_MASK = 0x3F
_PADDING_CONTINUES = 255
# RFC 6716 §3.2.1: lengths of 252 and more take a second byte worth four times its value.
_TWO_BYTE_LENGTH_MIN = 252


@dataclass(frozen=True, slots=True)
class LosslessResult:
    """What a lossless stereo mux wrote and how it lined the channels up."""

    packet_count: int
    duration_samples: int
    pre_skip_samples: int
    # How many samples earlier a channel plays than in its own file (pre-skips differed).
    left_shift_samples: int
    right_shift_samples: int
    left_silence_packets: int
    right_silence_packets: int


def mux_lossless_stereo(
    left: BinaryIO,
    right: BinaryIO,
    out: BinaryIO,
    *,
    serial: int | None = None,
    vendor: str = "mediaserver",
    max_pre_skip_difference_samples: int = DEFAULT_MAX_PRE_SKIP_DIFFERENCE_SAMPLES,
) -> LosslessResult:
    """Mux two mono Ogg Opus streams into one stereo stream without re-encoding."""
    # Packets are paired one to one and must last the same; the shorter input may lack at most
    # its last packet, which silence replaces. Pre-skips may differ by up to
    # `max_pre_skip_difference_samples`: the stereo stream uses the larger, so the other channel
    # plays that many samples early (reported in the result). Anything else raises MergeError,
    # and the caller falls back to decoding and encoding.
    try:
        left_reader = OggOpusReader(left)
        right_reader = OggOpusReader(right)
    except OggError as error:
        raise MergeError(f"cannot read channel file: {error}") from error
    for name, reader in (("left", left_reader), ("right", right_reader)):
        if reader.head.channel_count != 1 or reader.head.stream_count != 1:
            raise MergeError(f"{name} channel file is not mono Opus")
    if left_reader.head.output_gain_q8_db != right_reader.head.output_gain_q8_db:
        raise MergeError("channel files have different output gains")
    left_pre_skip = left_reader.head.pre_skip_samples
    right_pre_skip = right_reader.head.pre_skip_samples
    if abs(left_pre_skip - right_pre_skip) > max_pre_skip_difference_samples:
        raise MergeError(
            f"pre-skips differ by more than {max_pre_skip_difference_samples} samples "
            f"({left_pre_skip} and {right_pre_skip})"
        )
    # One pre-skip serves both streams: the larger, so neither plays its decoder warm-up.
    pre_skip_samples = max(left_pre_skip, right_pre_skip)
    writer = OggOpusWriter(
        out,
        channel_count=STEREO_CHANNEL_COUNT,
        pre_skip_samples=pre_skip_samples,
        serial=serial,
        stream_count=STEREO_STREAM_COUNT,
        coupled_count=0,
        channel_mapping=STEREO_CHANNEL_MAPPING,
        output_gain_q8_db=left_reader.head.output_gain_q8_db,
        vendor=vendor,
    )
    left_silence_packets = 0
    right_silence_packets = 0
    left_samples = 0
    right_samples = 0
    try:
        for index, (left_item, right_item) in enumerate(zip_longest(left_reader, right_reader)):
            if left_item is not None and right_item is not None:
                left_packet = left_item[0]
                right_packet = right_item[0]
                duration_samples = _compute_samples(left_packet, index)
                right_duration_samples = _compute_samples(right_packet, index)
                if duration_samples != right_duration_samples:
                    raise MergeError(
                        f"packet {index} lasts {duration_samples} samples on the left "
                        f"and {right_duration_samples} on the right"
                    )
                left_samples += duration_samples
                right_samples += duration_samples
            elif left_silence_packets or right_silence_packets:
                raise MergeError("channel files differ in length by more than their last packet")
            elif right_item is not None:
                right_packet = right_item[0]
                duration_samples = _compute_samples(right_packet, index)
                left_packet = silence_packet(duration_samples)
                left_silence_packets += 1
                right_samples += duration_samples
            elif left_item is not None:
                left_packet = left_item[0]
                duration_samples = _compute_samples(left_packet, index)
                right_packet = silence_packet(duration_samples)
                right_silence_packets += 1
                left_samples += duration_samples
            # RFC 7845 §5.1.1: every stream but the last is self-delimited (RFC 6716 App. B).
            writer.write_packet(
                build_self_delimited_packet(left_packet) + right_packet, duration_samples
            )
    except OggError as error:
        raise MergeError(f"cannot read channel file: {error}") from error

    left_end = _compute_end_granule(left_reader, left_samples, "left")
    right_end = _compute_end_granule(right_reader, right_samples, "right")
    # Each channel plays up to its own end; the longer one sets the stereo end.
    end_granule_position = max(left_end, right_end)
    if writer.packet_count == 0:
        writer.close()
    else:
        try:
            writer.close(end_trim_samples=writer.granule_position - end_granule_position)
        except ValueError as error:
            raise MergeError(f"cannot end-trim the stereo stream: {error}") from error
    return LosslessResult(
        packet_count=writer.packet_count,
        duration_samples=max(end_granule_position - pre_skip_samples, 0),
        pre_skip_samples=pre_skip_samples,
        left_shift_samples=pre_skip_samples - left_pre_skip,
        right_shift_samples=pre_skip_samples - right_pre_skip,
        left_silence_packets=left_silence_packets,
        right_silence_packets=right_silence_packets,
    )


def build_self_delimited_packet(packet: bytes) -> bytes:
    """Return an Opus packet in self-delimiting framing (RFC 6716 Appendix B)."""
    # The size of the last frame (or the shared size, for CBR code 1 and 3) is written just
    # before the frame data, so a multistream packet can hold the next stream after it.
    # The packet's framing must already be valid (checked by `compute_packet_samples`).
    code = packet[0] & _FRAME_COUNT_CODE_MASK
    size = len(packet)
    if code == 0:
        # RFC 6716 App. B, Figure 26: TOC, length, the one frame.
        if size <= _TWO_BYTE_LENGTH_MIN:
            return bytes((packet[0], size - 1)) + packet[1:]
        return packet[:1] + _build_frame_length(size - 1) + packet[1:]
    if code == 1:
        # Figure 27: the two frames share the one length written.
        return packet[:1] + _build_frame_length((size - 1) // 2) + packet[1:]
    if code == 2:
        # Figure 28: the first frame's length is coded already; the second's follows it.
        first_size, offset = _parse_frame_length(packet, 1)
        return packet[:offset] + _build_frame_length(size - offset - first_size) + packet[offset:]
    # Figures 29-30: code 3, after the count byte, padding lengths and VBR lengths.
    count_byte = packet[1]
    frame_count = count_byte & _FRAME_COUNT_MASK
    offset = 2
    padding_size = 0
    if count_byte & _PADDING_BIT:
        while True:
            length_byte = packet[offset]
            offset += 1
            if length_byte != _PADDING_CONTINUES:
                padding_size += length_byte
                break
            padding_size += _PADDING_CONTINUES - 1
    data_end = size - padding_size
    if count_byte & _VBR_BIT:
        sizes_total = 0
        for _ in range(frame_count - 1):
            frame_size, offset = _parse_frame_length(packet, offset)
            sizes_total += frame_size
        last_size = data_end - offset - sizes_total
    else:
        last_size = (data_end - offset) // frame_count
    return packet[:offset] + _build_frame_length(last_size) + packet[offset:]


def _build_frame_length(size: int) -> bytes:
    # RFC 6716 §3.2.1: one byte below 252, else 252..255 plus a byte worth four times its value.
    if size < _TWO_BYTE_LENGTH_MIN:
        return bytes((size,))
    first = _TWO_BYTE_LENGTH_MIN + (size & 0x03)
    return bytes((first, (size - first) >> 2))


def _parse_frame_length(packet: bytes, offset: int) -> tuple[int, int]:
    first = packet[offset]
    if first < _TWO_BYTE_LENGTH_MIN:
        return first, offset + 1
    return first + 4 * packet[offset + 1], offset + 2


def _compute_samples(packet: bytes, index: int) -> int:
    # Fast path for the usual single-frame (code 0) packet: its TOC alone gives the duration
    # and R2 (frame of at most 1275 bytes, RFC 6716 §3.4) is its only framing rule.
    if packet and not packet[0] & _FRAME_COUNT_CODE_MASK and len(packet) <= _MAX_CODE_0_SIZE:
        return _FRAME_SAMPLES_BY_CONFIG[packet[0] >> _CONFIG_SHIFT]
    try:
        return compute_packet_samples(packet)
    except OpusPacketError as error:
        raise MergeError(f"packet {index} is not a valid Opus packet: {error}") from error


def _compute_end_granule(reader: OggOpusReader, total_samples: int, name: str) -> int:
    end_granule_position = reader.last_granule_position
    if end_granule_position is None:
        return 0
    # RFC 7845 §4: a last granule above the samples decoded means the stream started at an
    # offset, which two-stream pairing cannot represent.
    if end_granule_position > total_samples:
        raise MergeError(f"{name} channel file starts at a non-zero granule position")
    return end_granule_position
