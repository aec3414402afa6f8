"""Ogg Opus files decoded to PCM blocks at any Opus rate, for analysis and recognition."""

# libopus (mediaserver.audio.libopus) decodes straight to 8, 12, 16, 24 or 48 kHz (RFC 6716 §2):
# speech analysis wants 16 kHz, and resampling FFmpeg's 48 kHz output one 20 ms frame at a time
# costs more than the decoding itself.

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from mediaserver.audio.libopus import OpusDecoder
from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.audio.opus_silence import (
    MAX_SILENCE_PACKET_SAMPLES,
    SILENCE_FRAME_SAMPLES,
    silence_packet,
)
from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.errors import OggError, OpusPacketError

Pcm = npt.NDArray[np.int16]
OPUS_RATE_HZ = 48000
# Opus DTX sends packets of one or two bytes while the talker is silent (RFC 6716 §2.1.9).
DTX_MAX_BYTES = 2
# Decoded PCM is handed out in blocks about this long, so memory stays flat for any length.
BLOCK_MS = 1000
# RFC 7845 §4.4 asks a decoder to start at least 80 ms before a point reached by seeking; CELT's
# energy prediction needs about 300 ms more to give the very samples a whole decode gives.
WARM_UP_MS = 400


def decode_ogg_opus(
    stream: BinaryIO,
    sample_rate_hz: int = 16000,
    *,
    first_sample: int = 0,
    end_sample: int | None = None,
) -> Iterator[Pcm]:
    """Samples [first_sample, end_sample) of a mono Ogg Opus stream's time line, as PCM blocks."""
    # The time line starts after the pre-skip and ends at the last granule position (RFC 7845
    # §4.2, §4.5). Packets that carry nothing audible (the recorder's silence fill, DTX) become
    # zeros without being decoded: each side of a call is silent much of the time. The decoder
    # is reset after such a run, as a decoder fed those packets would have been, and starts
    # WARM_UP_MS before `first_sample` to converge; earlier packets are only parsed.
    reader = OggOpusReader(stream)
    if reader.head.channel_count != 1:
        raise OggError(f"expected a mono Ogg Opus stream, got {reader.head.channel_count} channels")
    scale = OPUS_RATE_HZ // sample_rate_hz
    pre_skip = reader.head.pre_skip_samples // scale
    warm_up_from = first_sample - sample_rate_hz * WARM_UP_MS // 1000
    silent = _silence_packets()
    block_samples = sample_rate_hz * BLOCK_MS // 1000
    decoder = OpusDecoder(sample_rate_hz)
    # Packets are decoded straight into one block; it is handed out once a second is there.
    block = np.zeros(block_samples + decoder.max_packet_samples, np.int16)
    filled = 0
    position = -pre_skip  # where the next packet starts on the time line, in output samples
    skipped_run = False
    for packet, granule in reader:
        start = position
        if end_sample is not None and start >= end_sample:
            break
        if packet in silent or len(packet) <= DTX_MAX_BYTES or start < warm_up_from:
            samples = compute_packet_samples(packet, sample_rate_hz) if packet else 0
            position += samples
            if position <= warm_up_from:
                skipped_run = True  # not needed: parsed, never decoded
                continue
            block[filled : filled + samples] = 0
            if packet not in silent and len(packet) > DTX_MAX_BYTES:  # warm-up: decode
                if skipped_run:
                    decoder.reset()
                    skipped_run = False
                samples = _decode_or_silence(decoder, packet, block, filled)
            else:
                skipped_run = True
        else:
            if skipped_run:
                decoder.reset()
                skipped_run = False
            samples = _decode_or_silence(decoder, packet, block, filled)
            position += samples
        # Keep only what lies in [first_sample, end_sample) and before the stream's end.
        last = position
        if granule is not None:
            last = min(last, granule // scale - pre_skip)  # RFC 7845 §4.5: end trimming
        if end_sample is not None:
            last = min(last, end_sample)
        first = max(start, first_sample)
        if last <= first:
            continue
        if first > start:  # drop the packet's leading samples
            block[filled : filled + last - first] = block[
                filled + first - start : filled + last - start
            ]
        filled += last - first
        if filled >= block_samples:
            yield block[:filled].copy()
            filled = 0
    if filled:
        yield block[:filled].copy()


def _decode_or_silence(decoder: OpusDecoder, packet: bytes, block: Pcm, offset: int) -> int:
    """Decode a packet into the block; one libopus rejects becomes silence of its duration."""
    try:
        return decoder.decode_into(packet, block, offset)
    except OpusPacketError:
        count = compute_packet_samples(packet, decoder.rate_hz)
        block[offset : offset + count] = 0
        return count


def decode_ogg_opus_file(
    path: Path, sample_rate_hz: int = 16000, *, first_sample: int = 0, end_sample: int | None = None
) -> Iterator[Pcm]:
    """Decode (part of) a mono Ogg Opus file to PCM blocks (see decode_ogg_opus)."""
    with path.open("rb") as stream:
        yield from decode_ogg_opus(
            stream, sample_rate_hz, first_sample=first_sample, end_sample=end_sample
        )


@cache
def _silence_packets() -> frozenset[bytes]:
    """Every packet opus_silence builds for a mono channel: they decode to digital silence."""
    return frozenset(
        silence_packet(samples)
        for samples in range(
            SILENCE_FRAME_SAMPLES, MAX_SILENCE_PACKET_SAMPLES + 1, SILENCE_FRAME_SAMPLES
        )
    )
