"""Opus packet framing (RFC 6716 §3.1-3.2): the TOC byte and the packet's sample count."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mediaserver.errors import OpusPacketError


class OpusMode(Enum):
    """The codec mode a TOC configuration selects (RFC 6716 §3.1, Table 2)."""

    SILK = "silk"
    HYBRID = "hybrid"
    CELT = "celt"


class OpusBandwidth(Enum):
    """Audio bandwidth, valued in Hz (RFC 6716 §2, Table 1)."""

    NARROWBAND = 4000
    MEDIUMBAND = 6000
    WIDEBAND = 8000
    SUPERWIDEBAND = 12000
    FULLBAND = 20000


# RFC 6716 §3.1, Table 2: configurations 0-31 as (mode, bandwidth, frame sizes in µs).
_CONFIG_GROUPS = (
    (OpusMode.SILK, OpusBandwidth.NARROWBAND, (10_000, 20_000, 40_000, 60_000)),
    (OpusMode.SILK, OpusBandwidth.MEDIUMBAND, (10_000, 20_000, 40_000, 60_000)),
    (OpusMode.SILK, OpusBandwidth.WIDEBAND, (10_000, 20_000, 40_000, 60_000)),
    (OpusMode.HYBRID, OpusBandwidth.SUPERWIDEBAND, (10_000, 20_000)),
    (OpusMode.HYBRID, OpusBandwidth.FULLBAND, (10_000, 20_000)),
    (OpusMode.CELT, OpusBandwidth.NARROWBAND, (2_500, 5_000, 10_000, 20_000)),
    (OpusMode.CELT, OpusBandwidth.WIDEBAND, (2_500, 5_000, 10_000, 20_000)),
    (OpusMode.CELT, OpusBandwidth.SUPERWIDEBAND, (2_500, 5_000, 10_000, 20_000)),
    (OpusMode.CELT, OpusBandwidth.FULLBAND, (2_500, 5_000, 10_000, 20_000)),
)
_CONFIGS = tuple(
    (mode, bandwidth, duration_us)
    for mode, bandwidth, durations_us in _CONFIG_GROUPS
    for duration_us in durations_us
)
CONFIG_COUNT = len(_CONFIGS)
# RFC 6716 §3.1: config in the top five bits, the stereo flag, then the frame count code.
_CONFIG_SHIFT = 3
_STEREO_BIT = 0x04
_FRAME_COUNT_CODE_MASK = 0x03
# RFC 6716 §3.2.5: the frame count byte holds the VBR flag, the padding flag and M.
_VBR_BIT = 0x80
_PADDING_BIT = 0x40
_FRAME_COUNT_MASK = 0x3F
# RFC 6716 §3.2.5 R5: a packet carries at most 120 ms of audio.
MAX_PACKET_DURATION_US = 120_000
# RFC 6716 §3.2.1 and R2: no frame is longer than 1275 bytes.
MAX_FRAME_SIZE = 1275
# RFC 6716 §3.2.1: a first length byte of 252-255 needs a second byte, worth four times its value.
_TWO_BYTE_LENGTH_MIN = 252
# RFC 6716 §3.2.5: a padding length byte of 255 means 254 bytes plus another length byte.
_PADDING_CONTINUES = 255
# RFC 6716 §2: the sample rates an Opus decoder can run at.
SAMPLE_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
_US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class OpusToc:
    """The fields of an Opus TOC byte (RFC 6716 §3.1)."""

    config: int
    mode: OpusMode
    bandwidth: OpusBandwidth
    frame_duration_us: int
    stereo: bool
    frame_count_code: int


def parse_opus_toc(payload: bytes) -> OpusToc:
    """Decode the TOC byte that starts an Opus packet (RFC 6716 §3.1)."""
    if not payload:
        raise OpusPacketError("Opus packet is empty, it needs at least a TOC byte (RFC 6716 R1)")
    toc = payload[0]
    config = toc >> _CONFIG_SHIFT
    mode, bandwidth, frame_duration_us = _CONFIGS[config]
    return OpusToc(
        config=config,
        mode=mode,
        bandwidth=bandwidth,
        frame_duration_us=frame_duration_us,
        stereo=bool(toc & _STEREO_BIT),
        frame_count_code=toc & _FRAME_COUNT_CODE_MASK,
    )


def frame_duration_samples(config: int, sample_rate_hz: int = 48000) -> int:
    """Samples per frame of a TOC configuration at one of Opus's sample rates."""
    if not 0 <= config < CONFIG_COUNT:
        raise ValueError(f"Opus configuration {config} is outside 0-31")
    if sample_rate_hz not in SAMPLE_RATES_HZ:
        raise ValueError(f"{sample_rate_hz} Hz is not an Opus sample rate {SAMPLE_RATES_HZ}")
    return _CONFIGS[config][2] * sample_rate_hz // _US_PER_S


def compute_packet_samples(payload: bytes, sample_rate_hz: int = 48000) -> int:
    """Samples per channel in an Opus packet, after checking its framing (RFC 6716 §3.2)."""
    frame_count = compute_frame_count(payload)
    return frame_count * frame_duration_samples(payload[0] >> _CONFIG_SHIFT, sample_rate_hz)


def compute_frame_count(payload: bytes) -> int:
    """Number of frames in an Opus packet, rejecting packets that break RFC 6716 §3.2.5 R1-R7."""
    size = len(payload)
    if size == 0:
        raise OpusPacketError("Opus packet is empty, it needs at least a TOC byte (RFC 6716 R1)")
    toc = payload[0]
    code = toc & _FRAME_COUNT_CODE_MASK
    if code == 0:
        # RFC 6716 §3.2.2: one frame filling the rest of the packet.
        _check_frame_size(size - 1)
        return 1
    if code == 1:
        # RFC 6716 §3.2.3: two frames of equal size.
        if (size - 1) % 2:
            raise OpusPacketError(
                f"Opus code 1 packet has an odd payload of {size - 1} bytes "
                "for two equal frames (RFC 6716 R3)"
            )
        _check_frame_size((size - 1) // 2)
        return 2
    if code == 2:
        # RFC 6716 §3.2.4: two frames, the first one's length coded after the TOC.
        first_size, offset = _read_frame_length(payload, 1, size, "code 2 first frame (R4)")
        if first_size > size - offset:
            raise OpusPacketError(
                f"Opus code 2 packet's first frame of {first_size} bytes overruns the "
                f"{size - offset} bytes left (RFC 6716 R4)"
            )
        _check_frame_size(size - offset - first_size)
        return 2
    # RFC 6716 §3.2.5: code 3, a frame count byte then M frames, CBR or VBR, maybe padded.
    if size < 2:
        raise OpusPacketError("Opus code 3 packet has no frame count byte (RFC 6716 R6, R7)")
    count_byte = payload[1]
    frame_count = count_byte & _FRAME_COUNT_MASK
    if frame_count == 0:
        raise OpusPacketError("Opus code 3 packet has a frame count of zero (RFC 6716 R5)")
    duration_us = frame_count * _CONFIGS[toc >> _CONFIG_SHIFT][2]
    if duration_us > MAX_PACKET_DURATION_US:
        raise OpusPacketError(
            f"Opus code 3 packet holds {frame_count} frames, {duration_us / 1000:g} ms, "
            "more than 120 ms (RFC 6716 R5)"
        )
    offset = 2
    padding_size = 0
    if count_byte & _PADDING_BIT:
        while True:
            if offset >= size:
                raise OpusPacketError(
                    "Opus code 3 packet has truncated padding length (RFC 6716 R6, R7)"
                )
            length_byte = payload[offset]
            offset += 1
            if length_byte != _PADDING_CONTINUES:
                padding_size += length_byte
                break
            padding_size += _PADDING_CONTINUES - 1
    end = size - padding_size
    if end < offset:
        raise OpusPacketError(
            f"Opus code 3 packet has {padding_size} bytes of padding "
            f"but only {size - offset} bytes left (RFC 6716 R6, R7)"
        )
    if count_byte & _VBR_BIT:
        sizes_total = 0
        for index in range(frame_count - 1):
            frame_size, offset = _read_frame_length(
                payload, offset, end, f"code 3 VBR frame {index} (R7)"
            )
            sizes_total += frame_size
        last_size = end - offset - sizes_total
        if last_size < 0:
            raise OpusPacketError(
                f"Opus code 3 VBR frames of {sizes_total} bytes overrun the "
                f"{end - offset} bytes left (RFC 6716 R7)"
            )
        _check_frame_size(last_size)
        return frame_count
    data_size = end - offset
    if data_size % frame_count:
        raise OpusPacketError(
            f"Opus code 3 CBR packet's {data_size} bytes of frame data do not split "
            f"into {frame_count} equal frames (RFC 6716 R6)"
        )
    _check_frame_size(data_size // frame_count)
    return frame_count


def _read_frame_length(payload: bytes, offset: int, end: int, what: str) -> tuple[int, int]:
    """Read a one- or two-byte frame length (RFC 6716 §3.2.1); return it and the next offset."""
    if offset >= end:
        raise OpusPacketError(f"Opus packet is missing the length of its {what}")
    first = payload[offset]
    if first < _TWO_BYTE_LENGTH_MIN:
        return first, offset + 1
    if offset + 1 >= end:
        raise OpusPacketError(f"Opus packet has a truncated two-byte length for its {what}")
    return 4 * payload[offset + 1] + first, offset + 2


def _check_frame_size(frame_size: int) -> None:
    """Reject an implied frame length beyond 1275 bytes (RFC 6716 §3.2.5 R2)."""
    if frame_size > MAX_FRAME_SIZE:
        raise OpusPacketError(
            f"Opus frame of {frame_size} bytes is longer than 1275 bytes (RFC 6716 R2)"
        )
