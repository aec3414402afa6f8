"""Build a call's files from its journals: channel files, the stereo file and the manifest."""

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from mediaserver.audio.channel_peaks import read_channel_peaks
from mediaserver.audio.g711 import decode_pcma, decode_pcmu
from mediaserver.audio.lossless_stereo import mux_lossless_stereo
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_encoder import OpusEncoder
from mediaserver.audio.opus_silence import build_silence_packets, silence_packet
from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.audio.peaks import PeaksBuilder, build_audiowaveform_json, choose_samples_per_pixel
from mediaserver.audio.stereo_merge import merge_stereo
from mediaserver.errors import JournalError, MergeError, OpusPacketError
from mediaserver.recording.call import CallStatus
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import JournalHeader, JournalRecord, parse_journal
from mediaserver.recording.manifest import ChannelReport, FileEntry, Manifest, format_utc
from mediaserver.recording.spool import (
    CALL_FILE,
    MANIFEST_FILE,
    journal_path,
    output_path,
    parse_call_description,
)
from mediaserver.recording.timeline import (
    Placement,
    TimedPacket,
    Timeline,
    TimelineConfig,
    compute_timeline,
)

log = structlog.get_logger(__name__)

OPUS_RATE_HZ = 48000
PRECISE_GRANULARITY = 120  # 2.5 ms, the shortest Opus frame: gaps are filled to the sample grid
LOSSLESS_GRANULARITY = 960  # 20 ms: both channels stay on one packet grid so they can be muxed
G711_CHUNK_SAMPLES = 8000
ORIGIN_MARGIN_NS = 500_000_000
# Opus packets this small carry no audible content (DTX, digital silence): drift is corrected there.
SILENCE_PAYLOAD_BYTES = 8
REMUX_PRE_SKIP = 960  # one 20 ms silence packet: keeps both channels on the lossless packet grid


@dataclass(frozen=True, slots=True)
class FinalizeOptions:
    """How to build a recording's files."""

    stereo_mode: str = "encode"
    stereo_bitrate_bps: int = 64000
    stereo_complexity: int = 10
    recovered: bool = False
    end_reason: str | None = None


DEFAULT_OPTIONS = FinalizeOptions()


@dataclass(frozen=True, slots=True)
class _ChannelInput:
    """One channel's journal, read and made ready for placement."""

    channel: Channel
    codec: Codec
    records: list[JournalRecord]
    packets: list[TimedPacket]
    malformed: int


def _read_channel(spool_dir: Path, channel: Channel, codec: Codec) -> _ChannelInput:
    """Read a channel's journal; a missing journal is a channel that sent nothing."""
    path = journal_path(spool_dir, channel)
    records: list[JournalRecord] = []
    if path.exists() and path.stat().st_size > 0:
        header, records = parse_journal(path.read_bytes())
        _check_header(header, channel, codec)
    packets: list[TimedPacket] = []
    malformed = 0
    for index, record in enumerate(records):
        try:
            duration = _packet_duration(codec, record.payload)
        except OpusPacketError:
            malformed += 1
            continue
        packets.append(
            TimedPacket(
                arrival_ns=record.arrival_ns,
                rtp_timestamp=record.rtp_timestamp,
                sequence=record.sequence,
                ssrc=record.ssrc,
                duration=duration,
                index=index,
                silence_hint=len(record.payload) <= SILENCE_PAYLOAD_BYTES,
            )
        )
    return _ChannelInput(channel, codec, records, packets, malformed)


def _check_header(header: JournalHeader, channel: Channel, codec: Codec) -> None:
    """Refuse a journal that is not the channel the spool says it is."""
    if header.channel is not channel or header.codec is not codec:
        raise JournalError(
            f"{channel.value} journal holds {header.channel.value}/{header.codec.value} packets"
        )


def _packet_duration(codec: Codec, payload: bytes) -> int:
    """Audio in one payload, in the codec's RTP clock units."""
    if codec is Codec.OPUS:
        return compute_packet_samples(payload)
    if not payload:
        raise OpusPacketError("empty G.711 payload")
    return len(payload)  # one byte per 8 kHz sample (RFC 3551 §4.5.14)


def _granularity(item: _ChannelInput, stereo_mode: str) -> int:
    """Placement grid of a channel, in its clock units."""
    # Opus snaps to its shortest frame; for lossless muxing to the 20 ms packet grid, but only
    # when every packet is whole 20 ms (otherwise muxing fails and the precise grid is better).
    if item.codec is not Codec.OPUS:
        return 1
    if stereo_mode == "lossless" and all(
        p.duration % LOSSLESS_GRANULARITY == 0 for p in item.packets
    ):
        return LOSSLESS_GRANULARITY
    return PRECISE_GRANULARITY


def _to_48k(samples: int, codec: Codec) -> int:
    """Convert a count in the codec's clock to 48 kHz samples."""
    return samples * OPUS_RATE_HZ // codec.clock_rate_hz


def _rebase(timeline: Timeline, lead_in_48k: int, codec: Codec) -> Timeline:
    """Move every placement earlier by a lead-in common to both channels."""
    shift = lead_in_48k * codec.clock_rate_hz // OPUS_RATE_HZ
    placements = tuple(replace(p, start=p.start - shift) for p in timeline.placements)
    return replace(timeline, placements=placements)


def _timeline_end_48k(timeline: Timeline, codec: Codec) -> int:
    """Where a channel's last placed audio ends, in 48 kHz samples since the origin."""
    if not timeline.placements:
        return 0
    last = timeline.placements[-1]
    return _to_48k(last.start + last.duration, codec)


def write_opus_channel(
    out_path: Path,
    records: Sequence[JournalRecord],
    placements: Sequence[Placement],
    span: int,
    *,
    silence_packet_samples: int | None = None,
) -> None:
    """Remux placed Opus payloads into Ogg Opus, silence in the gaps, `span` samples long."""
    with out_path.open("wb") as out:
        # RTP playout starts with the first decoded sample, so the file must too: the pre-skip
        # (which opusinfo requires to be non-zero) discards exactly one leading silence packet.
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=REMUX_PRE_SKIP)
        fill = silence_packet_samples
        _write_silence(writer, REMUX_PRE_SKIP, fill)
        cursor = 0
        for placement in placements:
            _write_silence(writer, placement.start - cursor, fill)
            writer.write_packet(records[placement.index].payload, placement.duration)
            cursor = placement.start + placement.duration
        _write_silence(writer, span - cursor, fill)
        writer.close()


def _write_silence(
    writer: OggOpusWriter, duration_samples: int, packet_samples: int | None
) -> None:
    """Fill a gap with packets that decode to digital silence (of one size, when given)."""
    if duration_samples <= 0:
        return
    if packet_samples is None:
        packets = build_silence_packets(duration_samples)
    else:
        packets = [silence_packet(packet_samples)] * (duration_samples // packet_samples)
    for packet in packets:
        writer.write_packet(packet, compute_packet_samples(packet))


def write_g711_channel(
    out_path: Path,
    codec: Codec,
    records: Sequence[JournalRecord],
    placements: Sequence[Placement],
    span_8k: int,
) -> None:
    """Decode placed G.711 payloads and encode them to an Ogg Opus file `span_8k` samples long."""
    decode = decode_pcmu if codec is Codec.PCMU else decode_pcma
    encoder = OpusEncoder(input_rate_hz=codec.clock_rate_hz)
    with out_path.open("wb") as out:
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=encoder.pre_skip)
        total = 0
        for chunk in _g711_pcm(decode, records, placements, span_8k):
            for packet in encoder.encode(chunk):
                writer.write_packet(packet.payload, packet.duration_samples)
                total += packet.duration_samples
        for packet in encoder.flush():
            writer.write_packet(packet.payload, packet.duration_samples)
            total += packet.duration_samples
        writer.close(end_trim_samples=max(0, total - encoder.pre_skip - span_8k * 6))


def _g711_pcm(
    decode: Callable[[bytes], np.ndarray],
    records: Sequence[JournalRecord],
    placements: Sequence[Placement],
    span_8k: int,
) -> Iterator[np.ndarray]:
    """Yield the channel's 8 kHz PCM in order: silence for gaps, decoded payloads in place."""
    cursor = 0
    for placement in placements:
        yield from _silence_chunks(placement.start - cursor)
        yield decode(records[placement.index].payload)
        cursor = placement.start + placement.duration
    yield from _silence_chunks(span_8k - cursor)


def _silence_chunks(samples: int) -> Iterator[np.ndarray]:
    """Zeros in bounded chunks, so a long silence never sits in memory at once."""
    while samples > 0:
        size = min(samples, G711_CHUNK_SAMPLES)
        yield np.zeros(size, dtype=np.int16)
        samples -= size


def _file_entry(path: Path, role: str, channels: int, duration_samples: int) -> FileEntry:
    """Describe a built file: size, checksum, duration."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return FileEntry(
        name=path.name,
        role=role,
        channels=channels,
        duration_ms=round(duration_samples * 1000 / OPUS_RATE_HZ, 3),
        size_bytes=path.stat().st_size,
        sha256=digest.hexdigest(),
    )


def _write_peaks(
    spool_dir: Path, builder: PeaksBuilder, span: int, stereo_mode: str, channels: tuple[Path, Path]
) -> FileEntry:
    """Write the waveform peaks: the merge fed them, unless lossless stereo decoded nothing."""
    if stereo_mode == "encode":
        peaks = builder.build()
    else:
        length = -(-span // builder.samples_per_pixel)
        peaks = read_channel_peaks(channels, builder.samples_per_pixel, length)
    path = output_path(spool_dir, "peaks")
    path.write_bytes(build_audiowaveform_json(peaks))
    return _file_entry(path, "peaks", 2, span)


def build_recording(spool_dir: Path, options: FinalizeOptions) -> Manifest:
    """Turn a spool's journals into left, right and stereo files and a manifest (CPU-bound)."""
    started = time.perf_counter()
    call = parse_call_description((spool_dir / CALL_FILE).read_text())
    inputs = [_read_channel(spool_dir, c, call.codecs[c]) for c in (Channel.CALLER, Channel.AGENT)]
    arrivals = [min(p.arrival_ns for p in i.packets) for i in inputs if i.packets]
    # Anchored media times can precede the first arrival (that packet may have been delayed by
    # jitter), so place from a little earlier and then cut the common lead-in away.
    origin_ns = (min(arrivals) if arrivals else call.mono_start_ns) - ORIGIN_MARGIN_NS
    grids = [_granularity(i, options.stereo_mode) for i in inputs]
    timelines = [
        compute_timeline(
            i.packets,
            origin_ns=origin_ns,
            config=TimelineConfig(clock_rate_hz=i.codec.clock_rate_hz, granularity=grid),
        )
        for i, grid in zip(inputs, grids, strict=True)
    ]
    grid = max([*grids, PRECISE_GRANULARITY])  # the lead-in keeps every channel on its grid
    starts = [
        _to_48k(t.placements[0].start, i.codec)
        for t, i in zip(timelines, inputs, strict=True)
        if t.placements
    ]
    lead_in = (min(starts) // grid * grid) if starts else 0
    timelines = [_rebase(t, lead_in, i.codec) for t, i in zip(timelines, inputs, strict=True)]
    origin_ns += lead_in * 1_000_000_000 // OPUS_RATE_HZ
    span = max([_timeline_end_48k(t, i.codec) for t, i in zip(timelines, inputs, strict=True)])
    span = max(grid, -(-span // grid) * grid)  # whole grid units, never an empty file

    files: list[FileEntry] = []
    reports: list[ChannelReport] = []
    for item, timeline, channel_grid in zip(inputs, timelines, grids, strict=True):
        path = output_path(spool_dir, item.channel.side)
        if item.codec is Codec.OPUS:
            # Lossless muxing pairs the channels' packets one to one: keep gaps in 20 ms packets.
            fill = LOSSLESS_GRANULARITY if channel_grid == LOSSLESS_GRANULARITY else None
            write_opus_channel(
                path, item.records, timeline.placements, span, silence_packet_samples=fill
            )
        else:
            write_g711_channel(path, item.codec, item.records, timeline.placements, span // 6)
        files.append(_file_entry(path, item.channel.side, 1, span))
        stats = asdict(timeline.stats)
        stats["malformed"] = item.malformed
        stats["silence_inserted_ms"] = round(
            (span - sum(_to_48k(p.duration, item.codec) for p in timeline.placements))
            * 1000
            / OPUS_RATE_HZ,
            3,
        )
        reports.append(
            ChannelReport(item.channel.value, item.channel.side, item.codec.value, stats)
        )

    notes: list[str] = []
    stereo_path = output_path(spool_dir, "stereo")
    left, right = output_path(spool_dir, "left"), output_path(spool_dir, "right")
    stereo_mode = options.stereo_mode
    peaks = PeaksBuilder(choose_samples_per_pixel(span), 2)  # fed by the merge's own decode
    if stereo_mode == "lossless":
        try:
            with left.open("rb") as lf, right.open("rb") as rf, stereo_path.open("wb") as out:
                mux_lossless_stereo(lf, rf, out)
        except MergeError as exc:
            notes.append(f"lossless stereo not possible ({exc}); encoded instead")
            stereo_mode = "encode"
    if stereo_mode == "encode":
        merge_stereo(
            left,
            right,
            stereo_path,
            bitrate_bps=options.stereo_bitrate_bps,
            complexity=options.stereo_complexity,
            peaks=peaks,
        )
    files.append(_file_entry(stereo_path, "stereo", 2, span))
    files.append(_write_peaks(spool_dir, peaks, span, stereo_mode, (left, right)))

    first_wall_ns = call.wall_start_ns + (origin_ns - call.mono_start_ns) if arrivals else None
    end_wall_ns = (
        call.wall_start_ns + (origin_ns - call.mono_start_ns) + span * 1_000_000_000 // OPUS_RATE_HZ
    )
    manifest = Manifest(
        call_id=call.call_id,
        status=CallStatus.RECOVERED if options.recovered else CallStatus.FINALIZING,
        created_at=format_utc(call.wall_start_ns),
        ended_at=format_utc(max(end_wall_ns, call.wall_start_ns)),
        media_started_at=format_utc(first_wall_ns) if first_wall_ns is not None else None,
        duration_ms=round(span * 1000 / OPUS_RATE_HZ, 3),
        stereo_mode=stereo_mode,
        channels=tuple(reports),
        files=tuple(files),
        end_reason=options.end_reason,
        notes=tuple(notes),
        storage={"metadata": call.metadata},
    )
    (spool_dir / MANIFEST_FILE).write_text(manifest.to_json())
    log.info(
        "recording.built",
        call_id=call.call_id,
        duration_s=span / OPUS_RATE_HZ,
        stereo_mode=stereo_mode,
        elapsed_s=round(time.perf_counter() - started, 3),
    )
    return manifest
