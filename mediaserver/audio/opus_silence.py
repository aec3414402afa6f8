"""Opus packets that decode to digital silence, for filling gaps without an encoder."""

from __future__ import annotations

# RFC 6716 §3.1: TOC configs 28..31 are CELT-only fullband at 2.5, 5, 10 and 20 ms; the stereo
# bit is 0 (mono).
_CELT_FULLBAND_CONFIG_BY_FRAME_SAMPLES = {120: 28, 240: 29, 480: 30, 960: 31}
# A CELT frame whose first range-coded symbol is the silence flag (RFC 6716 §4.3, Table 56:
# probability 1/32768) set; 0xFF 0xFE decodes it as 1 and nothing else is read. A frame of
# 0 or 1 byte would be taken as lost (packet loss concealment), hence two bytes.
_SILENT_CELT_FRAME = b"\xff\xfe"
# RFC 6716 §3.2: code 0 is one frame, code 3 a count byte then M frames; CBR (v = 0) frames
# all share the size left after the two header bytes, so none is written.
_CODE_ONE_FRAME = 0
_CODE_ARBITRARY_FRAMES = 3
# The shortest Opus frame, 2.5 ms: silence comes in multiples of it.
SILENCE_FRAME_SAMPLES = 120
# RFC 6716 §3.2.5: at most 120 ms per packet (so at most 48 frames of 2.5 ms).
MAX_SILENCE_PACKET_SAMPLES = 5760


def silence_packet(duration_samples: int, stream_count: int = 1) -> bytes:
    """Return one mono Opus packet of `duration_samples` (120..5760, a multiple of 120)."""
    # With `stream_count` > 1 it is a multistream packet (RFC 7845 §5.1.1): every stream but the
    # last in self-delimiting framing (RFC 6716 Appendix B), each decoding to silence.
    if (
        duration_samples <= 0
        or duration_samples % SILENCE_FRAME_SAMPLES
        or duration_samples > MAX_SILENCE_PACKET_SAMPLES
    ):
        raise ValueError(
            f"silence of {duration_samples} samples is not a multiple of 120 in 120..5760"
        )
    if stream_count < 1:
        raise ValueError("a multistream packet has at least one stream")
    # The largest CELT frame size that divides the duration needs the fewest frames.
    frame_samples = max(
        size for size in _CELT_FULLBAND_CONFIG_BY_FRAME_SAMPLES if duration_samples % size == 0
    )
    frame_count = duration_samples // frame_samples
    toc_config = _CELT_FULLBAND_CONFIG_BY_FRAME_SAMPLES[frame_samples] << 3
    if frame_count == 1:
        header = bytes((toc_config | _CODE_ONE_FRAME,))
    else:
        header = bytes((toc_config | _CODE_ARBITRARY_FRAMES, frame_count))
    frames = _SILENT_CELT_FRAME * frame_count
    # RFC 6716 Appendix B: self-delimiting framing adds the (shared) frame size after the
    # header; 2 fits the one-byte length form.
    self_delimited = header + bytes((len(_SILENT_CELT_FRAME),)) + frames
    return self_delimited * (stream_count - 1) + header + frames


def build_silence_packets(duration_samples: int) -> list[bytes]:
    """Return the fewest silence packets lasting `duration_samples` (a multiple of 120) in all."""
    if duration_samples < 0 or duration_samples % SILENCE_FRAME_SAMPLES:
        raise ValueError(f"silence of {duration_samples} samples is not a multiple of 120")
    full_packet_count, remainder_samples = divmod(duration_samples, MAX_SILENCE_PACKET_SAMPLES)
    packets = [silence_packet(MAX_SILENCE_PACKET_SAMPLES)] * full_packet_count
    if remainder_samples:
        packets.append(silence_packet(remainder_samples))
    return packets
