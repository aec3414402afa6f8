"""OpusDecoder: libopus's decoder at any Opus rate, and Ogg Opus files decoded to PCM blocks."""

# libopus decodes straight to 8, 12, 16, 24 or 48 kHz (RFC 6716 §2): speech analysis wants
# 16 kHz, and resampling FFmpeg's 48 kHz output one 20 ms frame at a time costs more than the
# decoding itself. PyAV's wheels carry libopus (it is already loaded with `av`); a system
# libopus (Debian's libopus0) is used when that copy cannot be found. opus_decoder_create and
# opus_decode are libopus's stable ABI since 1.0.

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt

from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.audio.opus_silence import (
    MAX_SILENCE_PACKET_SAMPLES,
    SILENCE_FRAME_SAMPLES,
    silence_packet,
)
from mediaserver.audio.opus_toc import SAMPLE_RATES_HZ, compute_packet_samples
from mediaserver.errors import OggError, OpusPacketError

Pcm = npt.NDArray[np.int16]
OPUS_RATE_HZ = 48000
# RFC 6716 §3.2.5: a packet carries at most 120 ms; the buffer holds that at any rate.
_MAX_PACKET_MS = 120
# opus_defines.h: OPUS_RESET_STATE, the decoder ctl that forgets all history.
_OPUS_RESET_STATE = 4028
_OPUS_OK = 0
# Opus DTX sends packets of one or two bytes while the talker is silent (RFC 6716 §2.1.9).
DTX_MAX_BYTES = 2
# Decoded PCM is handed out in blocks about this long, so memory stays flat for any length.
BLOCK_MS = 1000
# RFC 7845 §4.4 asks a decoder to start at least 80 ms before a point reached by seeking; CELT's
# energy prediction needs about 300 ms more to give the very samples a whole decode gives.
WARM_UP_MS = 400


class OpusDecoder:
    """One libopus decoder state: packets in, 16-bit PCM at `sample_rate_hz` out."""

    def __init__(self, sample_rate_hz: int = 16000, channel_count: int = 1) -> None:
        """Create the decoder; ValueError for a rate libopus does not decode to."""
        if sample_rate_hz not in SAMPLE_RATES_HZ:
            raise ValueError(f"{sample_rate_hz} Hz is not an Opus sample rate {SAMPLE_RATES_HZ}")
        if channel_count not in (1, 2):
            raise ValueError(f"an Opus decoder has 1 or 2 channels, not {channel_count}")
        self._state: int | None = None
        self.sample_rate_hz = sample_rate_hz
        self.channel_count = channel_count
        self._lib = load_libopus()
        error = ctypes.c_int(0)
        self._state = self._lib.opus_decoder_create(
            sample_rate_hz, channel_count, ctypes.byref(error)
        )
        if error.value != _OPUS_OK or not self._state:
            raise OpusPacketError(f"libopus cannot create a decoder (error {error.value})")
        self._max_samples = sample_rate_hz * _MAX_PACKET_MS // 1000
        self._buffer = np.zeros(self._max_samples * channel_count, np.int16)

    @property
    def max_packet_samples(self) -> int:
        """Samples per channel of the longest packet (120 ms) at this rate."""
        return self._max_samples

    def decode(self, packet: bytes) -> Pcm:
        """Decode one packet (interleaved if stereo); OpusPacketError if libopus rejects it."""
        count = self.decode_into(packet, self._buffer, 0)
        return self._buffer[: count * self.channel_count].copy()

    def decode_into(self, packet: bytes, out: Pcm, offset: int) -> int:
        """Decode one packet into `out[offset:]` (room for max_packet_samples); samples written."""
        if out.size - offset < self._max_samples * self.channel_count or not out.flags.c_contiguous:
            raise ValueError("the output has no room for the longest packet")
        address = out.ctypes.data + offset * out.itemsize
        count: int = self._lib.opus_decode(
            self._state, packet, len(packet), address, self._max_samples, 0
        )
        if count < 0:
            raise OpusPacketError(f"libopus cannot decode a {len(packet)}-byte packet ({count})")
        return count

    def reset(self) -> None:
        """Forget the decoder's history, as after a stream restart."""
        self._lib.opus_decoder_ctl(self._state, _OPUS_RESET_STATE)

    def close(self) -> None:
        """Free the libopus state."""
        if self._state:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __enter__(self) -> OpusDecoder:
        """Use as a context manager that frees the state."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Free the state."""
        self.close()

    def __del__(self) -> None:
        """Free the state if close() was not called."""
        self.close()


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
    with OpusDecoder(sample_rate_hz) as decoder:
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
        count = compute_packet_samples(packet, decoder.sample_rate_hz)
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


@cache
def load_libopus() -> ctypes.CDLL:
    """libopus, from PyAV's wheel when it carries one, else the system's; with its signatures."""
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [
            ctypes.c_int32,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_decoder_ctl.restype = ctypes.c_int
        lib.opus_decoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        return lib
    raise OpusPacketError("libopus not found: install PyAV's wheel or the libopus0 package")


def _candidate_paths() -> list[str]:
    """Where libopus may be: PyAV's bundled copy (Linux, macOS), then the system's."""
    package = Path(av.__file__).parent
    bundled = sorted(package.parent.glob("av.libs/libopus*.so*"))
    bundled += sorted(package.glob(".dylibs/libopus*.dylib"))
    system = ctypes.util.find_library("opus")
    return [str(p) for p in bundled] + ([system] if system else [])
