"""Stream Opus packets into an Ogg Opus file (RFC 7845) page by page."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

from mediaserver.audio.ogg_page import (
    FLAG_BOS,
    MAX_LACING_VALUE,
    MAX_SEGMENTS_PER_PAGE,
    build_ogg_pages,
)
from mediaserver.audio.opus_head import (
    MAPPING_FAMILY_RTP,
    MAPPING_FAMILY_VORBIS,
    OpusHead,
    build_opus_head,
    build_opus_tags,
)
from mediaserver.audio.opus_silence import (
    MAX_SILENCE_PACKET_SAMPLES,
    SILENCE_FRAME_SAMPLES,
    silence_packet,
)

# RFC 7845 §4.2: libopus' encoder delay at 48 kHz, the usual pre-skip.
DEFAULT_PRE_SKIP_SAMPLES = 312
DEFAULT_VENDOR = "mediaserver"
# Pages close at ~4 KB or 1 s of audio: small enough to lose little on a crash and to seek
# finely, big enough that page overhead stays under ~1 %.
DEFAULT_MAX_PAGE_BODY_BYTES = 4096
DEFAULT_MAX_PAGE_DURATION_SAMPLES = 48_000
# RFC 6716 §3.2.5: no Opus packet lasts longer than 120 ms.
MAX_PACKET_DURATION_SAMPLES = 5760


class OggOpusWriter:
    """Write an Ogg Opus stream to `out`: headers now, audio packets as they come, EOS on close."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        channel_count: int = 1,
        pre_skip_samples: int = DEFAULT_PRE_SKIP_SAMPLES,
        serial: int | None = None,
        stream_count: int = 1,
        coupled_count: int = 0,
        channel_mapping: bytes | None = None,
        output_gain_q8_db: int = 0,
        vendor: str = DEFAULT_VENDOR,
        comments: Sequence[tuple[str, str]] = (),
        max_page_body_bytes: int = DEFAULT_MAX_PAGE_BODY_BYTES,
        max_page_duration_samples: int = DEFAULT_MAX_PAGE_DURATION_SAMPLES,
    ) -> None:
        """Write OpusHead and OpusTags."""
        # Without `channel_mapping` the stream is mapping family 0 (mono or stereo, one stream);
        # with it, family 1 with `stream_count` streams of which `coupled_count` are stereo.
        if channel_mapping is None:
            head = OpusHead(
                channel_count=channel_count,
                pre_skip_samples=pre_skip_samples,
                output_gain_q8_db=output_gain_q8_db,
                mapping_family=MAPPING_FAMILY_RTP,
                stream_count=1,
                coupled_count=channel_count - 1,
                channel_mapping=bytes(range(channel_count)),
            )
        else:
            head = OpusHead(
                channel_count=channel_count,
                pre_skip_samples=pre_skip_samples,
                output_gain_q8_db=output_gain_q8_db,
                mapping_family=MAPPING_FAMILY_VORBIS,
                stream_count=stream_count,
                coupled_count=coupled_count,
                channel_mapping=channel_mapping,
            )
        head_packet = build_opus_head(head)
        tags_packet = build_opus_tags(vendor, comments)
        self.head = head
        self._out = out
        self._serial = int.from_bytes(os.urandom(4), "little") if serial is None else serial
        self._max_page_body_bytes = max_page_body_bytes
        self._max_page_duration_samples = max_page_duration_samples
        self._pending: list[tuple[bytes, int]] = []
        self._pending_segment_count = 0
        self._pending_body_bytes = 0
        self._pending_duration_samples = 0
        self._granule_position = 0
        self._packet_count = 0
        self._closed = False
        # RFC 7845 §3: OpusHead alone on the first page (BOS), OpusTags from the second page
        # on, and audio starts on a fresh page.
        self._sequence = 0
        self._write_pages([(head_packet, 0)], first_header_type=FLAG_BOS, eos=False)
        self._write_pages([(tags_packet, 0)], first_header_type=0, eos=False)

    @property
    def granule_position(self) -> int:
        """Samples (48 kHz) of every audio packet written so far, pre-skip included."""
        return self._granule_position

    @property
    def packet_count(self) -> int:
        """Number of audio packets written so far."""
        return self._packet_count

    def write_packet(self, payload: bytes, duration_samples: int) -> None:
        """Append one Opus packet lasting `duration_samples` at 48 kHz (from its TOC)."""
        size = len(payload)
        if self._closed or not size or not 0 < duration_samples <= MAX_PACKET_DURATION_SAMPLES:
            raise ValueError(self._find_packet_problem(size, duration_samples))
        segment_count = size // MAX_LACING_VALUE + 1
        # The page is closed before this packet rather than after it, so the last page always
        # holds at least the last packet: close() can end-trim it (RFC 7845 §4.4).
        if self._pending and (
            self._pending_segment_count + segment_count > MAX_SEGMENTS_PER_PAGE
            or self._pending_body_bytes + size > self._max_page_body_bytes
            or self._pending_duration_samples + duration_samples > self._max_page_duration_samples
        ):
            self._flush(eos=False)
        self._granule_position += duration_samples
        self._packet_count += 1
        self._pending.append((payload, self._granule_position))
        self._pending_segment_count += segment_count
        self._pending_body_bytes += size
        self._pending_duration_samples += duration_samples

    def close(self, end_trim_samples: int = 0) -> None:
        """Write the last page with the EOS flag, dropping `end_trim_samples` from the end."""
        if self._closed:
            return
        if self._packet_count == 0:
            # opusinfo rejects a last granule position below the pre-skip or of 0: silence
            # trimmed to exactly the pre-skip (at least one sample) makes an empty but valid file.
            target_granule_position = max(self.head.pre_skip_samples, 1)
            silence_samples = -(-target_granule_position // SILENCE_FRAME_SAMPLES) * (
                SILENCE_FRAME_SAMPLES
            )
            end_trim_samples = silence_samples - target_granule_position
            while silence_samples:
                packet_samples = min(silence_samples, MAX_SILENCE_PACKET_SAMPLES)
                self.write_packet(
                    silence_packet(packet_samples, self.head.stream_count), packet_samples
                )
                silence_samples -= packet_samples
        if not 0 <= end_trim_samples <= self._pending_duration_samples:
            raise ValueError(
                f"end trim of {end_trim_samples} samples exceeds the "
                f"{self._pending_duration_samples} samples on the last page"
            )
        # RFC 7845 §4.5: the stream must decode to at least its pre-skip; opusinfo also
        # rejects a last granule position of 0.
        if self._granule_position - end_trim_samples < max(self.head.pre_skip_samples, 1):
            raise ValueError("end trim leaves less audio than the pre-skip")
        payload, granule_position = self._pending[-1]
        self._pending[-1] = (payload, granule_position - end_trim_samples)
        self._flush(eos=True)
        self._closed = True

    def _find_packet_problem(self, size: int, duration_samples: int) -> str:
        if self._closed:
            return "Ogg Opus writer is closed"
        if not size:
            return "Opus packet is empty"
        return f"Opus packet duration {duration_samples} is not in 1..5760 samples"

    def _flush(self, *, eos: bool) -> None:
        self._write_pages(self._pending, first_header_type=0, eos=eos)
        self._pending = []
        self._pending_segment_count = 0
        self._pending_body_bytes = 0
        self._pending_duration_samples = 0

    def _write_pages(
        self, packets: Sequence[tuple[bytes, int]], *, first_header_type: int, eos: bool
    ) -> None:
        pages = build_ogg_pages(
            packets,
            serial=self._serial,
            first_sequence=self._sequence,
            first_header_type=first_header_type,
            eos=eos,
        )
        self._sequence += len(pages)
        self._out.write(b"".join(pages))
